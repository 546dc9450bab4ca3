//! Recording a prefetch profile: which chunks of which files the kernel asked for, in the order
//! of first reads, turned at the end into a [`Profile`] of paths and blob ranges.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use strata_formats::index::ChunkLoc;
use strata_formats::profile::{Profile, ProfileFile};
use strata_storage::store::LayerFormat;

use crate::ready::ReadyCell;

/// First reads of chunks.
#[derive(Debug, Default)]
pub struct Recorder {
    reads: Mutex<Reads>,
}

/// `(inode, chunk index)` pairs in the order of their first read.
#[derive(Debug, Default)]
struct Reads {
    order: Vec<(u64, usize)>,
    seen: HashSet<(u64, usize)>,
}

impl Recorder {
    /// Notes a read of chunks `first..=last` of `ino`.
    pub(crate) fn note(&self, ino: u64, first: usize, last: usize) {
        let Ok(mut g) = self.reads.lock() else {
            return;
        };
        for i in first..=last {
            if g.seen.insert((ino, i)) {
                g.order.push((ino, i));
            }
        }
    }
}

/// A recording in progress, kept by whoever will want the profile after the mount is gone.
#[derive(Debug, Clone)]
pub struct Recording {
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) ready: ReadyCell,
}

impl Recording {
    /// The profile of what was read so far: files in the order of their first read, chunks in
    /// the order they were first read. Only chunks of zstd:chunked layers can be fetched by
    /// blob range, so only those are kept.
    pub fn profile(&self) -> Profile {
        let Some(Ok(ready)) = self.ready.get() else {
            return Profile::default();
        };
        let Ok(g) = self.recorder.reads.lock() else {
            return Profile::default();
        };
        let mut files: Vec<ProfileFile> = Vec::new();
        let mut index_of: HashMap<u64, usize> = HashMap::new();
        for &(ino, i) in &g.order {
            let Some(content) = ready.tree.get(ino).and_then(|n| n.content.as_ref()) else {
                continue;
            };
            let fetchable = ready
                .layers
                .get(content.layer)
                .is_some_and(|l| l.format == LayerFormat::ZstdChunked);
            let Some(c) = content.chunks.get(i).filter(|_| fetchable) else {
                continue;
            };
            let (ChunkLoc::Zstd { start, end }, Some(digest)) = (c.loc, c.digest) else {
                continue;
            };
            let pos = *index_of.entry(ino).or_insert_with(|| {
                files.push(ProfileFile {
                    path: ready.tree.path_of(ino),
                    layer: content.layer,
                    chunks: Vec::new(),
                });
                files.len() - 1
            });
            files[pos].chunks.push((start, end, c.len, digest));
        }
        Profile { files }
    }
}
