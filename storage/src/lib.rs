//! Local storage: the content-addressed image store and references, the verified chunk cache,
//! and lazy fetches of chunks from a layer blob.

pub mod atomic;
pub mod cache;
pub mod lazy;
pub mod plain;
pub mod store;
