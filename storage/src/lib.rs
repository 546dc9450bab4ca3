//! Local storage: the content-addressed image store and references, the verified chunk cache,
//! and lazy fetches of chunks from a layer blob through a [`source::BlobSource`].

pub mod atomic;
pub mod cache;
pub mod deadline;
mod descriptors;
pub mod feed;
mod inflight;
pub mod lazy;
pub mod leftovers;
pub mod plain;
pub mod plain_ztoc;
pub mod ranges;
mod read_deadline;
pub mod source;
mod spans;
pub mod store;
pub mod trace;
