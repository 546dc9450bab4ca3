//! The layer store's filesystem: one mount serving every layer's directory (see
//! [`crate::layer_dirs`]), growing while mounted as images are added.

use std::sync::{Arc, Mutex};

use strata_formats::index::LayerIndex;
use strata_storage::lazy::{ChunkFetcher, LayerSource};

use crate::fuse::LazyFs;
use crate::ready::{Ready, ReadyCell};
use crate::tree::{Tree, TreeError};

/// Adds layers to a mounted store filesystem.
#[derive(Debug, Clone)]
pub struct StoreTree {
    cell: ReadyCell,
    /// Serializes additions (each one copies the tree it extends).
    adding: Arc<Mutex<()>>,
}

impl LazyFs {
    /// An empty layer store filesystem and the handle that adds layers to it.
    pub fn store(fetcher: Arc<ChunkFetcher>, rt: tokio::runtime::Handle) -> (Self, StoreTree) {
        let (fs, setter) = Self::pending(fetcher, rt);
        setter.set(Ok((Tree::store(), Vec::new())));
        let tree = StoreTree {
            cell: fs.readiness().0,
            adding: Arc::new(Mutex::new(())),
        };
        (fs, tree)
    }
}

impl StoreTree {
    /// Whether the store has directory `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.current()
            .is_some_and(|r| r.tree.resolve(name.as_bytes()).is_some())
    }

    /// Adds layer directory `name` (`name/diff` from `index` on top of the layer directories
    /// named `lowers`, top first; content from `source`; `name/info` holding `info`) unless it
    /// is there already. Returns the number of inodes added (0: it was there).
    ///
    /// Errors: a hardlink to nothing ([`Tree::add_layer_dir`]).
    pub fn add_layer(
        &self,
        name: &str,
        lowers: &[String],
        index: &LayerIndex,
        source: LayerSource,
        info: Vec<u8>,
    ) -> Result<usize, TreeError> {
        self.add_layer_then(name, lowers, index, source, info, |_| {})
    }

    /// [`Self::add_layer`], calling `added` (still holding the lock that orders additions)
    /// when the layer was added: what records the order in which a successor must add them
    /// again to give every inode the same number.
    pub fn add_layer_then(
        &self,
        name: &str,
        lowers: &[String],
        index: &LayerIndex,
        source: LayerSource,
        info: Vec<u8>,
        added: impl FnOnce(usize),
    ) -> Result<usize, TreeError> {
        let _one_at_a_time = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ready) = self.current() else {
            return Ok(0);
        };
        if ready.tree.resolve(name.as_bytes()).is_some() {
            return Ok(0);
        }
        let lower_diffs: Vec<u64> = lowers
            .iter()
            .filter_map(|l| ready.tree.resolve(format!("{l}/diff").as_bytes()))
            .collect();
        let before = ready.tree.len();
        let (next, _) = ready.grown(|tree, layers| {
            layers.push(source);
            tree.add_layer_dir(name.as_bytes(), index, layers.len() - 1, info, &lower_diffs)
        })?;
        let n = next.tree.len() - before;
        self.cell.set(Ok(next));
        added(n);
        Ok(n)
    }

    /// Allocates `n` unreachable inodes (see [`Tree::reserve`]).
    pub fn reserve(&self, n: usize) {
        let _one_at_a_time = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ready) = self.current() else {
            return;
        };
        if let Ok((next, ())) = ready.grown(|tree, _| {
            tree.reserve(n);
            Ok::<_, TreeError>(())
        }) {
            self.cell.set(Ok(next));
        }
    }

    /// Number of layers served.
    pub fn layers(&self) -> usize {
        self.current().map_or(0, |r| r.layers.len())
    }

    /// Number of inodes served.
    pub fn inodes(&self) -> usize {
        self.current().map_or(0, |r| r.tree.len())
    }

    fn current(&self) -> Option<Arc<Ready>> {
        self.cell.get().and_then(Result::ok)
    }
}
