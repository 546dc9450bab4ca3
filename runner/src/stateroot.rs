//! The state root is private: directories 0700 whatever the umask, files that hold a
//! container's environment or credentials 0600. A root made by an older strata (or under a
//! loose umask) is tightened the first time a command opens it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory strata makes private.
pub const DIR_MODE: u32 = 0o700;
/// Mode of files holding a container's environment or credentials.
pub const FILE_MODE: u32 = 0o600;

/// Files directly in the root, and in each container's directory, that hold secrets.
const ROOT_SECRETS: [&str; 1] = ["auth.json"];
/// The directories directly in the root.
const TOP_DIRS: [&str; 5] = ["store", "cache", "containers", "mounts", "tmp"];
const CONTAINER_SECRETS: [&str; 2] = ["spec.json", "container.json"];

fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Creates `dir` and its missing parents 0700 and sets `dir` itself to 0700, whatever the
/// umask.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    chmod(dir, DIR_MODE)
}

/// Writes `bytes` to `path` atomically (a temporary beside it, then a rename) with mode 0600,
/// its directory made private first.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        chmod(&tmp, FILE_MODE)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Overwrites the existing file `path` with `bytes` in place (no temporary, so it needs no new
/// blocks when the new content is no longer than the old one), durably. Not atomic: only for a
/// full disk, where the alternative is to lose the content.
pub fn rewrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let old = f.metadata()?.len();
    // Padding with spaces keeps JSON readable and the file within its blocks.
    let mut padded = bytes.to_vec();
    if (padded.len() as u64) < old {
        // A container record: a few KiB.
        padded.resize(usize::try_from(old).map_err(std::io::Error::other)?, b' ');
    }
    f.write_all_at(&padded, 0)?;
    f.set_len(padded.len() as u64)?;
    f.sync_all()
}

fn tighten_file(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o077 != 0 => chmod(path, FILE_MODE),
        _ => Ok(()),
    }
}

fn tighten_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && m.permissions().mode() & 0o7777 != DIR_MODE => chmod(path, DIR_MODE),
        _ => Ok(()),
    }
}

/// Makes the state root private: the root and strata's directories directly in it 0700
/// (created if missing), each container's directory 0700 and the files holding secrets
/// 0600. Only those are visited: never the cache's chunks, a container's upper layer (whose
/// modes are the container's own) or anything strata did not make.
pub fn secure_root(root: &Path) -> std::io::Result<()> {
    // The root itself is made private only when it is strata's: new, empty, or holding strata's
    // directories. `--root /tmp` must not chmod the host's /tmp (its top directories below are
    // private all the same, which is what keeps the state unreadable).
    if is_strata_root(root) {
        private_dir(root)?;
    } else {
        tracing::warn!(
            "{} is not a strata state root: its own mode is left as it is",
            root.display()
        );
    }
    // Made here, private, so code that later creates files in them under any umask finds
    // them already 0700.
    for d in TOP_DIRS {
        private_dir(&root.join(d))?;
    }
    for name in ROOT_SECRETS {
        tighten_file(&root.join(name))?;
    }
    let Ok(containers) = std::fs::read_dir(root.join("containers")) else {
        return Ok(());
    };
    for c in containers.flatten() {
        let dir = c.path();
        tighten_dir(&dir)?;
        for name in CONTAINER_SECRETS {
            tighten_file(&dir.join(name))?;
        }
    }
    Ok(())
}

/// Whether `root` is missing, or holds nothing but what strata puts in a state root (its top
/// directories, `auth.json`, `build-cache.json`, dot files): a directory that also holds
/// anything else (`--root /tmp`, `--root $HOME`) is not strata's to chmod.
fn is_strata_root(root: &Path) -> bool {
    const OTHER_ENTRIES: [&str; 9] = [
        "build-cache.json",
        "strata.log",
        "layers",
        "layers.sock",
        "layers.lock",
        "layers.log",
        "layers.journal",
        "layers.open",
        "layers-empty",
    ];
    let Ok(entries) = std::fs::read_dir(root) else {
        return true;
    };
    entries.flatten().all(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with('.')
            || TOP_DIRS.contains(&name.as_ref())
            || ROOT_SECRETS.contains(&name.as_ref())
            || OTHER_ENTRIES.contains(&name.as_ref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_directory_that_is_not_a_strata_root_keeps_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777).unwrap();
        std::fs::write(shared.join("someone-elses-file"), b"x").unwrap();
        secure_root(&shared).unwrap();
        secure_root(&shared).unwrap();
        let mode = std::fs::metadata(&shared).unwrap().mode() & 0o7777;
        assert_eq!(
            mode, 0o1777,
            "the shared directory's mode is kept, on later uses too"
        );
        let store = std::fs::metadata(shared.join("store")).unwrap().mode() & 0o777;
        assert_eq!(store, 0o700, "strata's own directories are private");
    }

    #[test]
    fn a_loose_root_is_tightened_and_secrets_are_written_private() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let c = root.join("containers/abc");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::create_dir_all(root.join("store")).unwrap();
        for p in [&root, &root.join("containers"), &c, &root.join("store")] {
            chmod(p, 0o777).unwrap();
        }
        std::fs::write(c.join("spec.json"), "{\"env\":[\"PW=x\"]}").unwrap();
        std::fs::write(c.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(root.join("auth.json"), "{}").unwrap();
        for f in [c.join("spec.json"), c.join("hosts"), root.join("auth.json")] {
            chmod(&f, 0o666).unwrap();
        }
        secure_root(&root).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        for p in [&root, &root.join("containers"), &c, &root.join("store")] {
            assert_eq!(mode(p), 0o700, "{}", p.display());
        }
        assert_eq!(mode(&c.join("spec.json")), 0o600);
        assert_eq!(mode(&root.join("auth.json")), 0o600);
        // Files bound into the container keep their modes.
        assert_eq!(mode(&c.join("hosts")), 0o666);
        let fresh = root.join("containers/def/container.json");
        write_private(&fresh, b"secret").unwrap();
        assert_eq!(mode(&fresh), 0o600);
        assert_eq!(mode(fresh.parent().unwrap()), 0o700);
        assert_eq!(std::fs::read(&fresh).unwrap(), b"secret");
    }
}
