//! The writable union of a container: kernel overlayfs with strata's read-only lazy FUSE mount
//! as its lower directory and a private upper directory on local disk (see ARCHITECTURE.md,
//! "Writable layer").

use std::io;
use std::path::Path;

/// Mounts overlayfs on `target`: `lower` (read-only) under `upper`, with `work` beside it.
/// `index=on` keeps hardlinks linked when one of them is copied up.
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=on",
        lower.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(io::Error::from)
}

/// Lazily unmounts `target` (it goes away when the last user lets go).
pub fn unmount_detached(target: &Path) -> io::Result<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}
