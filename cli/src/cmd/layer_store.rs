//! The layer store's server (`strata __layer-store`, started by the first command that needs
//! the store) and how commands start it.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Context as _;
use strata_layerstore::StorePaths;
use strata_layerstore::client::{Launcher, set_launcher};
use strata_layerstore::server::{Connection, ServeOptions, serve};

use crate::global::{GlobalArgs, runtime};

/// Default seconds the store stays up with no user (`STRATA_LAYER_STORE_IDLE_SECS`).
const DEFAULT_IDLE_SECS: u64 = 60;

/// The global options a child strata process needs to act as this one: state root, log
/// level, insecure registries, rate-limit wait, cache size.
pub fn global_args(g: &GlobalArgs) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--root".into(),
        g.root_path().into(),
        "--log-level".into(),
        g.log_level.clone().into(),
    ];
    for r in &g.insecure_registries {
        args.extend(["--insecure-registry".into(), r.into()]);
    }
    args.extend([
        "--rate-limit-wait".into(),
        g.rate_limit_wait.to_string().into(),
        "--stall-timeout".into(),
        g.stall_timeout.to_string().into(),
    ]);
    if let Some(mb) = g.cache_mb {
        args.extend(["--cache-mb".into(), mb.to_string().into()]);
    }
    args
}

/// Lets this process start the store's server with its own options.
pub fn configure(g: &GlobalArgs) {
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    let mut args = global_args(g);
    if g.log_level == "warn" {
        // The server's log says what it served.
        args[3] = "info".into();
    }
    args.push("__layer-store".into());
    set_launcher(Launcher { program, args });
}

/// Arguments of `__layer-store`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve this inherited `/dev/fuse` descriptor (mounted on the store) instead of holding.
    #[arg(long)]
    fuse_fd: Option<i32>,
    /// The descriptor's previous server died: take its connection over.
    #[arg(long, requires = "fuse_fd")]
    resume: bool,
}

/// Most servers a holder starts in a row after deaths before it gives the store up.
const MAX_TAKEOVERS: u32 = 20;

/// The holder (no descriptor): mounts the store on a `/dev/fuse` descriptor it keeps, and
/// starts a server on it — again, taking the live connection over, each time one dies
/// (killed, crashed, upgraded in place), until one ends normally. The server (with a
/// descriptor): serves the store until it ends.
pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let Some(fd) = a.fuse_fd else {
        return hold(g);
    };
    let idle = std::env::var("STRATA_LAYER_STORE_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_IDLE_SECS);
    // SAFETY: the holder passes its open /dev/fuse descriptor under this number, inherited
    // by this process and owned by nothing else here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let images = g.context()?;
    let rt = runtime()?;
    serve(
        images,
        &rt,
        &g.root(),
        ServeOptions {
            idle: Duration::from_secs(idle),
            connection: Some(Connection {
                fd,
                resume: a.resume,
            }),
            settings: strata_layerstore::client::settings_of(&global_args(g)),
        },
    )?;
    Ok(0)
}

/// The holder's loop (see [`run`]).
fn hold(g: &GlobalArgs) -> anyhow::Result<i32> {
    use std::os::fd::AsRawFd;
    let root = g.root();
    let paths = StorePaths::new(&root);
    strata_lazyfs::stale::clear(&paths.mount);
    std::fs::create_dir_all(&paths.mount)?;
    let fd = strata_lazyfs::takeover::mount_fd(&paths.mount)
        .with_context(|| format!("mounting the layer store on {}", paths.mount.display()))?;
    // The mount this holder made: once its server has unmounted it (and drains what still
    // stacks it), another store may be mounted at the same place, which is not ours to take.
    let ours = strata_lazyfs::mount::mount_entry(&paths.mount).map(|m| m.dev);
    let program = std::env::current_exe()?;
    let mut takeovers = 0;
    loop {
        let mut cmd = std::process::Command::new(&program);
        cmd.args(global_args(g))
            .arg("__layer-store")
            .arg("--fuse-fd")
            .arg(fd.as_raw_fd().to_string());
        if takeovers > 0 {
            cmd.arg("--resume");
        }
        let status = cmd.status().context("starting the layer store server")?;
        let still_ours = strata_lazyfs::mount::mount_entry(&paths.mount).map(|m| m.dev) == ours;
        if status.success() || !strata_lazyfs::mount::is_strata_mount(&paths.mount) || !still_ours {
            return Ok(0);
        }
        takeovers += 1;
        if takeovers > MAX_TAKEOVERS {
            let _ = nix::mount::umount2(&paths.mount, nix::mount::MntFlags::MNT_DETACH);
            anyhow::bail!("layer store server died {MAX_TAKEOVERS} times; store unmounted");
        }
        tracing::warn!(%status, "layer store server died; a new one takes the connection over");
        std::thread::sleep(Duration::from_millis(50));
    }
}
