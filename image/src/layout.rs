//! Where image services keep their files under a state root.

use std::path::{Path, PathBuf};

/// The directories of a state root that image services write: the store, the cache's blob
/// directory (blobs made or loaded here, read lazily like registry blobs), assembled files and
/// scratch space.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image store (`store`).
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The chunk cache (`cache`).
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Whole local blobs: committed, loaded or foreign layers (`cache/blobs`).
    pub fn blobs(&self) -> PathBuf {
        self.root.join("cache/blobs")
    }

    /// The local copy of blob `hex` in [`Layout::blobs`].
    pub fn blob(&self, d: &strata_oci::digest::Digest) -> PathBuf {
        self.blobs().join(d.hex())
    }

    /// Files assembled for passthrough reads (`cache/files`).
    pub fn files(&self) -> PathBuf {
        self.root.join("cache/files")
    }

    /// Scratch space for uploads, conversions and archives (`tmp`).
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
}
