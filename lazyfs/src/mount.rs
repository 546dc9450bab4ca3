//! Mounting: options, the mount itself, unmounting and the kernel readahead setting.

use std::io;
use std::path::Path;

use fuser::{Config, MountOption, SessionACL};
use tracing::{debug, warn};

use crate::fuse::LazyFs;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users (and containers' users) see the mount; needs root or `user_allow_other`.
    pub allow_other: bool,
    /// FUSE request threads; default 4.
    pub threads: usize,
    /// Give each thread its own clone of the `/dev/fuse` descriptor (less contention), as by
    /// default. A connection that must survive its server's death reads on the one descriptor
    /// its holder keeps: the kernel fails what is in flight on a clone when the clone closes.
    pub clone_fd: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: true,
            threads: 4,
            clone_fd: true,
        }
    }
}

pub(crate) fn config(opts: &MountOptions) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName("strata".into()),
        MountOption::Subtype("strata".into()),
        MountOption::RO,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::DefaultPermissions,
    ];
    if opts.allow_other {
        c.acl = SessionACL::All;
    }
    c.n_threads = Some(opts.threads.max(1));
    c.clone_fd = opts.clone_fd;
    c
}

/// Mounts `fs` on `dir` and serves it until it is unmounted.
pub fn serve(fs: LazyFs, dir: &Path, opts: &MountOptions) -> io::Result<()> {
    let read_ahead = fs.read_ahead_kb();
    let session = fuser::Session::new(fs, dir, &config(opts))?;
    set_read_ahead(dir, read_ahead);
    session.run()
}

/// Mounts `fs` on `dir` and serves it from background threads until the returned session is
/// dropped (which unmounts it).
pub fn spawn(fs: LazyFs, dir: &Path, opts: &MountOptions) -> io::Result<fuser::BackgroundSession> {
    let read_ahead = fs.read_ahead_kb();
    let session = fuser::Session::new(fs, dir, &config(opts))?;
    set_read_ahead(dir, read_ahead);
    session.spawn()
}

/// Sets the kernel readahead of the FUSE mount at `dir` (best effort; the value is
/// [`crate::readahead::kernel_kb`]'s). The device number
/// comes from mountinfo: a stat of the mount point would wait for the not-yet-served FUSE.
pub fn set_read_ahead(dir: &Path, kb: u32) {
    let Some(dev) = mount_entry(dir).map(|m| m.dev) else {
        return;
    };
    let p = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&p, kb.to_string()) {
        Ok(()) => debug!(path = p, kb, "readahead set"),
        Err(e) => warn!(path = p, error = %e, "could not set readahead"),
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mount.
    pub dev: String,
    /// Filesystem type (`fuse`, `fuse.strata`, ...).
    pub fstype: String,
    /// Mount source (`strata` for ours).
    pub source: String,
}

/// The last (topmost) mount whose mount point is `dir`, without touching `dir` itself beyond
/// resolving its parent (so it never waits on a hung FUSE server).
pub fn mount_entry(dir: &Path) -> Option<MountEntry> {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(dir)
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let mp = unescape(fields.get(4)?);
            if Path::new(&mp) != abs {
                return None;
            }
            Some(MountEntry {
                dev: fields.get(2)?.to_string(),
                fstype: fields.get(sep + 1)?.to_string(),
                source: fields.get(sep + 2)?.to_string(),
            })
        })
        .next_back()
}

/// Whether `dir` is the root of a strata mount: a FUSE mount it serves, or an image mounted
/// read-only from the layer store (overlayfs named `strata`).
pub fn is_strata_mount(dir: &Path) -> bool {
    mount_entry(dir).is_some_and(|m| {
        (m.fstype.starts_with("fuse") && (m.source == "strata" || m.fstype == "fuse.strata"))
            || (m.fstype == "overlay" && m.source == "strata")
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Unmounts `dir`.
pub fn unmount(dir: &Path) -> io::Result<()> {
    match nix::mount::umount2(dir, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(dir)
                .status()?;
            if st.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -u {} failed",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// On SIGINT or SIGTERM (on runtime `rt`), calls `unmount(dir)` once: what a foreground server
/// does so that its mount goes with it (`strata mount`, `strata layer-store`).
pub fn unmount_on_signal(
    rt: &tokio::runtime::Handle,
    dir: std::path::PathBuf,
    unmount: impl FnOnce(&Path) + Send + 'static,
) {
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        unmount(&dir);
    });
}
