//! The additional layer store's filesystem (see [`crate::als`]): reference and layer
//! directories made as they are looked up, each layer's `diff` a symlink into the layer
//! store, `info` from memory, `blob` read from a local copy fetched (and checked against its
//! digest) when it is first opened. Lookups that need the network run on the runtime, so
//! one slow pull never holds other requests up.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, Request,
};
use tracing::{debug, info, warn};

use crate::als::{AlsOptions, ImageView, Resolver};

/// How long the kernel may keep entries and attributes (a reference's image is fixed for
/// the server's life; short all the same, so a tag pulled again is seen soon).
const TTL: Duration = Duration::from_secs(1);

/// The names in a layer directory.
const DIFF: &str = "diff";
const INFO: &str = "info";
const BLOB: &str = "blob";
/// What c/storage creates to say it uses a layer.
const USE: &str = "use";

/// What an inode is.
#[derive(Debug, Clone)]
enum Node {
    Root,
    /// `DIR/<base64 ref>`.
    Ref {
        reference: String,
    },
    /// `DIR/<ref>/<digest>` and what is in it: layer `idx` of the image.
    Layer {
        view: Arc<ImageView>,
        idx: usize,
    },
    Diff {
        view: Arc<ImageView>,
        idx: usize,
    },
    Info {
        view: Arc<ImageView>,
        idx: usize,
    },
    Blob {
        view: Arc<ImageView>,
        idx: usize,
    },
}

#[derive(Debug, Default)]
struct Nodes {
    /// Inode `i + 2` is `list[i]` (1 is the root).
    list: Vec<Node>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
}

/// The filesystem.
#[derive(Debug, Clone)]
pub struct AlsFs {
    resolver: Arc<Resolver>,
    rt: tokio::runtime::Handle,
    nodes: Arc<Mutex<Nodes>>,
    /// Open blobs, by handle.
    blobs: Arc<Mutex<HashMap<u64, Arc<std::fs::File>>>>,
    next_fh: Arc<std::sync::atomic::AtomicU64>,
    born: SystemTime,
}

impl AlsFs {
    /// An empty store view resolving references with `resolver` on `rt`.
    pub fn new(resolver: Arc<Resolver>, rt: tokio::runtime::Handle) -> Self {
        Self {
            resolver,
            rt,
            nodes: Arc::default(),
            blobs: Arc::default(),
            next_fh: Arc::new(1.into()),
            born: SystemTime::now(),
        }
    }

    fn node(&self, ino: u64) -> Option<Node> {
        if ino == 1 {
            return Some(Node::Root);
        }
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .list
            .get(usize::try_from(ino.checked_sub(2)?).ok()?)
            .cloned()
    }

    /// The inode of `name` in `parent`, made from `make` the first time.
    fn child(&self, parent: u64, name: &[u8], make: impl FnOnce() -> Node) -> u64 {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let key = (parent, name.to_vec());
        if let Some(ino) = nodes.by_name.get(&key) {
            return *ino;
        }
        nodes.list.push(make());
        let ino = nodes.list.len() as u64 + 1;
        nodes.by_name.insert(key, ino);
        ino
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size) = match node {
            Node::Root | Node::Ref { .. } | Node::Layer { .. } => (FileType::Directory, 0o755, 0),
            Node::Diff { view, idx } => (
                FileType::Symlink,
                0o777,
                view.layers[*idx].diff.as_os_str().len() as u64,
            ),
            Node::Info { view, idx } => (
                FileType::RegularFile,
                0o444,
                view.layers[*idx].info.len() as u64,
            ),
            Node::Blob { view, idx } => (FileType::RegularFile, 0o444, view.layers[*idx].blob_size),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.born,
            mtime: self.born,
            ctime: self.born,
            crtime: self.born,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn entry(&self, parent: u64, name: &[u8], make: impl FnOnce() -> Node, reply: ReplyEntry) {
        let ino = self.child(parent, name, make);
        match self.node(ino) {
            Some(n) => reply.entry(&TTL, &self.attr(ino, &n), Generation(0)),
            None => reply.error(Errno::EIO),
        }
    }

    /// `DIR/<name>`: a reference, base64-encoded as c/storage writes it.
    fn lookup_ref(&self, name: &[u8], reply: ReplyEntry) {
        let Some(reference) = base64::engine::general_purpose::STANDARD
            .decode(name)
            .ok()
            .and_then(|r| String::from_utf8(r).ok())
        else {
            return reply.error(Errno::ENOENT);
        };
        let me = self.clone();
        let name = name.to_vec();
        self.rt.spawn(async move {
            match me.resolver.resolve(&reference).await {
                Ok(_) => me.entry(1, &name, || Node::Ref { reference }, reply),
                Err(e) => {
                    warn!(reference, error = %e, "reference not served");
                    reply.error(Errno::ENOENT)
                }
            }
        });
    }

    /// `DIR/<ref>/<name>`: a layer of the reference's image, by blob digest. A digest the
    /// image lacks makes the reference be pulled again once (its tag may have moved).
    fn lookup_layer(&self, parent: u64, reference: String, name: &[u8], reply: ReplyEntry) {
        let Ok(digest) = std::str::from_utf8(name).map(str::to_string) else {
            return reply.error(Errno::ENOENT);
        };
        let me = self.clone();
        self.rt.spawn(async move {
            let mut view = me.resolver.resolve(&reference).await;
            if view.as_ref().is_ok_and(|v| v.layer(&digest).is_none()) {
                view = me.resolver.refresh(&reference).await;
            }
            match view.map(|v| (v.layer(&digest), v)) {
                Ok((Some(idx), view)) => me.entry(
                    parent,
                    digest.as_bytes(),
                    || Node::Layer { view, idx },
                    reply,
                ),
                Ok((None, _)) => reply.error(Errno::ENOENT),
                Err(e) => {
                    warn!(reference, error = %e, "reference not served");
                    reply.error(Errno::ENOENT)
                }
            }
        });
    }

    fn layer_entry(view: Arc<ImageView>, idx: usize, name: &[u8]) -> Option<Node> {
        match std::str::from_utf8(name).ok()? {
            DIFF => Some(Node::Diff { view, idx }),
            INFO => Some(Node::Info { view, idx }),
            BLOB => Some(Node::Blob { view, idx }),
            _ => None,
        }
    }
}

impl Filesystem for AlsFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes();
        match self.node(parent.0) {
            Some(Node::Root) => self.lookup_ref(name, reply),
            Some(Node::Ref { reference }) => self.lookup_layer(parent.0, reference, name, reply),
            Some(Node::Layer { view, idx }) => {
                match Self::layer_entry(view, idx, name) {
                    Some(n) => self.entry(parent.0, name, || n, reply),
                    // `use` among them: c/storage's create of it must find it missing.
                    None => reply.error(Errno::ENOENT),
                }
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Some(n) => reply.attr(&TTL, &self.attr(ino.0, &n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino.0) {
            Some(Node::Diff { view, idx }) => {
                reply.data(view.layers[idx].diff.as_os_str().as_bytes())
            }
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino.0) {
            Some(Node::Info { .. }) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Some(Node::Blob { view, idx }) => {
                // The whole blob, checked against its digest, before a byte of it is served.
                let me = self.clone();
                self.rt.spawn(async move {
                    let digest = view.layers[idx].digest;
                    let file = match me.resolver.blob_file(&view, &digest).await {
                        Ok(path) => std::fs::File::open(&path).map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    match file {
                        Ok(f) => {
                            let fh = me.next_fh.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let mut blobs = me.blobs.lock().unwrap_or_else(|p| p.into_inner());
                            blobs.insert(fh, Arc::new(f));
                            reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
                        }
                        Err(e) => {
                            warn!(blob = %digest, error = %e, "blob not served");
                            reply.error(Errno::EIO)
                        }
                    }
                });
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.node(ino.0) {
            Some(Node::Info { view, idx }) => {
                let info = &view.layers[idx].info;
                let from = strata_oci::usize_of(offset).min(info.len());
                let to = from.saturating_add(size as usize).min(info.len());
                reply.data(&info[from..to])
            }
            Some(Node::Blob { .. }) => {
                let file = {
                    let blobs = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
                    blobs.get(&fh.0).cloned()
                };
                let Some(file) = file else {
                    return reply.error(Errno::EBADF);
                };
                let mut buf = vec![0u8; size as usize];
                match file.read_at(&mut buf, offset) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => {
                        warn!(error = %e, "blob read failed");
                        reply.error(Errno::EIO)
                    }
                }
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut blobs = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
        blobs.remove(&fh.0);
        reply.ok();
    }

    /// References and layers are not listed (they are made when looked up); a layer lists
    /// its three files.
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let node = match self.node(ino.0) {
            Some(n @ (Node::Root | Node::Ref { .. } | Node::Layer { .. })) => n,
            Some(_) => return reply.error(Errno::ENOTDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let mut entries: Vec<(u64, FileType, &[u8])> = vec![
            (ino.0, FileType::Directory, b"."),
            (ino.0, FileType::Directory, b".."),
        ];
        if let Node::Layer { view, idx } = &node {
            for (name, kind) in [
                (DIFF, FileType::Symlink),
                (INFO, FileType::RegularFile),
                (BLOB, FileType::RegularFile),
            ] {
                let n =
                    Self::layer_entry(view.clone(), *idx, name.as_bytes()).unwrap_or(Node::Root);
                entries.push((
                    self.child(ino.0, name.as_bytes(), || n),
                    kind,
                    name.as_bytes(),
                ));
            }
        }
        for (i, (child, kind, name)) in entries
            .into_iter()
            .enumerate()
            .skip(strata_oci::usize_of(offset))
        {
            if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    /// c/storage creates `use` in a layer directory when it starts using the layer; a store
    /// that keeps its layers answers `ENOENT` (c/storage's "notification-aware" reply).
    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.node(parent.0) {
            Some(Node::Layer { view, idx }) if name.as_bytes() == USE.as_bytes() => {
                debug!(layer = %view.layers[idx].digest, "layer in use");
                reply.error(Errno::ENOENT)
            }
            _ => reply.error(Errno::EROFS),
        }
    }

    /// c/storage removes a layer directory when it stops using the layer (`podman rmi`):
    /// the layer stays in the layer store, and the answer is `ENOENT` as c/storage expects.
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.node(parent.0) {
            Some(Node::Ref { reference }) => {
                info!(reference, layer = %String::from_utf8_lossy(name.as_bytes()), "layer released");
                reply.error(Errno::ENOENT)
            }
            _ => reply.error(Errno::EROFS),
        }
    }
}

/// Serves the additional layer store of state root `root` at `dir` until it is unmounted or
/// the process gets SIGINT or SIGTERM (which unmount it). A dead mount a killed predecessor
/// left at `dir` is cleared first.
///
/// Errors: the layer store cannot be reached, or `dir` cannot be mounted.
pub fn serve_als(
    images: strata_image::Images,
    rt: &tokio::runtime::Runtime,
    root: &Path,
    dir: &Path,
    opts: AlsOptions,
) -> Result<(), crate::StoreError> {
    use crate::StoreError;
    strata_lazyfs::stale::clear(dir);
    // A live one there already: a second server would mount over it, and its unmount at
    // the end would take the first one's mount with it.
    if strata_lazyfs::mount::mount_entry(dir).is_some_and(|m| m.source == "strata-layer-store") {
        return Err(StoreError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("another strata layer-store serves this directory"),
        });
    }
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    let dir = dir.canonicalize().map_err(StoreError::io(dir))?;
    let resolver = Arc::new(Resolver::new(images, root, opts)?);
    resolver.keep_lease(Duration::from_secs(5));
    let fs = AlsFs::new(resolver, rt.handle().clone());
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("strata-layer-store".into()),
        fuser::MountOption::Subtype("strata".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    let session = fuser::Session::new(fs, &dir, &config).map_err(StoreError::io(&dir))?;
    strata_lazyfs::mount::unmount_on_signal(rt.handle(), dir.clone(), |dir| {
        info!(dir = %dir.display(), "unmounting the additional layer store");
        let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
    });
    info!(dir = %dir.display(), pid = std::process::id(), "additional layer store serving");
    session.run().map_err(StoreError::io(&dir))?;
    info!("additional layer store ended");
    Ok(())
}
