//! OCI basics shared by every strata crate: content digests, image references, platforms and
//! the RFC 3339 times of image configs, and typed image configs and manifests.

#![warn(missing_docs)]

pub mod causes;
pub mod config;
pub mod digest;
pub mod manifest;
pub mod nullable;
pub mod platform;
pub mod reference;
pub mod timefmt;

pub use digest::Digest;
pub use reference::Reference;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("strata supports 64-bit targets only (sizes and offsets are u64 and index memory)");

/// `n` as a `usize`: lossless, since strata builds only for 64-bit targets (see the
/// `compile_error!` above). For blob offsets and lengths that index memory buffers.
#[allow(clippy::cast_possible_truncation)] // usize is 64 bits wide here
pub const fn usize_of(n: u64) -> usize {
    n as usize
}

/// `n` as a `u64`: lossless on every supported target.
pub const fn u64_of(n: usize) -> u64 {
    n as u64
}
