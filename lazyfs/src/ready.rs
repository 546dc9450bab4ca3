//! What a filesystem serves once its layers are indexed, and the cell that makes it visible:
//! a filesystem may be mounted before its tree is known, every operation waiting until then.
//! The layer store's tree grows: each addition is a new [`Ready`] swapped in whole, so an
//! operation sees one consistent tree and inode numbers never change.

use std::sync::{Arc, OnceLock, RwLock};

use fuser::FileAttr;
use strata_storage::lazy::LayerSource;
use tracing::error;

use crate::attr::attr_of;
use crate::tree::{ROOT_INO, Tree};

/// The tree, its layers and every inode's attributes, computed once.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub(crate) tree: Tree,
    pub(crate) layers: Vec<LayerSource>,
    /// Attributes of inode N at N - 1.
    attrs: Vec<FileAttr>,
}

impl Ready {
    pub(crate) fn new(tree: Tree, layers: Vec<LayerSource>) -> Self {
        let attrs = (1..=tree.len() as u64)
            .filter_map(|ino| tree.get(ino).map(|n| attr_of(ino, n)))
            .collect();
        Self {
            tree,
            layers,
            attrs,
        }
    }

    /// This tree after `grow` added nodes (and changed none but the root's): the attributes
    /// of the root and of the new nodes are computed, the others kept.
    pub(crate) fn grown<T, E>(
        &self,
        grow: impl FnOnce(&mut Tree, &mut Vec<LayerSource>) -> Result<T, E>,
    ) -> Result<(Self, T), E> {
        let mut next = self.clone();
        let out = grow(&mut next.tree, &mut next.layers)?;
        let old = next.attrs.len() as u64;
        for ino in old + 1..=next.tree.len() as u64 {
            if let Some(n) = next.tree.get(ino) {
                next.attrs.push(attr_of(ino, n));
            }
        }
        if let (Some(n), Some(a)) = (next.tree.get(ROOT_INO), next.attrs.first_mut()) {
            *a = attr_of(ROOT_INO, n);
        }
        Ok((next, out))
    }

    /// The attributes of `ino`.
    pub(crate) fn attr(&self, ino: u64) -> Option<&FileAttr> {
        self.attrs.get(strata_oci::usize_of(ino.checked_sub(1)?))
    }
}

/// The tree once built (the latest, for a growing store), or why it could not be.
#[derive(Debug, Default)]
pub(crate) struct ReadyState {
    /// Set once the first result is in: what operations wait for.
    first: OnceLock<()>,
    current: RwLock<Option<Result<Arc<Ready>, String>>>,
}

impl ReadyState {
    /// The current tree, waiting for the first.
    pub(crate) fn wait(&self) -> Result<Arc<Ready>, String> {
        self.first.wait();
        self.get()
            .unwrap_or_else(|| Err("the tree was never set".into()))
    }

    /// The current tree, or `None` while pending.
    pub(crate) fn get(&self) -> Option<Result<Arc<Ready>, String>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the tree (or sets why there is none) and wakes whoever waits.
    pub(crate) fn set(&self, r: Result<Ready, String>) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some(r.map(Arc::new));
        drop(g);
        let _ = self.first.set(());
    }
}

/// The shared cell of a filesystem's tree.
pub(crate) type ReadyCell = Arc<ReadyState>;

/// Whether a [`crate::LazyFs::pending`] filesystem's tree could be built, for callers that must
/// report why an image cannot be used rather than the EIO every operation then gets.
#[derive(Debug, Clone)]
pub struct Readiness(pub(crate) ReadyCell);

impl Readiness {
    /// `Some(cause)` once the tree is known not to be buildable; `None` while pending or ready.
    pub fn failure(&self) -> Option<String> {
        self.0.get().and_then(|r| r.err())
    }

    /// Blocks until the tree is built (`Ok`) or known not to be buildable (`Err(cause)`); as
    /// long as every filesystem operation would wait.
    pub fn wait(&self) -> Result<(), String> {
        self.0.wait().map(|_| ())
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
        self.0
            .set(result.map(|(tree, layers)| Ready::new(tree, layers)));
    }
}
