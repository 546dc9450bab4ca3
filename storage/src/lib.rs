#![allow(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // TODO(issue 13): lints after the read-path/image/cli merges
//! Local storage: the content-addressed image store and references, the verified chunk cache,
//! and lazy fetches of chunks from a layer blob through a [`source::BlobSource`].
#![warn(missing_docs)]

pub mod atomic;
pub mod cache;
mod descriptors;
pub mod feed;
mod inflight;
pub mod lazy;
pub mod plain;
pub mod ranges;
pub mod source;
pub mod store;
