//! strata's fetcher: references and digests, the registry client, the layer formats and their
//! tables of contents, the image store and the verified chunk cache.

pub mod archive;
pub mod archive_docker;
pub mod atomic;
pub mod cache;
pub mod chunked;
pub mod commit;
pub mod convert;
pub mod digest;
pub mod estargz;
pub mod estargz_write;
pub mod gc;
pub mod image;
pub mod index;
pub mod layer_pull;
pub mod lazy;
pub mod leftovers;
pub mod plain;
pub mod platform;
pub mod profile;
pub mod push;
pub mod reference;
pub mod registry;
pub mod sparse;
#[cfg(test)]
mod sparse_tests;
pub mod store;
pub mod tarsplit;
pub mod tarwalk;
pub mod timefmt;
pub mod toc;

pub use digest::Digest;
pub use reference::Reference;
