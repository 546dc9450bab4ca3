//! A container's root: the image's layer directories from the layer store (read-only, lazy)
//! under a private writable upper layer (kernel overlayfs). Used by `run`, `start`, `export`
//! and `build`. Where the store cannot serve an image (a layer that cannot be shown on its
//! own, no store in this process) or a recording is asked for, the root's lower is a FUSE
//! mount of the merged image served by this process instead.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use strata_formats::profile::Prefetch;
use strata_image::{Images, source_ref};
use strata_layerstore::client::{self, Lease};
use strata_oci::causes::with_causes;
use strata_storage::store::ImageRecord;
use tracing::{info, warn};

use crate::union::{mount_overlay_layers, unmount_detached};
use strata_lazyfs::mount::{MountOptions, spawn};
use strata_lazyfs::{LazyFs, Recording, Tree};

/// The lazy filesystem of `img`, mountable at once: layers without a TOC stream in the
/// background and the tree appears (operations wait for it) when they are indexed. What
/// `images.prefetch` asks for is fetched ahead: the image's prefetch profile at once, the rest
/// once the tree is ready and the profile is in.
pub fn prepare_fs(images: &Images, rt: &tokio::runtime::Handle, img: ImageRecord) -> LazyFs {
    let (fs, ready) = LazyFs::pending(images.fetcher().clone(), rt.clone());
    let profile = match images.prefetch {
        Prefetch::None => None,
        _ => images.profiles().profile_of(&img),
    };
    let rest = images.prefetch.rest(profile.is_some());
    let fs = fs.replaying(profile.is_some());
    let prefetcher = images.prefetcher();
    // Already under way if this process just pulled the image: then this only waits for it.
    let profile_done = match (profile, source_ref(&img)) {
        (Some(p), Ok(repo)) => {
            let (pf, blobs) = (prefetcher.clone(), img.layers.clone());
            Some(rt.spawn(async move { pf.prefetch_profile(&repo, &blobs, &p).await }))
        }
        _ => None,
    };
    let (puller, catalog) = (images.puller(), images.catalog());
    rt.spawn(async move {
        let started = Instant::now();
        let result = async {
            puller
                .ensure_indexed(&img, &|_| {})
                .await
                .map_err(|e| with_causes(&e))?;
            let layers = catalog.open_layers(&img).map_err(|e| with_causes(&e))?;
            let tree = Tree::build(layers.iter().map(|l| &l.index)).map_err(|e| with_causes(&e))?;
            info!(
                inodes = tree.len(),
                ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "tree ready"
            );
            Ok::<_, String>((tree, layers))
        }
        .await;
        match result {
            Ok((tree, layers)) => {
                ready.set(Ok((
                    tree,
                    layers.iter().map(|l| l.source.clone()).collect(),
                )));
                if rest {
                    if let Some(h) = profile_done {
                        let _ = h.await;
                    }
                    prefetcher.fetch_rest(&layers).await;
                }
            }
            Err(e) => ready.set(Err(e)),
        }
    });
    fs
}

/// A container's mounted root; unmounted (overlay, then the FUSE lower or the lease on the
/// layer store) when dropped.
pub struct RootMount {
    /// The overlay mount point.
    pub rootfs: PathBuf,
    session: Option<fuser::BackgroundSession>,
    lease: Option<Lease>,
}

impl std::fmt::Debug for RootMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootMount")
            .field("rootfs", &self.rootfs)
            .finish()
    }
}

impl RootMount {
    /// Why a read of the image failed at or after `since` (seconds since the epoch), as the
    /// layer store last saw it: what explains a program's EIO. `None` for a root served by
    /// this process (whose log already said it) or when nothing failed.
    pub fn read_failure_since(&mut self, since: i64) -> Option<String> {
        let status = self.lease.as_mut()?.status().ok()?;
        status
            .last_failure
            .filter(|(at, _)| *at >= since)
            .map(|(_, why)| why)
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        let _ = unmount_detached(&self.rootfs);
        if let Some(session) = self.session.take() {
            // The lower this process serves goes with it: a reader still waiting on it (the
            // container's, killed) has its requests aborted rather than wait in D state.
            if let Some(lower) = self.rootfs.parent().map(|d| d.join("lower"))
                && let Err(e) = strata_lazyfs::abort::unmount_or_abort(&lower)
            {
                warn!(lower = %lower.display(), error = %e, "unmounting the image");
            }
            drop(session);
        }
        drop(self.lease.take());
    }
}

/// Mounts `img` lazily at `dir/lower` (served by this process) and the overlay of `dir/upper`
/// over it at `dir/rootfs`. An existing upper layer is reused.
pub fn mount_root(
    images: &Images,
    rt: &tokio::runtime::Handle,
    img: &ImageRecord,
    dir: &Path,
) -> io::Result<RootMount> {
    mount_root_with(images, rt, img, dir, false).map(|(m, _)| m)
}

/// [`mount_root`], recording what is read when `record` is set.
pub fn mount_root_with(
    images: &Images,
    rt: &tokio::runtime::Handle,
    img: &ImageRecord,
    dir: &Path,
    record: bool,
) -> io::Result<(RootMount, Option<Recording>)> {
    forget_lower_identity(&dir.join("upper"));
    if !record && client::enabled() {
        match mount_from_store(images, img, dir) {
            Ok(m) => return Ok((m, None)),
            Err(e) => info!(image = %img.manifest, error = %e, "layer store not used"),
        }
    }
    let (lower, upper, work, rootfs) = (
        dir.join("lower"),
        dir.join("upper"),
        dir.join("work"),
        dir.join("rootfs"),
    );
    for d in [&lower, &upper, &work, &rootfs] {
        std::fs::create_dir_all(d)?;
    }
    let fs = prepare_fs(images, rt, img.clone()).with_passthrough(true);
    let (fs, recording) = if record {
        let (fs, r) = fs.recording();
        (fs, Some(r))
    } else {
        (fs, None)
    };
    let readiness = fs.readiness();
    // This process serves the lower: if it is killed while one of its own threads reads it, that
    // thread waits for an answer nobody will send. Whoever finds it gone aborts the connection
    // (`stale::sweep_root`).
    let owner = dir.join(strata_lazyfs::stale::ROOT_OWNER_FILE);
    if let Err(e) = std::fs::write(&owner, std::process::id().to_string()) {
        warn!(path = %owner.display(), error = %e, "root owner not recorded");
    }
    let session = spawn(fs, &lower, &MountOptions::default()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mounting the image on {}: {e}", lower.display()),
        )
    })?;
    let mut mounted = RootMount {
        rootfs: rootfs.clone(),
        session: Some(session),
        lease: None,
    };
    // The first operation waits for the tree (as the container's would): if it cannot be
    // built, say why instead of letting the container fail with EIO on some path.
    if std::fs::read_dir(&lower).is_err()
        && let Some(cause) = readiness.failure()
    {
        drop(mounted.session.take());
        return Err(io::Error::other(format!(
            "image {} cannot be used: {cause}",
            img.manifest
        )));
    }
    if let Err(e) = mount_overlay_layers(&[lower], &upper, &work, &rootfs) {
        drop(mounted.session.take());
        return Err(io::Error::new(
            e.kind(),
            format!("mounting the writable layer on {}: {e}", rootfs.display()),
        ));
    }
    Ok((mounted, recording))
}

/// Lets an existing upper layer be stacked on lowers whose inode numbers changed (a layer store
/// that ended and came back with images added in another order, or the merged mount): with
/// `index=on` overlayfs records the lower root's file handle in the upper root and refuses
/// (`ESTALE`) to mount it over another. The record goes; overlayfs writes it again.
fn forget_lower_identity(upper: &Path) {
    if upper.is_dir()
        && let Err(e) = xattr::remove(upper, "trusted.overlay.origin")
        && e.raw_os_error() != Some(nix::libc::ENODATA)
    {
        warn!(upper = %upper.display(), error = %e, "upper root origin not cleared");
    }
}

/// Mounts `img`'s root at `dir/rootfs`: its layer directories in the layer store (started if
/// need be) under `dir/upper`.
fn mount_from_store(images: &Images, img: &ImageRecord, dir: &Path) -> io::Result<RootMount> {
    let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d)?;
    }
    let mut lease = Lease::open(images.layout().root()).map_err(io::Error::other)?;
    let lowers = lease
        .add(img, &images.prefetch.to_string())
        .map_err(io::Error::other)?;
    // Whoever finds this process gone unmounts the root (`stale::sweep_root`); noted before
    // the mount, so that a kill between the two leaves nothing nobody unmounts.
    let owner = dir.join(strata_lazyfs::stale::ROOT_OWNER_FILE);
    if let Err(e) = std::fs::write(&owner, std::process::id().to_string()) {
        warn!(path = %owner.display(), error = %e, "root owner not recorded");
    }
    mount_overlay_layers(&lowers, &upper, &work, &rootfs).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("mounting the writable layer on {}: {e}", rootfs.display()),
        )
    })?;
    Ok(RootMount {
        rootfs,
        session: None,
        lease: Some(lease),
    })
}

/// An image mounted read-only from the layer store; the lease keeps the store up.
#[derive(Debug)]
pub struct ImageMount {
    /// Where it is mounted.
    pub dir: PathBuf,
    _lease: Lease,
}

/// Mounts `img` read-only at `dir`: overlayfs (source `strata`) over its layer directories in
/// the layer store, which is started if need be. The mount stays when the returned value is
/// dropped; whoever holds it keeps the store up.
///
/// Errors: the store's (the image cannot be indexed or a layer cannot be shown on its own),
/// or the mount's.
pub fn mount_image_readonly(
    images: &Images,
    img: &ImageRecord,
    dir: &Path,
) -> io::Result<ImageMount> {
    let mut lease = Lease::open(images.layout().root()).map_err(io::Error::other)?;
    let mut lowers = lease
        .add(img, &images.prefetch.to_string())
        .map_err(io::Error::other)?;
    if lowers.len() < 2 {
        // overlayfs wants two lowers when it has no upper.
        let empty = images.layout().root().join("layers-empty");
        std::fs::create_dir_all(&empty)?;
        lowers.insert(0, empty);
    }
    crate::union::mount_overlay_readonly(&lowers, dir)?;
    Ok(ImageMount {
        dir: dir.to_path_buf(),
        _lease: lease,
    })
}

/// Mount points strata itself creates in a container when the image lacks them.
const RUNTIME_PATHS: [&str; 6] = [
    "/proc",
    "/sys",
    "/dev",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
];

/// Whether `rel` (a path in a container's upper layer) is only a mount point strata created
/// because the image lacks it: it is not the container's change.
pub fn is_runtime_artifact(rel: &Path, meta: &std::fs::Metadata, tree: &Tree) -> bool {
    let shown = format!("/{}", rel.display());
    if !RUNTIME_PATHS.contains(&shown.as_str())
        || tree.resolve(rel.as_os_str().as_encoded_bytes()).is_some()
    {
        return false;
    }
    meta.is_dir() || meta.len() == 0
}
