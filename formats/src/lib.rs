//! Layer formats, as pure readers and writers over `Read`/`Write` (no network, no store): the
//! zstd:chunked and eStargz tables of contents, tar walks and tar-split, the normalized layer
//! index built from any TOC, and prefetch profiles.

pub mod chunked;
pub mod estargz;
pub mod estargz_write;
pub mod fbs;
pub mod index;
mod num;
pub mod profile;
pub mod soci;
pub mod soci_local;
pub mod sparse;
#[cfg(test)]
mod sparse_tests;
pub mod tarsplit;
pub mod tarwalk;
pub mod toc;
pub mod zlib;
pub mod zran;
pub mod zran_stream;
pub mod ztoc;
