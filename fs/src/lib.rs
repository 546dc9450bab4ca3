//! strata's FUSE union filesystem: lower layers merged from their TOCs, content fetched lazily.

pub mod fuse;
pub mod mount;
pub mod record;
pub mod root;
pub mod stale;
pub mod tree;
pub mod union;

pub use fuse::{LazyFs, Readiness, ReadySetter};
pub use record::Recording;
pub use tree::Tree;
