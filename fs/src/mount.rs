//! Mounting: options, the mount itself, unmounting and the kernel readahead setting.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fuser::{Config, MountOption, SessionACL};
use tracing::{debug, warn};

use crate::fuse::LazyFs;

/// Readahead for the mount's backing device, in KiB.
pub const READ_AHEAD_KB: u32 = 4096;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users (and containers' users) see the mount; needs root or `user_allow_other`.
    pub allow_other: bool,
    /// FUSE request threads; default 4.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: true,
            threads: 4,
        }
    }
}

fn config(opts: &MountOptions) -> Config {
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
    c.clone_fd = true;
    c
}

/// Mounts `fs` on `dir` and serves it until it is unmounted.
pub fn serve(fs: LazyFs, dir: &Path, opts: &MountOptions) -> io::Result<()> {
    let session = fuser::Session::new(fs, dir, &config(opts))?;
    set_read_ahead(dir);
    session.run()
}

/// Raises the kernel readahead of the FUSE mount at `dir` (best effort).
pub fn set_read_ahead(dir: &Path) {
    let Ok(m) = std::fs::metadata(dir) else { return };
    let dev = m.dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    let p = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    match std::fs::write(&p, READ_AHEAD_KB.to_string()) {
        Ok(()) => debug!(path = p, kb = READ_AHEAD_KB, "readahead raised"),
        Err(e) => warn!(path = p, error = %e, "could not raise readahead"),
    }
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// Whether `dir` is the root of a strata FUSE mount (from /proc/self/mountinfo).
pub fn is_strata_mount(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.get(4).is_some_and(|mp| unescape(mp) == canon.to_string_lossy())
            && fields.get(sep + 1).is_some_and(|t| t.starts_with("fuse") && t.contains("strata"))
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Unmounts `dir`.
pub fn unmount(dir: &Path) -> io::Result<()> {
    match nix::mount::umount2(dir, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let st = std::process::Command::new("fusermount3").arg("-u").arg(dir).status()?;
            if st.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!("fusermount3 -u {} failed", dir.display())))
            }
        }
        Err(e) => Err(io::Error::from(e)),
    }
}
