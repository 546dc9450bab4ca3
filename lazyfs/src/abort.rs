//! Aborting a FUSE connection whose server is going away while readers still wait: every
//! request on it fails at once (ECONNABORTED) instead of leaving its process in D state, and
//! the server's loop ends. Through the fusectl filesystem
//! (`/sys/fs/fuse/connections/<dev>/abort`, mounted here if it is not yet).

use std::io;
use std::path::Path;

use tracing::{debug, warn};

use crate::mount::mount_entry;

const CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// The fusectl name of a connection: its superblock's device number (`major << 20 | minor`,
/// the kernel's own encoding; FUSE mounts have major 0).
pub(crate) fn connection_name(dev: &str) -> Option<String> {
    let (major, minor) = dev.split_once(':')?;
    let (major, minor) = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
    Some(((major << 20) | minor).to_string())
}

/// Aborts the FUSE connection of the mount at `dir` (found in mountinfo, without touching
/// `dir`). An error if `dir` is not a FUSE mount or the connection cannot be aborted.
pub fn abort_connection(dir: &Path) -> io::Result<()> {
    let entry = mount_entry(dir)
        .filter(|m| m.fstype.starts_with("fuse"))
        .ok_or_else(|| io::Error::other(format!("{} is not a FUSE mount", dir.display())))?;
    let name = connection_name(&entry.dev)
        .ok_or_else(|| io::Error::other(format!("device {} of {}", entry.dev, dir.display())))?;
    let conns = Path::new(CONNECTIONS);
    if !conns.join(&name).exists() {
        // Not mounted yet (a fresh machine or container): mount fusectl, then look again.
        let _ = nix::mount::mount(
            Some("fusectl"),
            conns,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    std::fs::write(conns.join(&name).join("abort"), b"1")?;
    debug!(dir = %dir.display(), connection = name, "FUSE connection aborted");
    Ok(())
}

/// Unmounts the FUSE mount at `dir` that this process serves and is about to stop serving: a
/// plain unmount; if something still uses it (a reader waiting), its connection is aborted
/// (the waiting requests fail) and it is detached. Returns whether the connection was aborted.
pub fn unmount_or_abort(dir: &Path) -> io::Result<bool> {
    match crate::mount::unmount(dir) {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            if let Err(e) = abort_connection(dir) {
                warn!("aborting the FUSE connection of {}: {e}", dir.display());
            }
            nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_are_kernel_device_numbers() {
        assert_eq!(connection_name("0:72").as_deref(), Some("72"));
        assert_eq!(connection_name("1:3").as_deref(), Some("1048579"));
        assert_eq!(connection_name("nope"), None);
    }
}
