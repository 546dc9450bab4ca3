//! Directory locality. Programs that start read many small files of the same directories —
//! an interpreter's modules (`email/__pycache__/*.pyc`), a runtime's classes, a package's
//! scripts — one after another, and each cold read waits a round trip of its own. When a read
//! first misses in a directory, the small files beside it (in the same layer, nearest in the
//! blob first, up to [`crate::readahead::dir_prefetch_bytes`] compressed bytes) are fetched at
//! once, in the same few range requests, so that the directory's next misses find them
//! arriving. It starts at a directory's second miss ([`crate::readahead::DIR_PREFETCH_AFTER`]),
//! once per directory and mount.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_formats::index::{Chunk, ChunkLoc, Kind};
use strata_storage::lazy::ChunkFetcher;
use tracing::debug;

use crate::readahead::{DIR_PREFETCH_FILE_MAX, dir_prefetch_after, dir_prefetch_bytes};
use crate::ready::Ready;

/// Misses seen per directory by this mount.
#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<HashMap<u64, u32>>);

impl Seen {
    /// Counts a miss in `dir`; true when it is the one that starts the directory's prefetch.
    fn starts(&self, dir: u64, nth: u32) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(dir).or_insert(0);
        *n = n.saturating_add(1);
        *n == nth
    }
}

/// Where a chunk's compressed bytes are in its blob, if they are fetched by range.
pub(crate) fn blob_range(c: &Chunk) -> Option<(u64, u64)> {
    match c.loc {
        ChunkLoc::Zstd { start, end }
        | ChunkLoc::Gzip { start, end, .. }
        | ChunkLoc::Zran { start, end, .. } => Some((start, end)),
        ChunkLoc::Zeros | ChunkLoc::Local => None,
    }
}

/// The chunks to fetch for a miss in file `ino`: the small regular files of its directory in
/// the same layer, nearest in the blob first, within `budget` compressed bytes.
fn neighbours(ready: &Ready, ino: u64, budget: u64) -> Option<(usize, Vec<Chunk>)> {
    let tree = &ready.tree;
    let node = tree.get(ino)?;
    let content = node.content.as_ref()?;
    let at = content.chunks.iter().find_map(blob_range)?.0;
    let dir = tree.get(node.parent)?;
    let mut files: Vec<(u64, &[Chunk])> = dir
        .children
        .iter()
        .filter(|&(_, child)| child != ino)
        .filter_map(|(_, child)| tree.get(child))
        .filter(|n| n.kind == Kind::Reg && n.size <= DIR_PREFETCH_FILE_MAX)
        .filter_map(|n| n.content.as_ref())
        .filter(|c| c.layer == content.layer)
        .filter_map(|c| {
            Some((
                c.chunks.iter().find_map(blob_range)?.0.abs_diff(at),
                &*c.chunks,
            ))
        })
        .collect();
    files.sort_by_key(|f| f.0);
    let mut chunks = Vec::new();
    let mut spent = 0u64;
    for (_, file) in files {
        let cost: u64 = file.iter().filter_map(blob_range).map(|(s, e)| e - s).sum();
        if spent + cost > budget {
            continue;
        }
        spent += cost;
        chunks.extend(file.iter().filter(|c| blob_range(c).is_some()).copied());
    }
    chunks.sort_by_key(|c| blob_range(c).map_or(0, |r| r.0));
    (!chunks.is_empty()).then_some((content.layer, chunks))
}

/// On a read of `ino` that missed the cache: the first time for its directory, starts fetching
/// its neighbours; returns at once.
pub(crate) fn on_miss(
    seen: &Seen,
    ready: &Arc<Ready>,
    fetcher: &Arc<ChunkFetcher>,
    rt: &tokio::runtime::Handle,
    ino: u64,
) {
    let budget = dir_prefetch_bytes();
    let Some(dir) = ready.tree.get(ino).map(|n| n.parent) else {
        return;
    };
    if budget == 0 || !seen.starts(dir, dir_prefetch_after()) {
        return;
    }
    let Some((layer, chunks)) = neighbours(ready, ino, budget) else {
        return;
    };
    let Some(source) = ready.layers.get(layer).cloned() else {
        return;
    };
    let fetcher = fetcher.clone();
    rt.spawn(async move {
        if let Err(e) = fetcher.ensure(&source, &chunks).await {
            debug!(blob = %source.blob, error = %e, "directory prefetch failed");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_formats::index::LayerIndex;

    use crate::tree::Tree;

    use crate::tree::test_file_at as reg;

    #[test]
    fn neighbours_are_small_files_of_the_same_directory_nearest_first_within_budget() {
        let layer = LayerIndex {
            entries: vec![
                crate::tree::test_entry("a", Kind::Dir),
                reg("a/m1", 0, 100),
                reg("a/m2", 100, 100),
                reg("a/m3", 200, 100),
                reg("a/big", 300, DIR_PREFETCH_FILE_MAX + 1),
                reg("a/m4", 900_000, 100),
                crate::tree::test_entry("b", Kind::Dir),
                reg("b/other", 400, 100),
            ],
        };
        let tree = Tree::build([&layer]).unwrap();
        let ready = Ready::new(tree, Vec::new());
        let m2 = ready.tree.resolve(b"a/m2").unwrap();
        let starts = |budget| {
            neighbours(&ready, m2, budget)
                .map(|(_, c)| {
                    c.iter()
                        .filter_map(blob_range)
                        .map(|r| r.0)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        // Everything small beside it, in blob order; not itself, not the big file, not b/.
        assert_eq!(starts(1 << 20), vec![0, 200, 900_000]);
        // A budget of two files takes the two nearest.
        assert_eq!(starts(200), vec![0, 200]);
        assert_eq!(starts(0), Vec::<u64>::new());
    }
}
