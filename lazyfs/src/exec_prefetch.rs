//! Exec-aware prefetch. When the kernel opens a regular file to execute it (the open flags
//! carry `__FMODE_EXEC`, which FUSE passes through, also beneath overlayfs), the program's
//! loader and shared libraries will be read next, one cold miss after another. Instead, their
//! ELF headers are read at once ([`crate::elf_deps`]) and every file they name is fetched
//! whole, in parallel, while the kernel is still setting up the process. The open never waits
//! for any of this. The program itself (up to [`MAX_EXEC_WHOLE_BYTES`]) is fetched whole too,
//! and a shared object opened without exec (an interpreter's `dlopen` of an extension module)
//! has its libraries fetched the same way.
//!
//! Library names are looked up as the loader does (`DT_RUNPATH`/`DT_RPATH`, then the
//! standard directories), following symlinks, in the merged tree of a per-container mount or,
//! in the layer store, in every layer's `<hex>/diff/` directory (the store does not know
//! which layers a container stacks; a wrong extra candidate costs one prefetch).

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use object::read::ReadCache;
use strata_storage::lazy::{ChunkFetcher, LayerSource};
use tracing::debug;

use crate::elf_deps::{Needs, needs};
use crate::ready::Ready;
use crate::tree::{Node, ROOT_INO, Tree};

/// The kernel's `__FMODE_EXEC` open flag (include/linux/fs.h), set by execve and uselib.
pub const FMODE_EXEC: i32 = 0x20;

/// Where the loader looks after `DT_RUNPATH`/`DT_RPATH` (its cache aside).
const STANDARD_DIRS: [&[u8]; 6] = [
    b"/lib/x86_64-linux-gnu",
    b"/usr/lib/x86_64-linux-gnu",
    b"/lib64",
    b"/usr/lib64",
    b"/lib",
    b"/usr/lib",
];

/// Paths already looked up.
type Paths = HashSet<Vec<u8>>;

/// Programs up to this size are fetched whole when opened for exec.
const MAX_EXEC_WHOLE_BYTES: u64 = 16 << 20;
/// Files prefetched for one exec at most (the program's libraries and theirs).
const MAX_FILES: usize = 128;
/// Symlinks followed in one lookup at most.
const MAX_LINKS: u32 = 16;

/// Inodes of executables already looked at by this mount: each is prefetched for once.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Files whose needs were looked at (an exec's program, a dlopen'd object).
    opened: Mutex<HashSet<u64>>,
    /// Files fetched by any prefetch of this mount: each is fetched once.
    fetched: Arc<Mutex<HashSet<u64>>>,
}

impl Seen {
    fn first(&self, ino: u64) -> bool {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino)
    }
}

/// Starts prefetching what executable `ino`, opened with `flags`, needs; returns at once.
pub(crate) fn on_open(
    seen: &Seen,
    ready: &Arc<Ready>,
    fetcher: &Arc<ChunkFetcher>,
    rt: &tokio::runtime::Handle,
    (ino, flags): (u64, i32),
) {
    let Some(node) = ready.tree.get(ino).filter(|n| n.content.is_some()) else {
        return;
    };
    let exec = flags & FMODE_EXEC != 0;
    if !(exec || is_shared_object(&ready.tree.path_of(ino))) || !seen.first(ino) {
        return;
    }
    let mut walk = Prefetch::new(ready.clone(), fetcher.clone(), rt.clone());
    walk.fetched = seen.fetched.clone();
    let walk = Arc::new(walk);
    walk.queue(ino);
    // The kernel maps the program and faults its pages in, one readahead window per miss: it
    // is fetched whole, but only once its headers have named its loader and libraries, so
    // that the few chunks the headers take are not held up behind megabytes of program text.
    let whole = exec && node.size <= MAX_EXEC_WHOLE_BYTES;
    if whole {
        walk.fetch_headers(ino);
    }
    rt.spawn_blocking(move || {
        walk.walk(ino);
        if whole {
            walk.fetch(ino, "exec");
        }
    });
}

/// Whether `path` names a shared object (`x.so`, `x.so.1.2`): opened, it is most likely being
/// loaded (`dlopen` of an interpreter's extension module), and its libraries come next.
fn is_shared_object(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".so") || name.contains(".so.")
}

/// A file's bytes through the chunk cache, fetched where read (for the ELF parser).
struct FileReader<'a> {
    fetcher: &'a ChunkFetcher,
    layer: &'a LayerSource,
    node: &'a Node,
    rt: &'a tokio::runtime::Handle,
    pos: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.node.size.saturating_sub(self.pos);
        let n = strata_oci::usize_of(left.min(buf.len() as u64));
        let Some(content) = &self.node.content else {
            return Ok(0);
        };
        let buf = &mut buf[..n];
        let got = self.rt.block_on(self.fetcher.read_into(
            self.layer,
            &content.chunks,
            self.pos,
            buf,
            n as u64,
        ));
        let k = got.map_err(std::io::Error::other)?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Seek for FileReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.node.size.saturating_add_signed(d),
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        };
        Ok(self.pos)
    }
}

/// One exec's prefetch: the tree's roots to look names up in, and what was already queued.
/// Each file found is fetched and walked for its own needs on its own blocking thread, so a
/// slow library never holds up its siblings.
struct Prefetch {
    ready: Arc<Ready>,
    fetcher: Arc<ChunkFetcher>,
    rt: tokio::runtime::Handle,
    /// `[ROOT_INO]` for a merged tree; every layer's `diff` directory in the layer store.
    roots: Vec<u64>,
    queued: Mutex<HashSet<u64>>,
    /// Files fetched by this mount's prefetches ([`Seen`]'s).
    fetched: Arc<Mutex<HashSet<u64>>>,
}

impl Prefetch {
    fn new(ready: Arc<Ready>, fetcher: Arc<ChunkFetcher>, rt: tokio::runtime::Handle) -> Self {
        let tree = &ready.tree;
        let root = tree.get(ROOT_INO);
        let diffs: Vec<u64> = root
            .map(|r| r.children.iter().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|(name, _)| name.len() == 64 && name.iter().all(u8::is_ascii_hexdigit))
            .filter_map(|(_, dir)| tree.lookup(dir, b"diff"))
            .collect();
        let is_store = root.is_some_and(|r| r.children.len() == diffs.len()) && !diffs.is_empty();
        Self {
            roots: if is_store { diffs } else { vec![ROOT_INO] },
            ready,
            fetcher,
            rt,
            queued: Mutex::new(HashSet::new()),
            fetched: Arc::default(),
        }
    }

    /// The path of `ino` as the container sees it (below its layer's `diff` in the store).
    fn container_path(&self, ino: u64) -> Vec<u8> {
        let full = self.ready.tree.path_of(ino);
        let inner = match self.roots.as_slice() {
            [ROOT_INO] => full.as_str(),
            _ => full.split_once("/diff/").map_or(full.as_str(), |(_, p)| p),
        };
        format!("/{inner}").into_bytes()
    }

    /// Whether `ino` is new to this prefetch (and within its bound); notes it.
    fn queue(&self, ino: u64) -> bool {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        q.len() < MAX_FILES && q.insert(ino)
    }

    /// Prefetches what ELF file `ino` needs, then (each on its own thread) what those need.
    fn walk(self: &Arc<Self>, ino: u64) {
        let Some(n) = self.needs_of(ino) else {
            return;
        };
        let path = self.container_path(ino);
        let why = String::from_utf8_lossy(&path).into_owned();
        for dep in self.candidates(&n, &path) {
            if !self.queue(dep) {
                continue;
            }
            self.fetch(dep, &why);
            let me = self.clone();
            self.rt.spawn_blocking(move || me.walk(dep));
        }
    }

    /// The ELF needs of file `ino`, reading its headers through the cache.
    fn needs_of(&self, ino: u64) -> Option<Needs> {
        let node = self.ready.tree.get(ino)?;
        if let Some(inline) = &node.inline {
            return needs(&inline[..]);
        }
        let layer = self.ready.layers.get(node.content.as_ref()?.layer)?;
        let reader = FileReader {
            fetcher: &self.fetcher,
            layer,
            node,
            rt: &self.rt,
            pos: 0,
        };
        needs(&ReadCache::new(reader))
    }

    /// Inodes of the files `n` names, for a file at container path `path`.
    fn candidates(&self, n: &Needs, path: &[u8]) -> Vec<u64> {
        let origin = path.rsplit_once_slash();
        let mut found = Vec::new();
        if let Some(interp) = &n.interp {
            found.extend(self.lookup(interp, 0));
        }
        for lib in &n.needed {
            if lib.contains(&b'/') {
                found.extend(self.lookup(lib, 0));
                continue;
            }
            let dirs = n.search.iter().map(|d| expand_origin(d, origin));
            let dirs = dirs.chain(STANDARD_DIRS.iter().map(|d| d.to_vec()));
            // The first directory that has it is where the loader finds it.
            if let Some(hits) = dirs
                .map(|d| self.lookup(&[&d[..], b"/", lib].concat(), 0))
                .find(|hits| !hits.is_empty())
            {
                found.extend(hits);
            }
        }
        found
    }

    /// Regular files with content at container path `path` in any root, symlinks followed.
    fn lookup(&self, path: &[u8], links: u32) -> Vec<u64> {
        let mut out = Vec::new();
        self.lookup_once(path, links, &mut HashSet::new(), &mut out);
        out
    }

    /// [`Self::lookup`] of a path not yet in `tried`: every path is looked up once, so the
    /// same symlink in many layers does not multiply the work.
    fn lookup_once(&self, path: &[u8], links: u32, tried: &mut Paths, out: &mut Vec<u64>) {
        let path = normalize(path);
        if !tried.insert(path.clone()) {
            return;
        }
        for &root in &self.roots {
            self.lookup_in(root, &path, (links, &mut *tried), out);
        }
    }

    fn lookup_in(
        &self,
        root: u64,
        path: &[u8],
        (links, tried): (u32, &mut Paths),
        out: &mut Vec<u64>,
    ) {
        let tree: &Tree = &self.ready.tree;
        let comps: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let mut ino = root;
        for (i, comp) in comps.iter().enumerate() {
            let Some(next) = tree.lookup(ino, comp) else {
                return;
            };
            let Some(n) = tree.get(next) else { return };
            if n.kind == strata_formats::index::Kind::Symlink {
                if links >= MAX_LINKS {
                    return;
                }
                let base = if n.link.starts_with(b"/") {
                    Vec::new()
                } else {
                    [b"/", &comps[..i].join(&b'/')[..], b"/"].concat()
                };
                let rest = comps[i + 1..].join(&b'/');
                let target = [&base[..], &n.link, b"/", &rest].concat();
                self.lookup_once(&target, links + 1, tried, out);
                return;
            }
            ino = next;
        }
        if tree
            .get(ino)
            .is_some_and(|n| n.content.is_some() || n.inline.is_some())
        {
            out.push(ino);
        }
    }

    /// Starts fetching the first chunk of file `ino` (its ELF headers), in a request of its own.
    fn fetch_headers(&self, ino: u64) {
        let Some(content) = self.ready.tree.get(ino).and_then(|n| n.content.clone()) else {
            return;
        };
        let Some(layer) = self.ready.layers.get(content.layer).cloned() else {
            return;
        };
        let fetcher = self.fetcher.clone();
        self.rt.spawn(async move {
            let first = &content.chunks[..content.chunks.len().min(1)];
            if let Err(e) = fetcher.ensure(&layer, first).await {
                debug!(error = %e, "exec prefetch failed; reads will retry");
            }
        });
    }

    /// Fetches all of file `ino` (for the exec of `why`), in the background: its first chunk
    /// (the ELF headers, which the loader reads first and [`Self::walk`] parses) in a request
    /// of its own, the rest in parallel with it.
    fn fetch(&self, ino: u64, why: &str) {
        let first = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino);
        if !first {
            return;
        }
        let Some(content) = self.ready.tree.get(ino).and_then(|n| n.content.clone()) else {
            return;
        };
        let Some(layer) = self.ready.layers.get(content.layer).cloned() else {
            return;
        };
        if let Some(t) = strata_storage::trace::get() {
            t.prefetch(&layer.blob, &self.ready.tree.path_of(ino), why);
        }
        let split = content.chunks.len().min(1);
        for part in [0..split, split..content.chunks.len()] {
            if part.is_empty() {
                continue;
            }
            let (fetcher, layer, chunks) = (self.fetcher.clone(), layer.clone(), content.clone());
            self.rt.spawn(async move {
                if let Err(e) = fetcher.ensure(&layer, &chunks.chunks[part]).await {
                    debug!(error = %e, "exec prefetch failed; reads will retry");
                }
            });
        }
    }
}

/// `path` with `.` and `..` resolved lexically (layers of the store are separate trees, so
/// `..` cannot be walked back through one of them).
fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    [b"/", &parts.join(&b'/')[..]].concat()
}

/// `dir` with `$ORIGIN` (or `${ORIGIN}`) replaced by `origin`.
fn expand_origin(dir: &[u8], origin: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(dir);
    let o = String::from_utf8_lossy(origin);
    s.replace("${ORIGIN}", &o)
        .replace("$ORIGIN", &o)
        .into_bytes()
}

trait Dirname {
    fn rsplit_once_slash(&self) -> &[u8];
}

impl Dirname for [u8] {
    /// The directory part of a path (`/` for a file in the root).
    fn rsplit_once_slash(&self) -> &[u8] {
        match self.iter().rposition(|b| *b == b'/') {
            Some(0) | None => b"/",
            Some(i) => &self[..i],
        }
    }
}

#[cfg(test)]
#[path = "exec_prefetch_tests.rs"]
mod tests;
