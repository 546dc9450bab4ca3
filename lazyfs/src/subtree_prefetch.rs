//! Subtree locality. An interpreter importing modules reads one small file after another from
//! many sibling directories (`json/__pycache__/*.pyc`, `email/__pycache__/*.pyc`, ...), each
//! miss a round trip of its own, in an order no directory prefetch guesses: the trace of an
//! import-heavy Python start showed ~60 such misses one after another while the link sat idle
//! three quarters of the time. Once small-file misses of one kind (same layer, same file name
//! extension) have come from [`crate::readahead::SUBTREE_PREFETCH_AFTER_DIRS`] different
//! directories, the small files of that kind in the directories' lowest common ancestor (the
//! interpreter's library tree) are fetched at once, nearest the last miss first, within
//! [`crate::readahead::subtree_prefetch_bytes`] compressed bytes, in requests small enough
//! that a reader waiting for one of their chunks waits little longer than for its own.
//!
//! Files without an extension are left to [`crate::dir_prefetch`]: an extension is what tells
//! the compiled modules a program reads apart from the sources beside them it does not.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use strata_formats::index::{Chunk, Kind};
use strata_storage::lazy::ChunkFetcher;
use tracing::debug;

use crate::dir_prefetch::blob_range;
use crate::readahead::{
    DIR_PREFETCH_FILE_MAX, SUBTREE_PREFETCH_AFTER_DIRS, SUBTREE_PREFETCH_MAX,
    SUBTREE_PREFETCH_PIECE, SUBTREE_PREFETCH_PIECES, subtree_prefetch_bytes,
};
use crate::ready::Ready;
use crate::tree::{ROOT_INO, Tree};

/// What the misses of one kind (layer index, extension) have shown so far.
#[derive(Debug, Default)]
struct Kindred {
    /// The directories they came from.
    dirs: HashSet<u64>,
    /// The lowest directory holding all of them.
    top: Option<u64>,
    /// The ancestors whose subtree has been prefetched.
    done: HashSet<u64>,
}

/// Directories remembered per kind: past this, a kind's misses change nothing (its common
/// ancestor is long settled), so a long-lived mount's memory stays bounded.
const DIRS_KEPT: usize = 1024;

/// Small-file misses seen by this mount, by kind, and the prefetches started.
#[derive(Debug, Default)]
struct State {
    kinds: HashMap<(usize, Vec<u8>), Kindred>,
    started: usize,
}

/// Small-file misses seen by this mount.
#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<State>);

impl Seen {
    /// Notes a miss of a file of kind `key` in `dir`; the ancestor to prefetch, when this miss
    /// is the one that calls for it. Once the mount's prefetches are spent it does nothing.
    fn note(&self, tree: &Tree, key: (usize, Vec<u8>), dir: u64) -> Option<u64> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.started >= SUBTREE_PREFETCH_MAX {
            return None;
        }
        let k = s.kinds.entry(key).or_default();
        if k.dirs.len() >= DIRS_KEPT || !k.dirs.insert(dir) {
            return None;
        }
        k.top = match k.top {
            None => Some(dir),
            Some(top) => common_ancestor(tree, top, dir),
        };
        if k.dirs.len() < SUBTREE_PREFETCH_AFTER_DIRS {
            return None;
        }
        let top = k.top?;
        let fresh = k.done.insert(top);
        s.started += usize::from(fresh);
        fresh.then_some(top)
    }
}

/// The extension of a file name (after its last dot; not a leading dot), 1 to 8 bytes.
fn extension(name: &[u8]) -> Option<&[u8]> {
    let dot = name.iter().rposition(|b| *b == b'.')?;
    let ext = &name[dot + 1..];
    (dot > 0 && (1..=8).contains(&ext.len())).then_some(ext)
}

/// The name of `ino` in its parent directory.
fn name_of(tree: &Tree, ino: u64) -> Option<&[u8]> {
    let parent = tree.get(tree.get(ino)?.parent)?;
    parent
        .children
        .iter()
        .find(|(_, c)| *c == ino)
        .map(|(n, _)| n)
}

/// `ino` and its ancestors up to the root, nearest first.
fn ancestors(tree: &Tree, mut ino: u64) -> Vec<u64> {
    let mut out = vec![ino];
    while ino != ROOT_INO {
        match tree.get(ino).map(|n| n.parent) {
            Some(p) if p != ino && out.len() < 4096 => {
                out.push(p);
                ino = p;
            }
            _ => break,
        }
    }
    out
}

/// The lowest directory holding both `a` and `b`.
fn common_ancestor(tree: &Tree, a: u64, b: u64) -> Option<u64> {
    let theirs: HashSet<u64> = ancestors(tree, b).into_iter().collect();
    ancestors(tree, a).into_iter().find(|x| theirs.contains(x))
}

/// The chunks of the small regular files of kind (`layer`, `ext`) under `top`, nearest blob
/// offset `at` first, within `budget` compressed bytes; cut, in blob order, into pieces of about
/// [`SUBTREE_PREFETCH_PIECE`] bytes (one request each), the pieces nearest `at` first.
fn subtree_pieces(
    tree: &Tree,
    top: u64,
    (layer, ext): (usize, &[u8]),
    at: u64,
    budget: u64,
) -> Vec<Vec<Chunk>> {
    let mut files: Vec<(u64, u64, &[Chunk])> = Vec::new();
    let mut stack = vec![top];
    while let Some(dir) = stack.pop() {
        let Some(node) = tree.get(dir) else { continue };
        for (name, child) in node.children.iter() {
            let Some(n) = tree.get(child) else { continue };
            if n.kind == Kind::Dir && n.parent == dir {
                stack.push(child);
            }
            let Some(c) = n.content.as_ref() else {
                continue;
            };
            if n.kind != Kind::Reg
                || n.size > DIR_PREFETCH_FILE_MAX
                || c.layer != layer
                || extension(name) != Some(ext)
            {
                continue;
            }
            let ranges = c.chunks.iter().filter_map(blob_range);
            let cost: u64 = ranges.clone().map(|(s, e)| e - s).sum();
            if let Some((start, _)) = ranges.min() {
                files.push((start.abs_diff(at), cost, &c.chunks));
            }
        }
    }
    files.sort_by_key(|f| f.0);
    let mut chunks = Vec::new();
    let mut spent = 0u64;
    for (_, cost, file) in files {
        if spent + cost > budget {
            break;
        }
        spent += cost;
        chunks.extend(file.iter().filter(|c| blob_range(c).is_some()).copied());
    }
    chunks.sort_by_key(|c| blob_range(c).map_or(0, |r| r.0));
    // A piece is one request from its first chunk's start to its last chunk's end, the bytes
    // between (the sources beside the compiled files) included: that span is what is bounded.
    let mut pieces: Vec<Vec<Chunk>> = Vec::new();
    let mut first = 0u64;
    for c in chunks {
        let Some((start, end)) = blob_range(&c) else {
            continue;
        };
        match pieces.last_mut() {
            Some(p) if end.saturating_sub(first) <= SUBTREE_PREFETCH_PIECE => p.push(c),
            _ => {
                pieces.push(vec![c]);
                first = start;
            }
        }
    }
    pieces.sort_by_key(|p| {
        p.first()
            .and_then(blob_range)
            .map_or(0, |r| r.0.abs_diff(at))
    });
    pieces
}

/// On a read of `ino` that missed the cache: when misses of its kind have now come from enough
/// directories, starts fetching the small files of that kind in their common ancestor; returns
/// at once.
pub(crate) fn on_miss(
    seen: &Seen,
    ready: &Arc<Ready>,
    fetcher: &Arc<ChunkFetcher>,
    rt: &tokio::runtime::Handle,
    ino: u64,
) {
    let budget = subtree_prefetch_bytes();
    let tree = &ready.tree;
    let Some(node) = tree.get(ino) else { return };
    let Some(content) = node.content.as_ref() else {
        return;
    };
    if budget == 0 || node.kind != Kind::Reg || node.size > DIR_PREFETCH_FILE_MAX {
        return;
    }
    let Some(ext) = name_of(tree, ino).and_then(extension) else {
        return;
    };
    let Some(top) = seen.note(tree, (content.layer, ext.to_vec()), node.parent) else {
        return;
    };
    let Some(source) = ready.layers.get(content.layer).cloned() else {
        return;
    };
    let at = content
        .chunks
        .iter()
        .find_map(blob_range)
        .map_or(0, |r| r.0);
    let (ready, fetcher, ext, layer) =
        (ready.clone(), fetcher.clone(), ext.to_vec(), content.layer);
    let rt2 = rt.clone();
    rt.spawn(async move {
        let pieces = subtree_pieces(&ready.tree, top, (layer, &ext), at, budget);
        if let Some(t) = strata_storage::trace::get() {
            let why = format!(
                "subtree *.{} ({} requests)",
                String::from_utf8_lossy(&ext),
                pieces.len()
            );
            t.prefetch(&source.blob, &ready.tree.path_of(top), &why);
        }
        // SUBTREE_PREFETCH_PIECES lanes, each fetching every n-th piece in turn: nearest
        // pieces first in every lane.
        let pieces = Arc::new(pieces);
        for lane in 0..SUBTREE_PREFETCH_PIECES.min(pieces.len()) {
            let (pieces, fetcher, source) = (pieces.clone(), fetcher.clone(), source.clone());
            rt2.spawn(async move {
                for p in pieces.iter().skip(lane).step_by(SUBTREE_PREFETCH_PIECES) {
                    if let Err(e) = fetcher.ensure(&source, p).await {
                        debug!(blob = %source.blob, error = %e, "subtree prefetch failed");
                        return;
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_formats::index::{Entry, LayerIndex};

    use crate::tree::test_file_at as reg;

    fn dir(path: &str) -> Entry {
        crate::tree::test_entry(path, Kind::Dir)
    }

    fn lib() -> Tree {
        let layer = LayerIndex {
            entries: vec![
                dir("lib"),
                dir("lib/a"),
                reg("lib/a/m.pyc", 0, 100),
                reg("lib/a/m.py", 100, 300),
                dir("lib/b"),
                reg("lib/b/n.pyc", 400, 100),
                reg("lib/b/far.pyc", 600_000, 100),
                dir("lib/c"),
                dir("lib/c/d"),
                reg("lib/c/d/o.pyc", 500, 100),
                reg("lib/c/d/p.pyc", 600, 100),
                reg("lib/c/big.pyc", 700, DIR_PREFETCH_FILE_MAX + 1),
                reg("lib/c/README", 900_000, 10),
                dir("etc"),
                reg("etc/x.pyc", 900_100, 10),
            ],
        };
        Tree::build([&layer]).unwrap()
    }

    #[test]
    fn the_third_directory_of_a_kind_starts_its_ancestors_prefetch_once() {
        let tree = lib();
        let ino = |p: &str| tree.resolve(p.as_bytes()).unwrap();
        let seen = Seen::default();
        let key = || (0, b"pyc".to_vec());
        assert_eq!(seen.note(&tree, key(), ino("lib/a")), None);
        assert_eq!(
            seen.note(&tree, key(), ino("lib/a")),
            None,
            "same directory"
        );
        assert_eq!(seen.note(&tree, (0, b"py".to_vec()), ino("lib/b")), None);
        assert_eq!(seen.note(&tree, key(), ino("lib/b")), None);
        assert_eq!(seen.note(&tree, key(), ino("lib/c/d")), Some(ino("lib")));
        // A fourth directory under the same ancestor starts nothing new.
        assert_eq!(seen.note(&tree, key(), ino("lib/c")), None);
        // One elsewhere widens the ancestor to the root, once.
        assert_eq!(seen.note(&tree, key(), ino("etc")), Some(ROOT_INO));
    }

    #[test]
    fn pieces_hold_the_small_files_of_the_kind_nearest_first_within_budget() {
        let tree = lib();
        let top = tree.resolve(b"lib").unwrap();
        let starts = |at, budget| {
            subtree_pieces(&tree, top, (0, b"pyc"), at, budget)
                .iter()
                .flatten()
                .filter_map(blob_range)
                .map(|r| r.0)
                .collect::<Vec<_>>()
        };
        // Not the .py, not the big one, not outside lib/, not the README; the far file in a
        // request of its own, after the piece nearer the miss.
        assert_eq!(starts(0, 1 << 20), vec![0, 400, 500, 600, 600_000]);
        assert_eq!(starts(600_000, 1 << 20), vec![600_000, 0, 400, 500, 600]);
        let pieces = subtree_pieces(&tree, top, (0, b"pyc"), 0, 1 << 20);
        assert_eq!(pieces.len(), 2);
        // Nearest to 600 first: the budget of three files leaves out the farthest ones.
        assert_eq!(starts(600, 300), vec![400, 500, 600]);
        assert_eq!(extension(b".bashrc"), None);
        assert_eq!(extension(b"libc.so.6"), Some(&b"6"[..]));
    }
}
