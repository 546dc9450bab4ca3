//! The build cache: which image a step produced from a given parent, instruction and
//! content. Kept in `build-cache.json` under the state root; an entry whose image is gone
//! is a miss and is dropped by [`BuildCache::prune`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use strata_oci::digest::Digest;
use strata_storage::store::{ImageRecord, Store};

/// Errors of the cache file.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing it failed.
    #[error("build cache {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not the JSON strata writes.
    #[error("build cache {path}: malformed")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// One cached step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The image (manifest digest) the step made.
    pub image: Digest,
    /// The image it was made on (None: scratch).
    pub parent: Option<Digest>,
    /// When (seconds since the epoch).
    pub created: i64,
}

/// The cache under a state root.
#[derive(Debug)]
pub struct BuildCache {
    path: PathBuf,
}

/// The key of a step: its parent image's config and its history text — the instruction after
/// substitution, with the build arguments a RUN sees or, for COPY/ADD, the hash of what it
/// copies.
pub fn key(parent: Option<&ImageRecord>, created_by: &str) -> String {
    let mut h = Sha256::new();
    h.update(
        parent
            .map(|p| p.config.to_string())
            .unwrap_or_else(|| "scratch".into()),
    );
    h.update([0]);
    h.update(created_by.as_bytes());
    hex::encode(h.finalize())
}

impl BuildCache {
    /// The cache of the state root `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            path: root.join("build-cache.json"),
        }
    }

    /// All entries.
    pub fn entries(&self) -> Result<BTreeMap<String, Entry>, CacheError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| CacheError::Format {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(CacheError::File {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn save(&self, entries: &BTreeMap<String, Entry>) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(entries).map_err(|source| CacheError::Format {
            path: self.path.clone(),
            source,
        })?;
        strata_storage::atomic::write_file(&self.path, &bytes).map_err(|source| CacheError::File {
            path: self.path.clone(),
            source,
        })
    }

    /// The image a step with this key made, if it is still stored.
    pub fn lookup(&self, store: &Store, key: &str) -> Result<Option<ImageRecord>, CacheError> {
        let Some(e) = self.entries()?.remove(key) else {
            return Ok(None);
        };
        Ok(store.image(&e.image).ok().flatten())
    }

    /// Records what a step made.
    pub fn insert(&self, key: String, entry: Entry) -> Result<(), CacheError> {
        let mut all = self.entries()?;
        all.insert(key, entry);
        self.save(&all)
    }

    /// Manifests of images that are parents of cached steps whose image is still stored: the
    /// intermediate images of builds, kept for the cache and not shown as dangling.
    pub fn intermediate(&self, store: &Store) -> Result<Vec<Digest>, CacheError> {
        Ok(self
            .entries()?
            .values()
            .filter(|e| store.image(&e.image).ok().flatten().is_some())
            .filter_map(|e| e.parent)
            .collect())
    }

    /// Drops entries whose image is gone (after `image prune` or `rmi`); `all` drops every
    /// entry (`builder prune`). Returns how many were dropped.
    pub fn prune(&self, store: &Store, all: bool) -> Result<usize, CacheError> {
        let mut entries = self.entries()?;
        let before = entries.len();
        entries.retain(|_, e| !all && store.image(&e.image).ok().flatten().is_some());
        self.save(&entries)?;
        Ok(before - entries.len())
    }
}
