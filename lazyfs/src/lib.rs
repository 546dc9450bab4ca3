#![allow(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // TODO(issue 13): lints after the read-path/image/cli merges
//! strata's lazy filesystem: the merged tree of an image's layers from their indexes, served
//! read-only over FUSE with file content fetched lazily and verified chunk by chunk.
#![warn(missing_docs)]

pub mod attr;
mod children;
pub mod fuse;
pub mod mount;
mod open;
pub mod readahead;
mod ready;
pub mod record;
mod seek;
pub mod tree;

pub use fuse::{LazyFs, Readiness, ReadySetter};
pub use record::Recording;
pub use tree::Tree;
