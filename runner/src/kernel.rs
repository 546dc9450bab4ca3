//! The privileged kernel calls of a container's setup, behind [`Kernel`] so the rootfs sequence
//! is unit-tested against a recording fake, and [`Fail`]: a setup failure with the exit code
//! docker gives it.

use std::path::Path;

use nix::mount::MsFlags;

use crate::EXIT_RUNTIME_ERROR;

/// A failure inside the container setup, with the exit code docker would give it.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: i32,
    pub(crate) msg: String,
}

impl Fail {
    /// The message, for callers outside the container's init (`exec`).
    pub(crate) fn into_message(self) -> String {
        self.msg
    }
}

/// A runtime failure (exit 125 from `run`) with `msg`.
pub(crate) fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        code: EXIT_RUNTIME_ERROR,
        msg: msg.into(),
    }
}

/// `r` with its error turned into a [`Fail`] that says what was being done.
pub(crate) fn ctx<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, Fail> {
    r.map_err(|e| fail(format!("{}: {e}", what())))
}

/// The privileged system calls of the rootfs sequence.
pub trait Kernel {
    /// mount(2).
    fn mount(
        &mut self,
        src: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// umount2(2) with MNT_DETACH.
    fn umount_detach(&mut self, target: &Path) -> nix::Result<()>;
    /// pivot_root(".", ".") in the current directory.
    fn pivot_root_here(&mut self) -> nix::Result<()>;
    /// chdir(2).
    fn chdir(&mut self, dir: &Path) -> nix::Result<()>;
    /// sethostname(2).
    fn sethostname(&mut self, name: &str) -> nix::Result<()>;
    /// Brings `lo` up in the current network namespace.
    fn loopback_up(&mut self) -> std::io::Result<()>;
    /// mknod(2) of a device node with exactly `mode` (type and permission bits).
    fn mknod(&mut self, path: &Path, mode: u32, rdev: u64) -> nix::Result<()>;
}

/// The real kernel.
#[derive(Debug, Default)]
pub struct Linux;

impl Kernel for Linux {
    fn mount(
        &mut self,
        src: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(src, target, fstype, flags, data)
    }
    fn umount_detach(&mut self, target: &Path) -> nix::Result<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
    }
    fn pivot_root_here(&mut self) -> nix::Result<()> {
        nix::unistd::pivot_root(".", ".")
    }
    fn chdir(&mut self, dir: &Path) -> nix::Result<()> {
        nix::unistd::chdir(dir)
    }
    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }
    fn loopback_up(&mut self) -> std::io::Result<()> {
        crate::sys::loopback_up()
    }
    fn mknod(&mut self, path: &Path, mode: u32, rdev: u64) -> nix::Result<()> {
        use nix::sys::stat::{Mode, SFlag};
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        nix::sys::stat::mknod(path, kind, perm, rdev)?;
        // mknod applies the umask; the node gets the host's permissions.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }
}

/// mount(2) through `k`, its failure naming the source and target.
pub(crate) fn mount_at(
    k: &mut impl Kernel,
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Fail> {
    ctx(k.mount(src, target, fstype, flags, data), || {
        format!(
            "mounting {} on {}",
            src.or(fstype).unwrap_or("?"),
            target.display()
        )
    })
}
