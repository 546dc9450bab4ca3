//! strata's lazy filesystem: the merged tree of an image's layers from their indexes, served
//! read-only over FUSE with file content fetched lazily and verified chunk by chunk.

pub mod abort;
pub mod attr;
mod children;
mod dir_prefetch;
mod elf_deps;
mod exec_prefetch;
mod failure;
pub mod fuse;
pub mod layer_dirs;
pub mod mount;
mod open;
pub mod open_journal;
pub mod readahead;
mod reader_gone;
mod ready;
pub mod record;
mod seek;
pub mod stale;
pub mod store;
mod subtree_prefetch;
pub mod takeover;
pub mod tree;

pub use failure::LastFailure;
pub use fuse::{LazyFs, Readiness, ReadySetter};
pub use record::Recording;
pub use store::StoreTree;
pub use tree::Tree;
