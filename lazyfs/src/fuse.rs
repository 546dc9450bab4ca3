//! The read-only FUSE filesystem over the merged tree. Metadata (lookup, getattr, readdir,
//! readlink, xattrs) is answered from memory with no network request. `read` is served from the
//! chunk cache on the FUSE thread when every chunk it needs is cached; otherwise the reply is
//! handed to a tokio task, so a slow fetch never blocks other requests.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use strata_formats::index::Kind;
use strata_storage::lazy::{ChunkFetcher, LayerSource};
use tracing::{debug, error, warn};

use crate::mount::{PROFILE_READ_AHEAD_KB, READ_AHEAD_KB};
use crate::record::{Recorder, Recording};
use crate::tree::{Content, Node, Tree};

/// Lower content never changes: the kernel may cache entries and attributes for long.
const TTL: Duration = Duration::from_secs(3600);
/// Smaller complete files are served from the page cache through FUSE reads; larger ones by
/// kernel passthrough to an assembled local copy.
const PASSTHROUGH_MIN_BYTES: u64 = 1 << 20;
/// How far ahead a sequential reader's next bytes are fetched.
const SEQUENTIAL_WINDOW: u64 = 8 << 20;

/// What the filesystem serves once its layers are indexed.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) tree: Tree,
    pub(crate) layers: Vec<LayerSource>,
}

pub(crate) type ReadyCell = Arc<OnceLock<Result<Ready, String>>>;

/// The read-only lazy filesystem of one image.
#[derive(Debug)]
pub struct LazyFs {
    ready: ReadyCell,
    fetcher: Arc<ChunkFetcher>,
    rt: tokio::runtime::Handle,
    /// End of the last read of each file, to recognize sequential reads.
    last_read: Mutex<HashMap<u64, u64>>,
    /// The kernel serves complete files from a local backing file.
    passthrough: bool,
    /// How each inode is open: the kernel refuses (EIO) a passthrough open of an inode that is
    /// open through FUSE reads, and the reverse, so an inode stays in one mode while open.
    open_modes: Mutex<HashMap<u64, OpenMode>>,
    /// Notes first reads of chunks, to make a prefetch profile.
    recorder: Option<Arc<Recorder>>,
    /// The image's prefetch profile is being fetched for this mount.
    replaying: bool,
}

/// The open handles of one inode.
#[derive(Debug)]
enum OpenMode {
    /// Read through FUSE; the number of handles.
    Fuse(u32),
    /// Passed through to a backing file (closed when the last handle is released).
    Passthrough(u32, fuser::BackingId),
}

/// One directory entry: `(offset of the next entry, inode, node, name)`.
type DirEntry<'a> = (u64, u64, &'a Node, &'a [u8]);

/// File handle of opens served through FUSE reads; passthrough opens get 1.
const FH_FUSE: u64 = 0;
const FH_PASSTHROUGH: u64 = 1;

/// Whether a [`LazyFs::pending`] filesystem's tree could be built, for callers that must report
/// why an image cannot be used rather than the EIO every operation then gets.
#[derive(Debug, Clone)]
pub struct Readiness(ReadyCell);

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

/// Completes a [`LazyFs::pending`] filesystem.
#[derive(Debug)]
pub struct ReadySetter(ReadyCell);

impl ReadySetter {
    /// Makes the tree visible (or makes every operation fail with EIO, logging `Err` once).
    pub fn set(self, result: Result<(Tree, Vec<LayerSource>), String>) {
        if let Err(e) = &result {
            error!(error = %e, "image could not be prepared; every operation fails with EIO");
        }
        let _ = self
            .0
            .set(result.map(|(tree, layers)| Ready { tree, layers }));
    }
}

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
        let cell: ReadyCell = Arc::new(OnceLock::new());
        (
            Self {
                ready: cell.clone(),
                fetcher,
                rt,
                last_read: Mutex::new(HashMap::new()),
                passthrough: false,
                open_modes: Mutex::new(HashMap::new()),
                recorder: None,
                replaying: false,
            },
            ReadySetter(cell),
        )
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

    /// The kernel readahead this mount wants: small while a profile is recorded or replayed
    /// (the profile holds what the process reads, not what the kernel read ahead, and a replay
    /// must not read ahead past it), large otherwise.
    pub fn read_ahead_kb(&self) -> u32 {
        if self.recorder.is_some() || self.replaying {
            PROFILE_READ_AHEAD_KB
        } else {
            READ_AHEAD_KB
        }
    }

    fn ready(&self) -> Result<&Ready, Errno> {
        self.ready.wait().as_ref().map_err(|_| Errno::EIO)
    }

    /// Records a read; true when it continues the previous read of the same file.
    fn is_sequential(&self, ino: u64, offset: u64, len: u64) -> bool {
        let Ok(mut last) = self.last_read.lock() else {
            return false;
        };
        let seq = offset > 0 && last.get(&ino) == Some(&offset);
        if last.len() > 4096 {
            last.clear();
        }
        last.insert(ino, offset + len);
        seq
    }

    /// During a sequential read, keeps the next [`SEQUENTIAL_WINDOW`] bytes of the file on
    /// their way, so the network never waits for the reader.
    fn prefetch_after(&self, content: &Content, from: u64) {
        let ahead = ChunkFetcher::touching(&content.chunks, from, SEQUENTIAL_WINDOW);
        let Some(probe) = ahead.get(ahead.len() / 2).and_then(|c| c.digest) else {
            return;
        };
        if self.fetcher.cache().contains(&probe) {
            return;
        }
        let Some(layer) = self.layer_of(content) else {
            return;
        };
        let (fetcher, chunks) = (self.fetcher.clone(), ahead.to_vec());
        self.rt.spawn(async move {
            if let Err(e) = fetcher.ensure(&layer, &chunks).await {
                debug!(error = %e, "prefetch failed; the read itself will retry");
            }
        });
    }

    /// A complete local copy of a regular file whose chunks are all cached (files of at least
    /// [`PASSTHROUGH_MIN_BYTES`]), for the kernel to read directly.
    fn passthrough_file(&self, n: &Node) -> Option<std::fs::File> {
        if !self.passthrough || n.kind != Kind::Reg || n.size < PASSTHROUGH_MIN_BYTES {
            return None;
        }
        let content = n.content.as_ref()?;
        let cache = self.fetcher.cache();
        let assembled = cache.assembled_path(&content.chunks);
        if let Ok(f) = std::fs::File::open(&assembled) {
            return Some(f);
        }
        // Files fill from the front: a missing last chunk ends the check after one stat.
        let cached = |c: &strata_formats::index::Chunk| {
            c.loc == strata_formats::index::ChunkLoc::Zeros
                || c.digest.is_some_and(|d| cache.contains(&d))
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

    /// Where the content of a file comes from.
    fn layer_of(&self, content: &Content) -> Option<LayerSource> {
        self.ready().ok()?.layers.get(content.layer).cloned()
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.ready()?.tree.get(ino.0).ok_or(Errno::ENOENT)
    }

    /// The entries of directory `ino` from position `offset` on (`.` and `..` first), each
    /// with the offset of the one after it; produced as the reply buffer takes them.
    fn dir_entries(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = DirEntry<'_>>, Errno> {
        let tree = &self.ready()?.tree;
        let n = match tree.get(ino.0) {
            Some(n) if n.kind == Kind::Dir => n,
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        };
        let parent = tree.get(n.parent).unwrap_or(n);
        let dots = [(ino.0, n, &b"."[..]), (n.parent, parent, &b".."[..])];
        let children = n
            .children
            .iter()
            .filter_map(|(name, c)| tree.get(*c).map(|cn| (*c, cn, name.as_slice())));
        Ok(dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (child, node, name))| ((i + 1) as u64, child, node, name)))
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::Reg | Kind::Hardlink => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
    }
}

/// The kernel's `new_encode_dev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn time_of((secs, nanos): (i64, u32)) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// The attributes the kernel sees for `ino`.
pub fn attr_of(ino: u64, n: &Node) -> FileAttr {
    let t = time_of(n.mtime);
    let blocks = match &n.content {
        Some(c) => c
            .chunks
            .iter()
            .filter(|c| c.loc != strata_formats::index::ChunkLoc::Zeros)
            .map(|c| c.len)
            .sum::<u64>()
            .div_ceil(512),
        None => 0,
    };
    FileAttr {
        ino: INodeNo(ino),
        size: n.size,
        blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: if matches!(n.kind, Kind::Char | Kind::Block) {
            encode_dev(n.rdev.0, n.rdev.1)
        } else {
            0
        },
        blksize: 4096,
        flags: 0,
    }
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
        let _ = config.set_max_readahead(1 << 20);
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
        let tree = match self.ready() {
            Ok(r) => &r.tree,
            Err(e) => return reply.error(e),
        };
        match tree.lookup(parent.0, name.as_bytes()) {
            Some(ino) => match tree.get(ino) {
                Some(n) => reply.entry(&TTL, &attr_of(ino, n), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &attr_of(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(n) if n.kind == Kind::Symlink => reply.data(&n.link),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(n) if n.kind == Kind::Dir => reply.error(Errno::EISDIR),
            Ok(_) if flags.0 & libc::O_ACCMODE != libc::O_RDONLY => reply.error(Errno::EROFS),
            Ok(n) => {
                let Ok(mut modes) = self.open_modes.lock() else {
                    return reply.error(Errno::EIO);
                };
                match modes.get_mut(&ino.0) {
                    Some(OpenMode::Fuse(count)) => {
                        *count += 1;
                        reply.opened(FileHandle(FH_FUSE), FopenFlags::FOPEN_KEEP_CACHE);
                    }
                    Some(OpenMode::Passthrough(count, id)) => {
                        *count += 1;
                        reply.opened_passthrough(
                            FileHandle(FH_PASSTHROUGH),
                            FopenFlags::empty(),
                            id,
                        );
                    }
                    None => {
                        let backing = self.passthrough_file(n).and_then(|file| {
                            reply
                                .open_backing(&file)
                                .map_err(|e| debug!(error = %e, "passthrough refused; serving through FUSE"))
                                .ok()
                        });
                        match backing {
                            Some(id) => {
                                reply.opened_passthrough(
                                    FileHandle(FH_PASSTHROUGH),
                                    FopenFlags::empty(),
                                    &id,
                                );
                                modes.insert(ino.0, OpenMode::Passthrough(1, id));
                            }
                            None => {
                                reply.opened(FileHandle(FH_FUSE), FopenFlags::FOPEN_KEEP_CACHE);
                                modes.insert(ino.0, OpenMode::Fuse(1));
                            }
                        }
                    }
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut modes) = self.open_modes.lock()
            && let Some(mode) = modes.get_mut(&ino.0)
        {
            let count = match mode {
                OpenMode::Fuse(c) | OpenMode::Passthrough(c, _) => c,
            };
            *count = count.saturating_sub(1);
            if *count == 0 {
                modes.remove(&ino.0);
            }
        }
        let _ = fh;
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if offset >= n.size {
            return reply.data(&[]);
        }
        let len = (size as u64).min(n.size - offset);
        let Some(content) = n.content.clone() else {
            return reply.data(&vec![0u8; len as usize]);
        };
        if let Some(rec) = &self.recorder {
            let first = content
                .chunks
                .partition_point(|c| c.file_offset + c.len <= offset);
            let end = content
                .chunks
                .partition_point(|c| c.file_offset < offset + len);
            if end > first {
                rec.note(ino.0, first, end - 1);
            }
        }
        if self.is_sequential(ino.0, offset, len) {
            self.prefetch_after(&content, offset + len);
        }
        match self.fetcher.read_cached(&content.chunks, offset, len) {
            Ok(Some(data)) => return reply.data(&data),
            Ok(None) => {}
            Err(e) => {
                error!(ino = ino.0, error = %e, "cache read failed");
                return reply.error(Errno::EIO);
            }
        }
        let Some(layer) = self.layer_of(&content) else {
            return reply.error(Errno::EIO);
        };
        let fetcher = self.fetcher.clone();
        self.rt.spawn(async move {
            // Fetch ahead within the file: a file being read is usually read to its end.
            let ahead = (len.max(1 << 20)).min(n_remaining(&content.chunks, offset));
            if let Err(e) = fetcher
                .ensure(
                    &layer,
                    ChunkFetcher::touching(&content.chunks, offset, ahead),
                )
                .await
            {
                error!(ino = ino.0, offset, error = %e, "read failed");
                return reply.error(Errno::EIO);
            }
            match fetcher.read_cached(&content.chunks, offset, len) {
                Ok(Some(data)) => reply.data(&data),
                Ok(None) => reply.error(Errno::EIO),
                Err(e) => {
                    error!(ino = ino.0, error = %e, "cache read failed");
                    reply.error(Errno::EIO)
                }
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.dir_entries(ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, child, node, name) in entries {
            if reply.add(
                INodeNo(child),
                next,
                file_type(node.kind),
                OsStr::from_bytes(name),
            ) {
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
        let entries = match self.dir_entries(ino, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (next, child, node, name) in entries {
            let attr = attr_of(child, node);
            if reply.add(
                INodeNo(child),
                next,
                OsStr::from_bytes(name),
                &TTL,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        match n
            .xattrs
            .iter()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
        {
            None => reply.error(Errno::NO_XATTR),
            Some((_, v)) if size == 0 => reply.size(v.len() as u32),
            Some((_, v)) if (size as usize) < v.len() => reply.error(Errno::ERANGE),
            Some((_, v)) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut buf = Vec::new();
        for (k, _) in &n.xattrs {
            buf.extend_from_slice(k);
            buf.push(0);
        }
        if size == 0 {
            reply.size(buf.len() as u32)
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
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let chunks: &[strata_formats::index::Chunk] =
            n.content.as_ref().map(|c| &c.chunks[..]).unwrap_or(&[]);
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
        match self.node(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.ready().map(|r| r.tree.len() as u64).unwrap_or(0);
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }
}

/// SEEK_DATA / SEEK_HOLE over a file's chunks: holes are the `zeros` chunks (and a file
/// without content is one hole), so copy-up and `cp --sparse` keep them.
fn seek_data_hole(
    chunks: &[strata_formats::index::Chunk],
    size: u64,
    offset: i64,
    whence: i32,
) -> Result<i64, Errno> {
    use strata_formats::index::ChunkLoc;
    let Ok(off) = u64::try_from(offset) else {
        return Err(Errno::EINVAL);
    };
    if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
        return Err(Errno::EINVAL);
    }
    if off >= size {
        return Err(Errno::ENXIO);
    }
    let want_data = whence == libc::SEEK_DATA;
    for c in chunks.iter().filter(|c| c.file_offset + c.len > off) {
        let is_data = c.loc != ChunkLoc::Zeros;
        if is_data == want_data {
            return Ok(off.max(c.file_offset) as i64);
        }
    }
    if want_data {
        Err(Errno::ENXIO)
    } else {
        Ok(size as i64)
    }
}

fn n_remaining(chunks: &[strata_formats::index::Chunk], offset: u64) -> u64 {
    chunks
        .last()
        .map(|c| (c.file_offset + c.len).saturating_sub(offset))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_data_and_hole_follow_zero_chunks() {
        use strata_formats::index::{Chunk, ChunkLoc};
        let c = |off, len, zeros: bool| Chunk {
            file_offset: off,
            len,
            digest: None,
            loc: if zeros {
                ChunkLoc::Zeros
            } else {
                ChunkLoc::Local
            },
        };
        let chunks = [c(0, 10, false), c(10, 10, true), c(20, 5, false)];
        let (d, h) = (libc::SEEK_DATA, libc::SEEK_HOLE);
        assert_eq!(seek_data_hole(&chunks, 25, 0, d), Ok(0));
        assert_eq!(seek_data_hole(&chunks, 25, 0, h), Ok(10));
        assert_eq!(seek_data_hole(&chunks, 25, 12, d), Ok(20));
        assert_eq!(seek_data_hole(&chunks, 25, 21, h), Ok(25));
        assert_eq!(seek_data_hole(&chunks, 25, 25, d), Err(Errno::ENXIO));
        assert_eq!(seek_data_hole(&[], 0, 0, d), Err(Errno::ENXIO));
    }

    #[test]
    fn device_numbers_encode_like_the_kernel() {
        // glibc's makedev agrees with the kernel encoding for 32-bit device numbers.
        for (ma, mi) in [(1, 3), (8, 0x1234), (259, 70000)] {
            assert_eq!(encode_dev(ma, mi) as u64, libc::makedev(ma, mi));
        }
    }
}
