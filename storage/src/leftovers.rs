//! Temporaries of killed commands. Every temporary strata writes carries its owner's pid in its
//! name (`.tmp-<pid>-<n>-<name>` from [`crate::atomic::temp_path`], `.<name>.<pid>-<n>.tmp` for
//! private files); the next command removes those whose owner is dead ([`sweep`]) and
//! `system df` shows the ones still there ([`pending`]).

use std::fs;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

/// Temporaries found: how many and their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    /// Files and directories (a directory counts once).
    pub entries: u64,
    /// Bytes they hold.
    pub bytes: u64,
}

/// Directories (relative to the state root) whose entries may be temporaries; none of them
/// holds a container's own files.
const DIRS: [&str; 8] = [
    "",
    "tmp",
    "store",
    "store/blobs/sha256",
    "store/layers",
    "store/images",
    "cache/files",
    "cache/blobs",
];

/// The pid in a temporary's name, if it is one of strata's temporaries.
pub fn owner_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(".tmp-") {
        return digits(rest.split('-').next()?);
    }
    // `.<name>.<pid>-<n>.tmp`
    let stem = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let tail = stem.rsplit('.').next()?;
    let (pid, n) = tail.split_once('-')?;
    digits(n)?;
    digits(pid)
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Whether process `pid` exists and has not exited (this process counts as alive; a zombie,
/// which a parent or an init that does not reap leaves, does not; nor does a process being
/// killed: SIGKILL pending, it never runs its own code again, though a thread of it waiting on
/// a FUSE mount it served itself keeps it from ending until that mount is aborted).
pub fn pid_alive(pid: u32) -> bool {
    pid_alive_by_stat(pid)
        && !std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| kill_pending(&s))
}

/// SIGKILL's bit in the pending-signal masks of `/proc/PID/status`.
const SIGKILL_BIT: u64 = 1 << (nix::sys::signal::Signal::SIGKILL as u32 - 1);

/// Whether a `/proc/PID/status` text shows SIGKILL pending, for its thread (`SigPnd`) or its
/// process (`ShdPnd`).
fn kill_pending(status: &str) -> bool {
    status.lines().any(|l| {
        let Some((key, value)) = l.split_once(':') else {
            return false;
        };
        (key == "SigPnd" || key == "ShdPnd")
            && u64::from_str_radix(value.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
    })
}

fn pid_alive_by_stat(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    if matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    ) {
        return false;
    }
    // `pid (comm) S ...`: the state follows the last parenthesis.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => true,
    }
}

/// Whether `name` is a temporary whose owner is dead. Entries of `tmp/` that carry no pid (an
/// older strata's) count as dead after a day.
fn is_orphan(name: &str, in_tmp: bool, path: &Path) -> bool {
    match owner_pid(name) {
        Some(pid) => !pid_alive(pid),
        None if in_tmp => fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 24 * 3600),
        None => false,
    }
}

/// Every temporary under the state root (but not in the chunk cache's shards, which
/// [`crate::cache::ChunkCache`] sweeps as it lists them), with whether its owner is dead.
fn find(root: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = DIRS.iter().map(|d| root.join(d)).collect();
    // Container directories: their records' temporaries, never their upper layers.
    if let Ok(cs) = fs::read_dir(root.join("containers")) {
        dirs.push(root.join("containers"));
        dirs.extend(cs.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for dir in dirs {
        let in_tmp = dir == root.join("tmp");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let path = e.path();
            if in_tmp || owner_pid(&name).is_some() {
                let orphan = is_orphan(&name, in_tmp, &path);
                out.push((path, orphan));
            }
        }
    }
    out
}

/// Bytes under `path` (a file, or a directory walked without following symlinks).
pub fn size_of(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(path)
        .map(|d| d.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the temporaries under `root` whose owner is dead; returns what was removed.
pub fn sweep(root: &Path) -> Leftovers {
    let mut gone = Leftovers::default();
    for (path, orphan) in find(root) {
        if !orphan {
            continue;
        }
        let bytes = size_of(&path);
        match remove(&path) {
            Ok(()) => {
                debug!(path = %path.display(), bytes, "removed a dead command's temporary");
                gone.entries += 1;
                gone.bytes += bytes;
            }
            Err(e) => warn!("removing temporary {}: {e}", path.display()),
        }
    }
    if gone.entries > 0 {
        info!(
            entries = gone.entries,
            bytes = gone.bytes,
            "removed temporaries of killed commands"
        );
    }
    gone
}

/// The temporaries still under `root` (a running command's, or ones that could not be
/// removed).
pub fn pending(root: &Path) -> Leftovers {
    let mut l = Leftovers::default();
    for (path, _) in find(root) {
        l.entries += 1;
        l.bytes += size_of(&path);
    }
    l
}

/// Whether a chunk-cache entry named `name` is a temporary whose owner is dead.
pub(crate) fn is_dead_temporary(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !pid_alive(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_being_killed_is_not_alive() {
        let quiet = "Name:\tcat\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
        assert!(!kill_pending(quiet));
        assert!(kill_pending(&quiet.replace(
            "SigPnd:\t0000000000000000",
            "SigPnd:\t0000000000000100"
        )));
        assert!(!kill_pending(&quiet.replace(
            "ShdPnd:\t0000000000000000",
            "ShdPnd:\t0000000000004000"
        )));
        assert!(pid_alive(std::process::id()));
    }

    /// A pid no process has: the child's, once it has been reaped.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn a_zombie_is_dead() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        // Not reaped yet: a zombie once it has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pid_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!pid_alive(pid));
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "still a zombie"
        );
        c.wait().unwrap();
        assert!(pid_alive(std::process::id()));
    }

    #[test]
    fn names_carry_their_owner() {
        let t = crate::atomic::temp_path(Path::new("/x/tmp/convert"));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(owner_pid(&name), Some(std::process::id()));
        assert_eq!(owner_pid(".container.json.4242-7.tmp"), Some(4242));
        assert_eq!(owner_pid("container.json"), None);
        assert_eq!(owner_pid(".tmp-x-1-a"), None);
        assert_eq!(owner_pid("sha256"), None);
    }

    #[test]
    fn dead_owners_temporaries_go_live_ones_stay() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let dead = dead_pid();
        let tmp = root.join("tmp");
        fs::create_dir_all(tmp.join(format!(".tmp-{dead}-0-convert/sub"))).unwrap();
        fs::write(
            tmp.join(format!(".tmp-{dead}-0-convert/sub/layer")),
            [0u8; 1000],
        )
        .unwrap();
        let mine = crate::atomic::temp_path(&tmp.join("commit-layer"));
        fs::write(&mine, [1u8; 10]).unwrap();
        let c = root.join("containers/abc");
        fs::create_dir_all(c.join("upper")).unwrap();
        let upper_file = c.join(format!("upper/.tmp-{dead}-0-x"));
        fs::write(&upper_file, b"the container's own").unwrap();
        let rec_tmp = c.join(format!(".container.json.{dead}-3.tmp"));
        fs::write(&rec_tmp, b"{}").unwrap();
        fs::write(c.join("container.json"), b"{}").unwrap();

        assert_eq!(
            pending(root),
            Leftovers {
                entries: 3,
                bytes: 1012
            }
        );
        let gone = sweep(root);
        assert_eq!(gone.entries, 2);
        assert_eq!(gone.bytes, 1002);
        assert!(mine.exists(), "a live owner's temporary was removed");
        assert!(upper_file.exists(), "a file in an upper layer was touched");
        assert!(c.join("container.json").exists());
        assert!(!rec_tmp.exists());
        assert_eq!(
            pending(root),
            Leftovers {
                entries: 1,
                bytes: 10
            }
        );
    }
}
