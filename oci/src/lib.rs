//! OCI basics shared by every strata crate: content digests, image references, platforms and
//! the RFC 3339 times of image configs, and typed image configs and manifests.

#![warn(missing_docs)]

pub mod config;
pub mod digest;
pub mod manifest;
pub mod nullable;
pub mod platform;
pub mod reference;
pub mod timefmt;

pub use digest::Digest;
pub use reference::Reference;
