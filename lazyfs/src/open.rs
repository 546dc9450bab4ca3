//! How each inode is open. The kernel refuses (EIO) a passthrough open of an inode that is open
//! through FUSE reads, and the reverse, so an inode stays in one mode while it is open. The
//! table's lock guards only the map: backing files are assembled, and replies sent, outside it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fuser::BackingId;
use strata_formats::index::{ChunkLoc, Kind};
use strata_storage::cache::ChunkCache;
use tracing::debug;

use crate::open_journal::{OpenJournal, OpenedAs};
use crate::tree::Node;

/// Smaller complete files are served from the page cache through FUSE reads; larger ones by
/// kernel passthrough to an assembled local copy.
pub const PASSTHROUGH_MIN_BYTES: u64 = 1 << 20;

/// How an inode is open.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Read through FUSE.
    Fuse,
    /// Passed through to a backing file (closed when the last handle is released), with the
    /// backing id's number.
    Passthrough(Arc<BackingId>, u32),
}

/// How a predecessor (see [`crate::takeover`]) had an inode open: it stays that way for good,
/// since how many of its handles are still open is not known.
#[derive(Debug)]
enum Inherited {
    Fuse,
    /// A backing id not yet used by this server.
    Backing(u32),
    /// A backing id in use, held for good.
    Held(Arc<BackingId>, u32),
}

/// The open handles of every open inode: its mode and how many handles.
#[derive(Debug, Default)]
pub(crate) struct OpenModes {
    modes: Mutex<HashMap<u64, (Mode, u32)>>,
    /// Where modes are noted for a successor, if one may take over.
    journal: Option<OpenJournal>,
    inherited: Mutex<HashMap<u64, Inherited>>,
}

impl OpenModes {
    /// Modes noted in `journal`, starting with what a predecessor had open.
    pub(crate) fn journaled(journal: OpenJournal, predecessor: HashMap<u64, OpenedAs>) -> Self {
        let inherited = predecessor
            .into_iter()
            .map(|(ino, how)| match how {
                OpenedAs::Fuse => (ino, Inherited::Fuse),
                OpenedAs::Backing(id) => (ino, Inherited::Backing(id)),
            })
            .collect();
        Self {
            modes: Mutex::default(),
            journal: Some(journal),
            inherited: Mutex::new(inherited),
        }
    }

    /// The mode a predecessor left `ino` open in, if it did; `wrap` makes its backing id
    /// usable (once).
    pub(crate) fn inherited(&self, ino: u64, wrap: impl FnOnce(u32) -> BackingId) -> Option<Mode> {
        let mut inh = self.inherited.lock().unwrap_or_else(|p| p.into_inner());
        let entry = inh.get_mut(&ino)?;
        Some(match entry {
            Inherited::Fuse => Mode::Fuse,
            Inherited::Backing(id) => {
                let id = *id;
                let held = Arc::new(wrap(id));
                *entry = Inherited::Held(held.clone(), id);
                Mode::Passthrough(held, id)
            }
            Inherited::Held(b, id) => Mode::Passthrough(b.clone(), *id),
        })
    }

    fn is_inherited(&self, ino: u64) -> bool {
        self.inherited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&ino)
    }

    /// Adds a handle to `ino` if it is open, returning its mode.
    pub(crate) fn join(&self, ino: u64) -> Option<Mode> {
        let mut modes = self.modes.lock().unwrap_or_else(|p| p.into_inner());
        let (mode, count) = modes.get_mut(&ino)?;
        *count += 1;
        Some(mode.clone())
    }

    /// Opens `ino` in `mode` (passthrough with a backing id, or FUSE); if another open came
    /// first meanwhile, joins that one's mode instead (dropping `mode`'s backing id).
    pub(crate) fn open(&self, ino: u64, mode: Mode) -> Mode {
        let inherited = self.is_inherited(ino);
        let mut modes = self.modes.lock().unwrap_or_else(|p| p.into_inner());
        let (mode, count) = modes.entry(ino).or_insert_with(|| {
            if let Some(j) = self.journal.as_ref().filter(|_| !inherited) {
                j.note(ino, Some(opened_as(&mode)));
            }
            (mode, 0)
        });
        *count += 1;
        mode.clone()
    }

    /// Removes a handle of `ino`; the last one forgets the mode (and its backing id).
    pub(crate) fn release(&self, ino: u64) {
        let inherited = self.is_inherited(ino);
        let mut modes = self.modes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, count)) = modes.get_mut(&ino) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Noted before the backing id is released, so that the journal never names
                // an id the kernel may give to another file.
                if let Some(j) = self.journal.as_ref().filter(|_| !inherited) {
                    j.note(ino, None);
                }
                modes.remove(&ino);
            }
        }
    }
}

fn opened_as(mode: &Mode) -> OpenedAs {
    match mode {
        Mode::Fuse => OpenedAs::Fuse,
        Mode::Passthrough(_, id) => OpenedAs::Backing(*id),
    }
}

/// A complete local copy of a regular file whose chunks are all cached (files of at least
/// [`PASSTHROUGH_MIN_BYTES`]), for the kernel to read directly; assembled on first use.
pub(crate) fn passthrough_file(cache: &ChunkCache, n: &Node) -> Option<std::fs::File> {
    if n.kind != Kind::Reg || n.size < PASSTHROUGH_MIN_BYTES {
        return None;
    }
    let content = n.content.as_ref()?;
    let assembled = cache.assembled_path(&content.chunks);
    if let Ok(f) = std::fs::File::open(&assembled) {
        return Some(f);
    }
    // Files fill from the front: a missing last chunk ends the check after one stat.
    let cached = |c: &strata_formats::index::Chunk| {
        c.loc == ChunkLoc::Zeros || c.digest.is_some_and(|d| cache.contains(&d))
    };
    if !content.chunks.last().is_some_and(cached) || !content.chunks.iter().all(cached) {
        return None;
    }
    match cache.assemble(&content.chunks, n.size) {
        Ok(Some(path)) => std::fs::File::open(path).ok(),
        Ok(None) => None,
        Err(e) => {
            debug!(error = %e, "assembling a file for passthrough failed");
            None
        }
    }
}
