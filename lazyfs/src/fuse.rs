//! The read-only FUSE filesystem over the merged tree. Metadata (lookup, getattr, readdir,
//! readlink, xattrs) is answered from memory with no network request, attributes computed once
//! per inode. `read` is served from the chunk cache on the FUSE thread when every chunk it
//! needs is cached; otherwise the reply is handed to a tokio task, so a slow fetch never blocks
//! other requests. How much more than asked is fetched is [`crate::readahead`]'s decision.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use strata_formats::index::{Chunk, Kind};
use strata_storage::lazy::{ChunkFetcher, LayerSource};
use tracing::{debug, error, warn};

use crate::failure::LastFailure;
use crate::open::{Mode, OpenModes, passthrough_file};
use crate::open_journal::{OpenJournal, OpenedAs};
use crate::readahead::{self, Sequential};
use crate::ready::{Ready, ReadyCell, ReadyState};
use crate::record::{Recorder, Recording};
use crate::seek::seek_data_hole;
use crate::tree::{Content, Tree};

pub use crate::ready::{Readiness, ReadySetter};

/// Lower content never changes: the kernel may cache entries and attributes for long.
const TTL: Duration = Duration::from_secs(3600);

/// The read-only lazy filesystem of one image.
#[derive(Debug)]
pub struct LazyFs {
    /// The last read that failed.
    last_failure: Arc<LastFailure>,
    ready: ReadyCell,
    fetcher: Arc<ChunkFetcher>,
    rt: tokio::runtime::Handle,
    /// Recognises sequential reads, to fetch ahead of them.
    sequential: Sequential,
    /// The kernel serves complete files from a local backing file.
    passthrough: bool,
    /// How each inode is open (FUSE reads or passthrough).
    open_modes: OpenModes,
    /// Notes first reads of chunks, to make a prefetch profile.
    recorder: Option<Arc<Recorder>>,
    /// The image's prefetch profile is being fetched for this mount.
    replaying: bool,
    /// Executables whose libraries were prefetched ([`crate::exec_prefetch`]).
    exec_seen: crate::exec_prefetch::Seen,
    dir_seen: crate::dir_prefetch::Seen,
    subtree_seen: crate::subtree_prefetch::Seen,
}

/// One directory entry: `(offset of the next entry, inode, attributes, name)`.
type DirEntry<'a> = (u64, u64, &'a FileAttr, &'a [u8]);

/// File handle of opens served through FUSE reads; passthrough opens get 1.
const FH_FUSE: u64 = 0;
const FH_PASSTHROUGH: u64 = 1;

impl LazyFs {
    /// A filesystem over `tree`, whose content indexes refer to `layers`; fetches run on `rt`.
    pub fn new(
        tree: Tree,
        layers: Vec<LayerSource>,
        fetcher: Arc<ChunkFetcher>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let (fs, setter) = Self::pending(fetcher, rt);
        setter.set(Ok((tree, layers)));
        fs
    }

    /// A handle that tells whether this filesystem's tree could be built.
    pub fn readiness(&self) -> Readiness {
        Readiness(self.ready.clone())
    }

    /// A filesystem that can be mounted before its tree is known (layers without a TOC are
    /// still streaming): every operation waits until the [`ReadySetter`] is called.
    pub fn pending(fetcher: Arc<ChunkFetcher>, rt: tokio::runtime::Handle) -> (Self, ReadySetter) {
        let cell: ReadyCell = Arc::new(ReadyState::default());
        (
            Self {
                last_failure: Arc::default(),
                ready: cell.clone(),
                fetcher,
                rt,
                sequential: Sequential::default(),
                passthrough: false,
                open_modes: OpenModes::default(),
                recorder: None,
                replaying: false,
                exec_seen: Default::default(),
                dir_seen: Default::default(),
                subtree_seen: Default::default(),
            },
            ReadySetter(cell),
        )
    }

    /// Notes how inodes are open in `journal` (for a successor), starting from what a
    /// predecessor had open (see [`crate::takeover`]).
    pub fn with_open_journal(
        mut self,
        journal: OpenJournal,
        predecessor: std::collections::HashMap<u64, OpenedAs>,
    ) -> Self {
        self.open_modes = OpenModes::journaled(journal, predecessor);
        self
    }

    /// The last read that failed (shared: it stays readable once the filesystem is mounted).
    pub fn last_failure(&self) -> Arc<LastFailure> {
        self.last_failure.clone()
    }

    /// Serves complete files by kernel passthrough (if the kernel can).
    pub fn with_passthrough(mut self, on: bool) -> Self {
        self.passthrough = on;
        self
    }

    /// Records what is read (and serves everything through FUSE reads, so that nothing is
    /// missed by passthrough); the [`Recording`] makes the profile.
    pub fn recording(mut self) -> (Self, Recording) {
        let recorder = Arc::new(Recorder::default());
        self.recorder = Some(recorder.clone());
        self.passthrough = false;
        let rec = Recording {
            recorder,
            ready: self.ready.clone(),
        };
        (self, rec)
    }

    /// Marks the mount as replaying a prefetch profile (see [`Self::read_ahead_kb`]).
    pub fn replaying(mut self, on: bool) -> Self {
        self.replaying = on;
        self
    }

    /// The kernel readahead this mount wants ([`readahead::kernel_kb`]).
    pub fn read_ahead_kb(&self) -> u32 {
        readahead::kernel_kb(self.recorder.is_some() || self.replaying)
    }

    fn ready(&self) -> Result<Arc<Ready>, Errno> {
        self.ready.wait().map_err(|_| Errno::EIO)
    }

    /// The readahead of a read miss at `offset..offset+len`: what lies beyond the chunks the
    /// read touches goes out beside them in requests of their own, so a reader never waits for
    /// bytes it did not ask for (a coalesced request is released as a whole when it ends).
    fn read_ahead_beside(&self, ready: &Arc<Ready>, content: &Content, offset: u64, len: u64) {
        let fetch_len = readahead::miss_fetch_len(len, n_remaining(&content.chunks, offset));
        let own_end = ChunkFetcher::touching(&content.chunks, offset, len)
            .last()
            .map_or(offset + len, |c| c.file_offset + c.len);
        if offset + fetch_len > own_end {
            self.prefetch(ready, content, own_end, offset + fetch_len - own_end);
        }
    }

    /// Keeps `len` bytes of the file from `from` on their way (behind a sequential reader).
    fn prefetch(&self, ready: &Ready, content: &Content, from: u64, len: u64) {
        let ahead = ChunkFetcher::touching(&content.chunks, from, len);
        let Some(probe) = ahead.get(ahead.len() / 2).and_then(|c| c.digest) else {
            return;
        };
        if self.fetcher.cache().contains(&probe) {
            return;
        }
        let Some(layer) = ready.layers.get(content.layer).cloned() else {
            return;
        };
        let (fetcher, chunks) = (self.fetcher.clone(), ahead.to_vec());
        self.rt.spawn(async move {
            if let Err(e) = fetcher.ensure(&layer, &chunks).await {
                debug!(error = %e, "prefetch failed; the read itself will retry");
            }
        });
    }

    /// Notes a read for the profile being recorded, if one is.
    fn record(&self, ino: u64, content: &Content, offset: u64, len: u64) {
        let Some(rec) = &self.recorder else { return };
        let chunks = &content.chunks;
        let first = chunks.partition_point(|c| c.file_offset + c.len <= offset);
        let end = chunks.partition_point(|c| c.file_offset < offset + len);
        if end > first {
            rec.note(ino, first, end - 1);
        }
    }

    /// The tree as it is now, for one operation to use throughout.
    fn snapshot(&self) -> Result<Arc<Ready>, Errno> {
        self.ready()
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.ready()?.attr(ino).copied().ok_or(Errno::ENOENT)
    }

    /// The entries of directory `ino` from position `offset` on (`.` and `..` first), each
    /// with the offset of the one after it; resumed at `offset` directly (no skipping), and
    /// produced as the reply buffer takes them.
    fn dir_entries(
        ready: &Ready,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = DirEntry<'_>>, Errno> {
        let n = match ready.tree.get(ino.0) {
            Some(n) if n.kind == Kind::Dir => n,
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        };
        let dots = [(ino.0, &b"."[..]), (n.parent, &b".."[..])];
        let from = (strata_oci::usize_of(offset)).saturating_sub(dots.len());
        let dots = (strata_oci::usize_of(offset)..dots.len())
            .map(move |i| ((i + 1) as u64, dots[i].0, dots[i].1));
        let children = n
            .children
            .from(from)
            .zip(from + 3..)
            .map(|((name, c), next)| (next as u64, c, name));
        Ok(dots
            .chain(children)
            .filter_map(|(next, c, name)| ready.attr(c).map(|a| (next, c, a, name))))
    }
}

/// Bytes of file content from `offset` to the end of the last chunk.
fn n_remaining(chunks: &[Chunk], offset: u64) -> u64 {
    chunks
        .last()
        .map(|c| (c.file_offset + c.len).saturating_sub(offset))
        .unwrap_or(0)
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_DO_READDIRPLUS,
        ] {
            if config.add_capabilities(cap).is_err() {
                warn!(?cap, "kernel lacks FUSE capability");
            }
        }
        let _ = config.set_max_readahead(readahead::FUSE_MAX_READAHEAD_BYTES);
        // Passthrough for complete files, where wanted; depth 1 lets overlayfs stack on this.
        if self.passthrough
            && (config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .is_err()
                || config.set_max_stack_depth(1).is_err())
        {
            self.passthrough = false;
            warn!("kernel lacks FUSE passthrough; complete files are served through FUSE reads");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ready = match self.ready() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        match ready
            .tree
            .lookup(parent.0, name.as_bytes())
            .and_then(|ino| ready.attr(ino))
        {
            Some(attr) => reply.entry(&TTL, attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        match ready.tree.get(ino.0) {
            Some(n) if n.kind == Kind::Symlink => reply.data(&n.link),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let n = match ready.tree.get(ino.0) {
            Some(n) if n.kind == Kind::Dir => return reply.error(Errno::EISDIR),
            Some(_) if flags.0 & libc::O_ACCMODE != libc::O_RDONLY => {
                return reply.error(Errno::EROFS);
            }
            Some(n) => n,
            None => return reply.error(Errno::ENOENT),
        };
        let exec = (ino.0, flags.0);
        crate::exec_prefetch::on_open(&self.exec_seen, &ready, &self.fetcher, &self.rt, exec);
        let mode = match self.open_modes.join(ino.0) {
            Some(mode) => mode,
            None => {
                // SAFETY: an inherited id was registered on this connection by the server
                // this one took over from and never closed (the open journal notes a close
                // before the id is released); it is wrapped once and then held for good.
                let inherited = self
                    .open_modes
                    .inherited(ino.0, |id| unsafe { reply.wrap_backing(id) });
                // First open: find (or assemble) the backing file holding no lock.
                let mode = inherited.unwrap_or_else(|| {
                    self.passthrough
                        .then(|| passthrough_file(self.fetcher.cache(), n))
                        .flatten()
                        .and_then(|file| {
                            reply
                                .open_backing(&file)
                                .map_err(|e| debug!(error = %e, "passthrough refused"))
                                .ok()
                        })
                        .map_or(Mode::Fuse, |b| {
                            let id = b.into_raw();
                            // SAFETY: `id` was just registered on this connection by
                            // `open_backing` and given up by `into_raw`: this takes it back.
                            Mode::Passthrough(Arc::new(unsafe { reply.wrap_backing(id) }), id)
                        })
                });
                self.open_modes.open(ino.0, mode)
            }
        };
        match mode {
            Mode::Fuse => reply.opened(FileHandle(FH_FUSE), FopenFlags::FOPEN_KEEP_CACHE),
            Mode::Passthrough(id, _) => {
                reply.opened_passthrough(FileHandle(FH_PASSTHROUGH), FopenFlags::empty(), &id)
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.open_modes.release(ino.0);
        reply.ok();
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let Some(n) = ready.tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if offset >= n.size {
            return reply.data(&[]);
        }
        let len = (size as u64).min(n.size - offset);
        if let Some(inline) = &n.inline {
            let from = strata_oci::usize_of(offset).min(inline.len());
            let to = from
                .saturating_add(strata_oci::usize_of(len))
                .min(inline.len());
            return reply.data(&inline[from..to]);
        }
        let mut buf = vec![0u8; strata_oci::usize_of(len)];
        let Some(content) = n.content.clone() else {
            return reply.data(&buf);
        };
        self.record(ino.0, &content, offset, len);
        if let Some((from, ahead)) = self.sequential.on_read(ino.0, offset, len) {
            self.prefetch(&ready, &content, from, ahead);
        }
        match self
            .fetcher
            .read_cached_into(&content.chunks, offset, &mut buf)
        {
            Ok(Some(k)) => return reply.data(&buf[..k]),
            Ok(None) => {}
            Err(e) => {
                error!(ino = ino.0, error = %e, "cache read failed");
                self.last_failure.note(strata_oci::causes::with_causes(&e));
                return reply.error(Errno::EIO);
            }
        }
        // From the snapshot this read already holds: no second lock of the tree.
        let Some(layer) = ready.layers.get(content.layer).cloned() else {
            return reply.error(Errno::EIO);
        };
        if !self.replaying && self.recorder.is_none() {
            crate::dir_prefetch::on_miss(&self.dir_seen, &ready, &self.fetcher, &self.rt, ino.0);
            crate::subtree_prefetch::on_miss(
                &self.subtree_seen,
                &ready,
                &self.fetcher,
                &self.rt,
                ino.0,
            );
        }
        self.read_ahead_beside(&ready, &content, offset, len);
        let (fetcher, failures) = (self.fetcher.clone(), self.last_failure.clone());
        // One task: the fetch (bounded by the read deadline) raced against the reader being
        // killed, which is answered at once while the fetch goes on for whoever else waits.
        let fetch = async move {
            let path = || ready.tree.path_of(ino.0);
            let at = (offset, &mut buf[..]);
            let r = fetcher
                .read_into_traced(&layer, &content.chunks, at, len, path)
                .await;
            (buf, r)
        };
        let answer = crate::reader_gone::answer(fetch, req.pid(), reply, (ino.0, offset), failures);
        self.rt.spawn(answer);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let entries = match Self::dir_entries(&ready, ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, child, attr, name) in entries {
            if reply.add(INodeNo(child), next, attr.kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    /// Entries with their attributes, so that a walk (`find`, `ls -l`) needs no lookup per
    /// entry.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let entries = match Self::dir_entries(&ready, ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, child, attr, name) in entries {
            if reply.add(
                INodeNo(child),
                next,
                OsStr::from_bytes(name),
                &TTL,
                attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let Some(n) = ready.tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match n
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
        {
            None => reply.error(Errno::NO_XATTR),
            Some((_, v)) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
            Some((_, v)) if (size as usize) < v.len() => reply.error(Errno::ERANGE),
            Some((_, v)) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let Some(n) = ready.tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let mut buf = Vec::new();
        for (k, _) in &n.xattrs {
            buf.extend_from_slice(k);
            buf.push(0);
        }
        if size == 0 {
            reply.size(u32::try_from(buf.len()).unwrap_or(u32::MAX))
        } else if (size as usize) < buf.len() {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&buf)
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let ready = match self.snapshot() {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let Some(n) = ready.tree.get(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let chunks: &[Chunk] = n.content.as_ref().map(|c| &c.chunks[..]).unwrap_or(&[]);
        match seek_data_hole(chunks, n.size, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No inode flags (FS_IOC_GETFLAGS, which overlayfs asks for on copy-up) or other ioctls.
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.attr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.ready().map(|r| r.tree.len() as u64).unwrap_or(0);
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }
}

#[cfg(test)]
#[path = "fuse_tests.rs"]
mod tests;
