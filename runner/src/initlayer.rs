//! docker's init layer: the entries docker puts between an image and a container's own changes
//! (`/.dockerenv`, `/dev/console`, `/dev/pts`, `/dev/shm`, `/etc/mtab` → `/proc/mounts`), so a
//! container's root holds what it holds under docker (scripts test `/.dockerenv`; `export`
//! lists them). strata makes them in a new container's root before it first starts; they land
//! in its upper layer but are not the container's changes, so `commit` and the container's
//! size leave them out ([`is_init_entry`]).

use std::path::Path;

use crate::inroot::{InRoot, InRootError};

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

/// A problem creating the init entries in a container's root.
#[derive(Debug, thiserror::Error)]
#[error("creating {path} in the container: {source}")]
pub struct InitLayerError {
    path: String,
    #[source]
    source: InRootError,
}

/// Creates the init entries the container's root (`rootfs`, its overlay mounted) lacks,
/// resolved inside it (a link in the image never leads a write out of it). Made through the
/// overlay, a parent such as `/etc` is copied up with the image's owner and mode; an entry
/// the image has is left as it is.
pub fn write(rootfs: &Path) -> Result<(), InitLayerError> {
    let err = |rel: &str| {
        let path = format!("/{rel}");
        move |source| InitLayerError { path, source }
    };
    let r = InRoot::open(rootfs).map_err(err(""))?;
    for (rel, kind) in ENTRIES {
        let path = Path::new("/").join(rel);
        let exists = r
            .resolve_nofollow(&path)
            .is_ok_and(|h| h.symlink_metadata().is_ok());
        if exists {
            continue;
        }
        match kind {
            Kind::File => r.make_file(&path).map(drop),
            Kind::Dir => r.mkdir_all(&path).map(drop),
            Kind::Link(to) => r.place(&path).and_then(|host| {
                std::os::unix::fs::symlink(to, &host).map_err(|source| InRootError::HostPath {
                    path: path.clone(),
                    source,
                })
            }),
        }
        .map_err(err(rel))?;
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
        std::fs::create_dir(&upper).unwrap();
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

    #[test]
    fn a_link_in_the_image_never_leads_a_write_out_of_the_root() {
        let d = tempfile::tempdir().unwrap();
        let (root, outside) = (d.path().join("root"), d.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dev")).unwrap();
        std::fs::write(root.join(".dockerenv"), b"the image's").unwrap();
        write(&root).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // The absolute link is resolved inside the root.
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert!(inside.join("console").is_file());
        assert!(inside.join("pts").is_dir());
        // What the image has stays.
        assert_eq!(
            std::fs::read(root.join(".dockerenv")).unwrap(),
            b"the image's"
        );
    }
}
