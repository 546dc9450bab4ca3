//! Image services over the registry client, the formats and the store: pull, open, convert,
//! commit, push, profile, save/load and gc.

pub mod archive;
pub mod archive_docker;
pub mod blobs;
pub mod commit;
pub mod convert;
pub mod gc;
pub mod image;
pub mod layer_pull;
pub mod profile;
pub mod push;
