#![allow(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)] // TODO(issue 13): lints after the read-path/image/cli merges
//! Image services over the registry client, the formats and the store: pull, open, convert,
//! commit, push, profile, save/load and gc.

pub mod archive;
pub mod archive_docker;
pub mod commit;
pub mod convert;
pub mod gc;
pub mod image;
pub mod layer_pull;
pub mod profile;
pub mod push;
