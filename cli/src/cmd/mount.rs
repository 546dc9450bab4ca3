//! `strata mount` and `strata umount`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use strata_image::Images;
use strata_lazyfs::mount::{MountOptions, is_strata_mount, serve, unmount};
use strata_oci::Reference;
use strata_overlay::root::prepare_fs;
use strata_storage::store::ImageRecord;

use crate::global::{GlobalArgs, runtime};
use crate::progress::Display;

/// Arguments of `mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Image reference or ID (pulled lazily if missing).
    pub image: String,
    /// Directory to mount on.
    pub dir: PathBuf,
    /// Return once the mount is up and keep serving it in the background.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Platform to choose from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// What to fetch before it is read: auto (the image's prefetch profile, then the rest of an
    /// image that has one, at low priority), profile, all, none.
    #[arg(long, default_value = "auto")]
    pub prefetch: strata_formats::profile::Prefetch,
    /// Seconds to wait for a detached mount to come up.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

/// Arguments of `umount`.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mount point.
    pub dir: PathBuf,
}

/// Finds an image locally, pulling it lazily if it is missing (docker's "Unable to find image").
pub fn find_or_pull(
    ctx: &Images,
    rt: &tokio::runtime::Runtime,
    name: &str,
    platform: &str,
) -> anyhow::Result<ImageRecord> {
    find_or_pull_shown(ctx, rt, name, platform, Shown::Run)
}

/// How the pull of a missing image is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// `run`'s: "Unable to find image '…' locally", then the progress.
    Run,
    /// The classic builder's (FROM, COPY --from): the progress alone.
    Build,
    /// Nothing (`build -q`).
    Quiet,
}

/// [`find_or_pull`], showing the pull as `shown` says.
pub fn find_or_pull_shown(
    ctx: &Images,
    rt: &tokio::runtime::Runtime,
    name: &str,
    platform: &str,
    shown_as: Shown,
) -> anyhow::Result<ImageRecord> {
    if let Ok((img, _)) = ctx.catalog().resolve(name) {
        return Ok(img);
    }
    let r: Reference = crate::cmd::refs::parse(name)?;
    let shown = crate::cmd::pull::familiar(&r);
    let display = match shown_as {
        Shown::Quiet => Display::new(true),
        Shown::Build => Display::on_stderr(),
        Shown::Run => {
            eprintln!("Unable to find image '{shown}' locally");
            Display::on_stderr()
        }
    };
    let img = rt.block_on(crate::cmd::pull::pull(ctx, &r, platform, false, &display))?;
    display.line(&format!("Status: Downloaded newer image for {shown}"));
    Ok(img)
}

pub fn run_mount(a: MountArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    // A detached mount that was killed leaves its mount point dead (ENOTCONN), or (from the
    // layer store) still mounted with nobody to unmount it: take it back.
    if strata_lazyfs::stale::clear(&a.dir) || take_back_orphan(&g.root(), &a.dir) {
        eprintln!("strata: unmounted {} (its server is gone)", a.dir.display());
    }
    if !a.dir.is_dir() {
        bail!("mount point {} is not a directory", a.dir.display());
    }
    if a.detach {
        return detach(&a, g);
    }
    let mut ctx = g.context()?;
    ctx.prefetch = a.prefetch;
    let rt = runtime()?;
    let img = find_or_pull(&ctx, &rt, &a.image, &a.platform)?;
    if strata_layerstore::client::enabled() {
        match serve_from_store(&ctx, &rt, &img, &a) {
            // The store is not there (could not start, does not answer): serve the merged
            // image from this process. An image the store refused is refused here too.
            Err(e) if !is_strata_mount(&a.dir) && !refused_by_store(&e) => {
                tracing::info!(error = %e, "layer store not used; serving the merged image");
            }
            done => return done,
        }
    }
    let fs = prepare_fs(&ctx, rt.handle(), img).with_passthrough(true);
    let dir = a.dir.canonicalize()?;
    // A tree that cannot be built (a layer gone, a foreign URL down): say why and unmount,
    // rather than serve EIO on every path (a detached mount's log holds the line).
    let readiness = fs.readiness();
    let (failed_tx, failed) = std::sync::mpsc::channel();
    let on_failure = dir.clone();
    std::thread::spawn(move || {
        if let Err(cause) = readiness.wait() {
            let _ = failed_tx.send(cause);
            // The tree may fail before `serve` has mounted: unmount once it has (bounded).
            for _ in 0..200 {
                if is_strata_mount(&on_failure) && unmount(&on_failure).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    // A reader still waiting would keep the mount (and this process) up: its connection is
    // aborted instead, so that nothing is left in D state on a mount nobody serves.
    strata_lazyfs::mount::unmount_on_signal(rt.handle(), dir.clone(), |dir| {
        if let Err(e) = strata_lazyfs::abort::unmount_or_abort(dir) {
            tracing::warn!("unmounting {}: {e}", dir.display());
        }
    });
    let served = serve(fs, &dir, &MountOptions::default());
    if let Ok(cause) = failed.try_recv() {
        bail!("image {} cannot be used: {cause}", a.image);
    }
    served.with_context(|| format!("mounting on {}", dir.display()))?;
    Ok(0)
}

/// Mounts the image from the layer store and stays (keeping the store up) until it is
/// unmounted or a signal asks to unmount it.
fn serve_from_store(
    ctx: &Images,
    rt: &tokio::runtime::Runtime,
    img: &ImageRecord,
    a: &MountArgs,
) -> anyhow::Result<i32> {
    let dir = a.dir.canonicalize()?;
    let mounted = strata_overlay::root::mount_image_readonly(ctx, img, &dir)
        .map_err(|e| anyhow::Error::new(e).context(format!("image {} cannot be used", a.image)))?;
    let owner = owner_file(ctx.layout().root(), &dir);
    if let Some(parent) = owner.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&owner, std::process::id().to_string());
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = tick.tick() => if !is_strata_mount(&dir) { return Ok(()) },
            }
        }
        unmount(&dir)
    })
    .with_context(|| format!("unmounting {}", dir.display()))?;
    let _ = std::fs::remove_file(&owner);
    drop(mounted);
    Ok(0)
}

/// Whether `e` is the layer store's answer about the image (it cannot be indexed or shown),
/// not a failure to reach the store.
fn refused_by_store(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<strata_layerstore::StoreError>())
            .is_some_and(|s| matches!(s, strata_layerstore::StoreError::Server(_)))
    })
}

/// Where the process serving a read-only mount of the layer store at `dir` notes its pid.
fn owner_file(root: &Path, dir: &Path) -> PathBuf {
    let key = strata_oci::Digest::of(dir.to_string_lossy().as_bytes()).short();
    root.join("mounts").join(format!("{key}.pid"))
}

/// Unmounts a read-only layer store mount at `dir` whose serving process is gone (killed):
/// it still reads, but nothing would ever unmount it or keep its lease. Returns whether it
/// did.
fn take_back_orphan(root: &Path, dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    if !is_strata_mount(&dir) {
        return false;
    }
    let owner = owner_file(root, &dir);
    let dead = std::fs::read_to_string(&owner)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| !strata_storage::leftovers::pid_alive(pid));
    if dead && nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        let _ = std::fs::remove_file(owner);
        return true;
    }
    false
}

fn detach(a: &MountArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let root = g.root();
    let logs = root.join("mounts");
    std::fs::create_dir_all(&logs)?;
    let dir = a.dir.canonicalize()?;
    if is_strata_mount(&dir) {
        bail!("{} is already a strata mount", dir.display());
    }
    let log_path = logs.join(format!(
        "{}.log",
        strata_oci::Digest::of(dir.to_string_lossy().as_bytes()).short()
    ));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--root")
        .arg(&root)
        .arg("--log-level")
        .arg(&g.log_level);
    for r in &g.insecure_registries {
        cmd.arg("--insecure-registry").arg(r);
    }
    cmd.arg("--rate-limit-wait")
        .arg(g.rate_limit_wait.to_string())
        .arg("--stall-timeout")
        .arg(g.stall_timeout.to_string());
    if let Some(mb) = g.cache_mb {
        cmd.arg("--cache-mb").arg(mb.to_string());
    }
    cmd.arg("mount")
        .arg("--platform")
        .arg(&a.platform)
        .arg("--prefetch")
        .arg(a.prefetch.to_string())
        .arg(&a.image)
        .arg(&dir);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the mount process")?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    loop {
        if is_strata_mount(&dir) {
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            bail!(
                "mount process exited ({status}): {}",
                last.trim_start_matches("strata: ")
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "mount of {} did not come up within {}s",
                dir.display(),
                a.timeout_secs
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run_umount(a: UmountArgs) -> anyhow::Result<i32> {
    // Resolve the parent only: a stat of the mount point itself would wait on a hung server.
    let name = a
        .dir
        .file_name()
        .with_context(|| format!("{} is not a mount point", a.dir.display()))?;
    let parent = match a.dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent
        .canonicalize()
        .with_context(|| format!("{}", a.dir.display()))?
        .join(name);
    if !is_strata_mount(&dir) {
        bail!("{} is not a strata mount", dir.display());
    }
    unmount(&dir).with_context(|| format!("unmounting {}", dir.display()))?;
    wait_gone(&dir);
    Ok(0)
}

fn wait_gone(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_strata_mount(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}
