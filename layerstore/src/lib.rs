//! The layer store: one lazy FUSE mount per state root that serves every layer's directory
//! (`<root>/layers/<layer digest hex>/diff`, whiteouts in overlayfs's format; see
//! [`strata_lazyfs::layer_dirs`]), shared by every container, mount and image on the machine.
//!
//! There is no daemon to install: the first user starts the server ([`client::Lease::open`]
//! under a lock, so concurrent first users start it once); each user holds a connection to its
//! socket for as long as it uses the store (a [`client::Lease`]); the server ends once the last
//! user has gone, it has been idle for a while, and no overlay mount still stacks its layers.
//! Images are added on demand: the server indexes their layers (streaming those without a
//! TOC), adds each layer once, and runs the image's prefetch once.

pub mod als;
pub mod als_fs;
pub mod client;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

/// Where the store lives under a state root.
#[derive(Debug, Clone)]
pub struct StorePaths {
    /// The FUSE mount point.
    pub mount: PathBuf,
    /// The server's unix socket.
    pub socket: PathBuf,
    /// Held while the server is started or stops, so that both happen once.
    pub lock: PathBuf,
    /// The server's log.
    pub log: PathBuf,
    /// The layers in the order they were added (JSON lines): what a successor adds again, in
    /// the same order, to give every inode the number the kernel knows.
    pub journal: PathBuf,
    /// How inodes are open on the connection (see [`strata_lazyfs::open_journal`]).
    pub opens: PathBuf,
}

impl StorePaths {
    /// The store's paths under state root `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            mount: root.join("layers"),
            socket: root.join("layers.sock"),
            lock: root.join("layers.lock"),
            log: root.join("layers.log"),
            journal: root.join("layers.journal"),
            opens: root.join("layers.open"),
        }
    }
}

/// Errors of the layer store, its server and its clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or socket of the store could not be used.
    #[error("layer store {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be started or did not come up in time.
    #[error("layer store server for {root} did not start: {cause}")]
    Start {
        /// The state root.
        root: PathBuf,
        /// Why (with the server's last log line when it exited).
        cause: String,
    },
    /// The server answered with an error.
    #[error("layer store: {0}")]
    Server(String),
    /// The server's answer could not be read.
    #[error("layer store reply: {0}")]
    Protocol(String),
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
