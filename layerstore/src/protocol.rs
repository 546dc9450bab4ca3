//! What clients and the server say to each other: one JSON object per line, a reply for each
//! request, over the store's unix socket. A connection is also a lease: the store stays while
//! it is open.

use serde::{Deserialize, Serialize};
use strata_storage::store::ImageRecord;

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Serve the layers of an image (indexing those not yet indexed), fetching ahead as
    /// `prefetch` says (`auto`, `profile`, `all`, `none`; once per image).
    Add {
        /// The image.
        image: ImageRecord,
        /// The prefetch mode.
        prefetch: String,
    },
    /// How the store is.
    Status,
}

/// A reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The image's layer directories (each a `diff` directory), bottom first.
    Lowers(Vec<String>),
    /// The store's state.
    Status(Status),
    /// Why the request failed.
    Error(String),
}

/// The store's state, as `Request::Status` returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The server's process id.
    pub pid: u32,
    /// Open connections (users).
    pub users: usize,
    /// Layers served.
    pub layers: usize,
    /// Inodes served.
    pub inodes: usize,
    /// The last read that failed: when (seconds since the epoch) and why.
    #[serde(default)]
    pub last_failure: Option<(i64, String)>,
    /// The settings it serves with ([`crate::client::settings`] of the server's process).
    #[serde(default)]
    pub settings: String,
}
