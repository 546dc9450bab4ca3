//! Mounts nobody serves: a strata FUSE mount whose server was killed answers every request
//! with ENOTCONN, and the overlays stacked on it (container roots, build steps) are as dead.
//! The next command that touches them unmounts them ([`sweep_root`], [`clear`]); so does a
//! new mount on the same directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};

/// How long a probe of a mount may take before its server is taken to be alive but busy.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// A container directory with no record and no mount is a killed command's once it is this old
/// (a live `run` or build step mounts it right after making it).
const ORPHAN_DIR_AGE: Duration = Duration::from_secs(10);

/// One mount of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    fstype: String,
    source: String,
    options: String,
}

impl Mount {
    fn is_strata_fuse(&self) -> bool {
        self.fstype.starts_with("fuse")
            && (self.source == "strata"
                || self.source == "strata-layer-store"
                || self.fstype == "fuse.strata")
    }

    /// The lower directories of an overlay mount.
    fn lowers(&self) -> Vec<PathBuf> {
        if self.fstype != "overlay" {
            return Vec::new();
        }
        self.options
            .split(',')
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map(|l| l.split(':').map(PathBuf::from).collect())
            .unwrap_or_default()
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn mounts() -> Vec<Mount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(parse_line).collect()
}

fn parse_line(l: &str) -> Option<Mount> {
    let fields: Vec<&str> = l.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    Some(Mount {
        point: PathBuf::from(unescape(fields.get(4)?)),
        fstype: fields.get(sep + 1)?.to_string(),
        source: fields.get(sep + 2)?.to_string(),
        options: fields.get(sep + 3).map(|o| unescape(o)).unwrap_or_default(),
    })
}

/// Which of `points` (FUSE mounts) have lost their server: a statfs of it fails with ENOTCONN
/// (or ECONNABORTED once aborted). statfs always goes to the server (a stat may be answered
/// from cached attributes) and the mount point's own needs no lookup. The probes run at once,
/// each on a thread of its own, so that a live but busy server (one still building its tree)
/// holds this command at most [`PROBE_WAIT`] in all: a probe that takes longer counts as alive.
fn dead_among(points: &[PathBuf]) -> Vec<PathBuf> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut asked = 0;
    for p in points {
        let (tx, p) = (tx.clone(), p.clone());
        let spawned = std::thread::Builder::new()
            .name("strata-probe".into())
            .spawn(move || {
                let dead = matches!(
                    nix::sys::statfs::statfs(&p),
                    Err(nix::errno::Errno::ENOTCONN | nix::errno::Errno::ECONNABORTED)
                );
                let _ = tx.send((p, dead));
            });
        if spawned.is_ok() {
            asked += 1;
        }
    }
    let deadline = std::time::Instant::now() + PROBE_WAIT;
    let mut dead = Vec::new();
    for _ in 0..asked {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((p, true)) => dead.push(p),
            Ok((_, false)) => {}
            Err(_) => break,
        }
    }
    dead
}

fn detach(point: &Path) -> bool {
    match nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => true,
        Err(e) => {
            warn!("unmounting stale mount {}: {e}", point.display());
            false
        }
    }
}

/// Unmounts the dead strata FUSE mounts that `pick` selects, overlays stacked on them first.
/// Returns the mount points unmounted.
fn unmount_dead(pick: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let all = mounts();
    let mut candidates: Vec<PathBuf> = all
        .iter()
        .filter(|m| m.is_strata_fuse() && pick(&m.point))
        .map(|m| m.point.clone())
        .collect();
    candidates.dedup();
    let mut done = Vec::new();
    for point in dead_among(&candidates) {
        // Overlays on it: by their lowerdir option, or (when that was given as a relative
        // path) as a container root beside it.
        let beside = point.parent().map(|d| d.join("rootfs"));
        let stacked = |o: &&Mount| {
            o.lowers().contains(&point)
                || (o.fstype == "overlay" && Some(&o.point) == beside.as_ref())
        };
        for o in all.iter().filter(stacked) {
            if !done.contains(&o.point) && detach(&o.point) {
                done.push(o.point.clone());
            }
        }
        if detach(&point) {
            done.push(point);
        }
    }
    debug!(unmounted = done.len(), "stale mounts checked");
    done
}

/// The file beside a container's `rootfs` naming the process that mounted it over the layer
/// store (its pid): the mount is that process's to unmount.
pub const ROOT_OWNER_FILE: &str = "rootfs.owner";

/// Container roots stacked over the layer store (overlayfs at `containers/*/rootfs`) whose
/// mounting process is gone: unmounted (lazily), since nobody else will.
fn unmount_orphan_roots(containers: &Path) -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| {
            m.fstype == "overlay"
                && m.point.starts_with(containers)
                && m.point.file_name().is_some_and(|n| n == "rootfs")
        })
        .filter(|m| {
            let owner = m.point.with_file_name(ROOT_OWNER_FILE);
            std::fs::read_to_string(owner)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .is_some_and(|pid| !strata_storage::leftovers::pid_alive(pid))
        })
        .filter_map(|m| detach(&m.point).then_some(m.point))
        .collect()
}

/// Aborts the connection of each container lower (`containers/*/lower`) whose serving process
/// (named by [`ROOT_OWNER_FILE`]) is gone. Killed while one of its own threads read that lower,
/// the process cannot end (the thread waits for an answer its dead server will never send), so
/// the connection stays open and looks alive: aborting it ends the wait, and the probe then
/// sees it dead.
fn abort_orphan_lowers(containers: &Path) {
    for m in mounts().into_iter().filter(|m| {
        m.is_strata_fuse()
            && m.point.starts_with(containers)
            && m.point.file_name().is_some_and(|n| n == "lower")
    }) {
        let owner = std::fs::read_to_string(m.point.with_file_name(ROOT_OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !strata_storage::leftovers::pid_alive(pid)) {
            match crate::abort::abort_connection(&m.point) {
                Ok(()) => debug!(lower = %m.point.display(), "orphaned lower's connection aborted"),
                Err(e) => warn!("aborting the connection of {}: {e}", m.point.display()),
            }
        }
    }
}

/// Unmounts every dead mount under the state root (containers' and build steps' roots and
/// lowers), and removes the directories killed commands left in `containers/` that have no
/// record and nothing mounted, calling `forget` with each one's id first (to remove what else
/// the container left: its cgroups). Returns the mount points unmounted.
pub fn sweep_root(root: &Path, forget: &dyn Fn(&str)) -> Vec<PathBuf> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let containers = root.join("containers");
    abort_orphan_lowers(&containers);
    let mut gone = unmount_dead(|p| p.starts_with(&containers));
    gone.extend(unmount_orphan_roots(&containers));
    remove_orphan_dirs(&containers, forget);
    gone
}

/// If `dir` is a strata mount whose server is gone, unmounts it; true if it did.
pub fn clear(dir: &Path) -> bool {
    // Only the parent is resolved: the mount point itself may be the dead mount.
    let (Some(name), Some(parent)) = (dir.file_name(), dir.parent()) else {
        return false;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(parent) = parent.canonicalize() else {
        return false;
    };
    let abs = parent.join(name);
    !unmount_dead(|p| p == abs).is_empty()
}

/// Removes `containers/<id>` directories without a `container.json` and without any mount
/// under them, once they are older than [`ORPHAN_DIR_AGE`]: what a killed build step or `run`
/// left between making its directory and recording the container.
fn remove_orphan_dirs(containers: &Path, forget: &dyn Fn(&str)) {
    let Ok(entries) = std::fs::read_dir(containers) else {
        return;
    };
    let mounted: Vec<PathBuf> = mounts().into_iter().map(|m| m.point).collect();
    for e in entries.flatten() {
        let dir = e.path();
        let old = e
            .metadata()
            .ok()
            .filter(|m| m.is_dir())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_DIR_AGE);
        if !old
            // Made by a container root (over the layer store, or with its own lower).
            || !(dir.join("upper").is_dir() || dir.join("lower").is_dir())
            || dir.join("container.json").exists()
            || mounted.iter().any(|p| p.starts_with(&dir))
        {
            continue;
        }
        forget(&e.file_name().to_string_lossy());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                debug!(dir = %dir.display(), "removed a killed command's container directory")
            }
            Err(e) => warn!("removing {}: {e}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_and_overlay_lowers() {
        let fuse = parse_line(
            "60 30 0:52 / /r/containers/a\\040b/lower ro,nosuid - fuse.strata strata ro,user_id=0",
        )
        .unwrap();
        assert!(fuse.is_strata_fuse());
        assert_eq!(fuse.point, Path::new("/r/containers/a b/lower"));
        let ovl = parse_line(
            "61 30 0:53 / /r/c/rootfs rw - overlay overlay rw,lowerdir=/r/c/lower,upperdir=/r/c/upper,workdir=/r/c/work,index=on",
        )
        .unwrap();
        assert!(!ovl.is_strata_fuse());
        assert_eq!(ovl.lowers(), vec![PathBuf::from("/r/c/lower")]);
    }
}
