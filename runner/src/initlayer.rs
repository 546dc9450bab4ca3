//! docker's init layer: the entries docker puts between an image and a container's own changes
//! (`/.dockerenv`, `/dev/console`, `/dev/pts`, `/dev/shm`, `/etc/mtab` → `/proc/mounts`), so a
//! container's root holds what it holds under docker (scripts test `/.dockerenv`; `export`
//! lists them). strata writes them into a new container's upper layer before its first mount;
//! they are not the container's changes, so `commit` and the container's size leave them out
//! ([`is_init_entry`]).

use std::path::Path;

/// What docker's init layer holds (besides the mount points strata's runner makes itself).
const ENTRIES: [(&str, Kind); 5] = [
    (".dockerenv", Kind::File),
    ("dev/console", Kind::File),
    ("dev/pts", Kind::Dir),
    ("dev/shm", Kind::Dir),
    ("etc/mtab", Kind::Link("/proc/mounts")),
];

#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
    Link(&'static str),
}

/// A problem writing the init entries into an upper layer.
#[derive(Debug, thiserror::Error)]
#[error("creating {path} in the container's writable layer: {source}")]
pub struct InitLayerError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Writes the init entries into `upper` (a container's writable layer, not mounted yet);
/// missing parent directories are made as docker's init layer makes them (0755).
pub fn write(upper: &Path) -> Result<(), InitLayerError> {
    use std::os::unix::fs::DirBuilderExt;
    for (rel, kind) in ENTRIES {
        let path = upper.join(rel);
        let err = |source| InitLayerError {
            path: format!("/{rel}"),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(err)?;
        }
        if path.symlink_metadata().is_ok() {
            continue;
        }
        match kind {
            Kind::File => std::fs::File::create(&path).map(drop),
            Kind::Dir => std::fs::DirBuilder::new().mode(0o755).create(&path),
            Kind::Link(to) => std::os::unix::fs::symlink(to, &path),
        }
        .map_err(err)?;
    }
    Ok(())
}

/// Whether `rel` (a path in a container's upper layer, relative) is an init entry as
/// [`write`] made it: an empty file, a directory with nothing of the container's in it, or the
/// link it was. A file the container wrote to is its change and not skipped.
pub fn is_init_entry(rel: &Path, meta: &std::fs::Metadata, upper: &Path) -> bool {
    let Some((_, kind)) = ENTRIES.iter().find(|(p, _)| Path::new(p) == rel) else {
        // A directory made (or copied up) only to hold init entries is not a change either.
        let holds_entries = ENTRIES
            .iter()
            .any(|(p, _)| Path::new(p).parent() == Some(rel));
        return holds_entries
            && meta.is_dir()
            && std::fs::read_dir(upper.join(rel)).is_ok_and(|d| {
                d.flatten().all(|e| {
                    let child = rel.join(e.file_name());
                    e.path()
                        .symlink_metadata()
                        .is_ok_and(|m| is_init_entry(&child, &m, upper))
                })
            });
    };
    match kind {
        Kind::File => meta.is_file() && meta.len() == 0,
        Kind::Dir => {
            meta.is_dir()
                && std::fs::read_dir(upper.join(rel)).is_ok_and(|mut d| d.next().is_none())
        }
        Kind::Link(to) => {
            meta.file_type().is_symlink()
                && std::fs::read_link(upper.join(rel)).is_ok_and(|t| t == Path::new(to))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_docker_init_entries_and_recognises_only_unchanged_ones() {
        let d = tempfile::tempdir().unwrap();
        let upper = d.path().join("upper");
        write(&upper).unwrap();
        // Idempotent: a restarted container's upper keeps what it has.
        write(&upper).unwrap();
        assert_eq!(
            std::fs::read_link(upper.join("etc/mtab")).unwrap(),
            Path::new("/proc/mounts")
        );
        for rel in [
            ".dockerenv",
            "dev/console",
            "dev/pts",
            "dev/shm",
            "etc/mtab",
            "dev",
            "etc",
        ] {
            let meta = upper.join(rel).symlink_metadata().unwrap();
            assert!(is_init_entry(Path::new(rel), &meta, &upper), "{rel}");
        }
        std::fs::write(upper.join(".dockerenv"), b"changed").unwrap();
        std::fs::write(upper.join("dev/shm/x"), b"").unwrap();
        std::fs::write(upper.join("etc/passwd"), b"").unwrap();
        for rel in [".dockerenv", "dev/shm", "dev", "etc"] {
            let meta = upper.join(rel).symlink_metadata().unwrap();
            assert!(!is_init_entry(Path::new(rel), &meta, &upper), "{rel}");
        }
    }
}
