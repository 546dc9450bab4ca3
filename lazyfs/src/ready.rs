//! What a filesystem serves once its layers are indexed, and the cell that makes it visible:
//! a filesystem may be mounted before its tree is known, every operation waiting until then.

use std::sync::{Arc, OnceLock};

use fuser::FileAttr;
use strata_storage::lazy::LayerSource;
use tracing::error;

use crate::attr::attr_of;
use crate::tree::Tree;

/// The tree, its layers and every inode's attributes, computed once.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) tree: Tree,
    pub(crate) layers: Vec<LayerSource>,
    /// Attributes of inode N at N - 1.
    attrs: Vec<FileAttr>,
}

impl Ready {
    fn new(tree: Tree, layers: Vec<LayerSource>) -> Self {
        let attrs = (1..=tree.len() as u64)
            .filter_map(|ino| tree.get(ino).map(|n| attr_of(ino, n)))
            .collect();
        Self {
            tree,
            layers,
            attrs,
        }
    }

    /// The attributes of `ino`.
    pub(crate) fn attr(&self, ino: u64) -> Option<&FileAttr> {
        self.attrs.get(strata_oci::usize_of(ino.checked_sub(1)?))
    }
}

/// The tree once built, or why it could not be.
pub(crate) type ReadyCell = Arc<OnceLock<Result<Ready, String>>>;

/// Whether a [`crate::LazyFs::pending`] filesystem's tree could be built, for callers that must
/// report why an image cannot be used rather than the EIO every operation then gets.
#[derive(Debug, Clone)]
pub struct Readiness(pub(crate) ReadyCell);

impl Readiness {
    /// `Some(cause)` once the tree is known not to be buildable; `None` while pending or ready.
    pub fn failure(&self) -> Option<String> {
        self.0.get().and_then(|r| r.as_ref().err().cloned())
    }

    /// Blocks until the tree is built (`Ok`) or known not to be buildable (`Err(cause)`); as
    /// long as every filesystem operation would wait.
    pub fn wait(&self) -> Result<(), String> {
        self.0.wait().as_ref().map(|_| ()).map_err(Clone::clone)
    }
}

/// Completes a [`crate::LazyFs::pending`] filesystem.
#[derive(Debug)]
pub struct ReadySetter(pub(crate) ReadyCell);

impl ReadySetter {
    /// Makes the tree visible (or makes every operation fail with EIO, logging `Err` once).
    pub fn set(self, result: Result<(Tree, Vec<LayerSource>), String>) {
        if let Err(e) = &result {
            error!(error = %e, "image could not be prepared; every operation fails with EIO");
        }
        let _ = self
            .0
            .set(result.map(|(tree, layers)| Ready::new(tree, layers)));
    }
}
