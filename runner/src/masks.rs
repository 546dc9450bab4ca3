//! What a container sees of the kernel beyond its image: docker's masked and read-only paths
//! in /proc and /sys (unless `--privileged`), and for `--privileged` the host's device nodes.

use std::path::Path;

use nix::mount::MsFlags;

use crate::kernel::{Fail, Kernel, ctx, mount_at};

/// The device nodes every container's /dev holds: name, major, minor (runc's default set).
pub(crate) const DEFAULT_NODES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// What docker hides from a container: files get /dev/null bound over them, directories an
/// empty read-only tmpfs.
pub const MASKED_PATHS: [&str; 12] = [
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// What docker makes read-only (bound onto itself, remounted read-only).
pub const READONLY_PATHS: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Masks [`MASKED_PATHS`] and makes [`READONLY_PATHS`] read-only in the freshly mounted /proc
/// and /sys under `root` (paths the kernel does not have are skipped).
pub(crate) fn mask_paths(k: &mut impl Kernel, root: &Path) -> Result<(), Fail> {
    let fixed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for rel in MASKED_PATHS {
        let target = root.join(rel);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => mount_at(
                k,
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                fixed | MsFlags::MS_RDONLY,
                Some("size=0"),
            )?,
            // The container's own /dev/null (made by `setup_dev`), never the host's.
            Ok(m) if !m.file_type().is_symlink() => mount_at(
                k,
                Some(&root.join("dev/null").to_string_lossy()),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
            )?,
            _ => {}
        }
    }
    for rel in READONLY_PATHS {
        let target = root.join(rel);
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        let src = target.to_string_lossy().into_owned();
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount_at(k, Some(&src), &target, None, bind, None)?;
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | fixed;
        mount_at(k, None, &target, None, remount, None)?;
    }
    Ok(())
}

/// `--privileged`: every device node of the host's /dev (but its pts, shm and mqueue) that the
/// container's /dev does not have yet, as docker gives a privileged container.
pub(crate) fn host_devices(
    k: &mut impl Kernel,
    host: &Path,
    dev: &Path,
    depth: u32,
) -> Result<(), Fail> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(host) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        // Kept: what setup_dev made (the default nodes, pts, shm).
        let made = DEFAULT_NODES.iter().map(|(n, _, _)| *n);
        if depth == 0
            && ["pts", "shm", "mqueue"]
                .into_iter()
                .chain(made)
                .any(|n| name == *n)
        {
            continue;
        }
        let (src, dst) = (e.path(), dev.join(&name));
        let Ok(m) = std::fs::symlink_metadata(&src) else {
            continue;
        };
        let ft = m.file_type();
        if std::fs::symlink_metadata(&dst).is_ok() && !ft.is_dir() {
            continue;
        }
        if ft.is_dir() && depth < 3 {
            if !dst.exists() {
                ctx(std::fs::create_dir(&dst), || {
                    format!("creating {}", dst.display())
                })?;
            }
            host_devices(k, &src, &dst, depth + 1)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            ctx(k.mknod(&dst, m.mode(), m.rdev()), || {
                format!("creating device {}", dst.display())
            })?;
        }
    }
    Ok(())
}
