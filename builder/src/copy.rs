//! Writing COPY and ADD results into a container root. Every destination is resolved inside
//! the root (its symlinks and `..` never lead out of it), so a hostile image cannot redirect
//! a write to the host.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use strata_runner::{InRoot, InRootError};

use crate::context::Sources;

/// Errors writing into the root.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The container path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A directory would be replaced by a file.
    #[error("cannot overwrite directory {0} with non-directory")]
    OverwriteDir(String),
    /// An archive entry would land outside its destination.
    #[error("archive entry {0:?} leaves the destination")]
    Escape(String),
    /// An archive entry's owner does not fit a uid/gid (32 bits).
    #[error("archive entry {0:?}: owner out of range")]
    Owner(String),
}

/// How copied entries are owned and moded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs {
    /// Owner (`--chown`); root otherwise.
    pub owner: (u32, u32),
    /// Permission bits for everything copied (`--chmod`).
    pub chmod: Option<u32>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

fn resolving<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(InRootError) -> CopyError + 'a {
    move |e| io(what, path)(e.into())
}

/// Makes room for a non-directory at `host`.
fn clear(host: &Path, path: &Path) -> Result<(), CopyError> {
    match std::fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => Err(CopyError::OverwriteDir(path.display().to_string())),
        Ok(_) => std::fs::remove_file(host).map_err(io("replacing", path)),
        Err(_) => Ok(()),
    }
}

fn set_attrs(
    host: &Path,
    path: &Path,
    mode: u32,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    std::os::unix::fs::lchown(host, Some(owner.0), Some(owner.1)).map_err(io("chown", path))?;
    let is_link = std::fs::symlink_metadata(host)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    if !is_link {
        std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io("chmod", path))?;
    }
    if let Some(t) = mtime {
        let ts = nix::sys::time::TimeSpec::new(t, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            host,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io("setting times of", path)(e.into()))?;
    }
    Ok(())
}

/// Creates the directory `path` (existing ones keep their content).
pub fn make_dir(
    root: &InRoot,
    path: &Path,
    mode: u32,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    let host = root.mkdir_all(path).map_err(resolving("creating", path))?;
    set_attrs(&host, path, mode, owner, mtime)
}

/// Writes the regular file `path` from `content`.
pub fn write_file(
    root: &InRoot,
    path: &Path,
    content: &mut dyn Read,
    mode: u32,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    let host = root.place(path).map_err(resolving("creating", path))?;
    clear(&host, path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc_nofollow())
        .open(&host)
        .map_err(io("creating", path))?;
    std::io::copy(content, &mut f).map_err(io("writing", path))?;
    drop(f);
    set_attrs(&host, path, mode, owner, mtime)
}

fn libc_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// Makes the symlink `path` → `target`.
pub fn write_symlink(
    root: &InRoot,
    path: &Path,
    target: &Path,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    let host = root.place(path).map_err(resolving("creating", path))?;
    clear(&host, path)?;
    std::os::unix::fs::symlink(target, &host).map_err(io("creating", path))?;
    set_attrs(&host, path, 0o777, owner, mtime)
}

/// Joins container paths (an empty `rel` is `dir` itself).
pub fn join(dir: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        return dir.to_path_buf();
    }
    dir.join(rel)
}

/// Copies the source `rel` (a file, symlink or directory of `from`) to the container path
/// `dest`; a directory's contents go into `dest`, as COPY does.
pub fn copy_source(
    root: &InRoot,
    from: &Sources,
    rel: &Path,
    dest: &Path,
    attrs: Attrs,
) -> Result<(), CopyError> {
    let walked = from.walk(rel).map_err(|e| CopyError::Io {
        what: "reading",
        path: rel.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for (entry, host) in walked {
        let sub = entry.strip_prefix(rel).unwrap_or(Path::new(""));
        let target = join(dest, sub);
        let meta = std::fs::symlink_metadata(&host).map_err(io("reading", &entry))?;
        let mode = attrs.chmod.unwrap_or(meta.mode());
        let mtime = Some(meta.mtime());
        let ft = meta.file_type();
        if ft.is_dir() {
            make_dir(root, &target, mode, attrs.owner, mtime)?;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&host).map_err(io("reading", &entry))?;
            write_symlink(root, &target, &t, attrs.owner, mtime)?;
        } else if ft.is_file() {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc_nofollow())
                .open(&host)
                .map_err(io("reading", &entry))?;
            write_file(root, &target, &mut f, mode, attrs.owner, mtime)?;
        }
        // Devices, fifos and sockets in a build context are skipped, as docker does.
    }
    Ok(())
}

/// Extracts a tar archive into the container directory `dest`, owners and modes as the
/// archive has them, names as the bytes the archive holds. Entries climbing out of `dest`
/// are refused.
pub fn extract(root: &InRoot, archive: Box<dyn Read>, dest: &Path) -> Result<(), CopyError> {
    let mut ar = tar::Archive::new(archive);
    let entries = ar.entries().map_err(io("reading archive for", dest))?;
    for e in entries {
        let mut e = e.map_err(io("reading archive for", dest))?;
        let raw = PathBuf::from(OsStr::from_bytes(&e.path_bytes()));
        let rel = contained(&raw)?;
        let target = join(dest, &rel);
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644);
        let id = |n: Option<u64>| u32::try_from(n.unwrap_or(0));
        let owner = match (id(h.uid().ok()), id(h.gid().ok())) {
            (Ok(u), Ok(g)) => (u, g),
            _ => return Err(CopyError::Owner(raw.display().to_string())),
        };
        // Times past 2^63 s are not times: treated as absent.
        let mtime = h.mtime().ok().and_then(|t| i64::try_from(t).ok());
        let link = e
            .link_name_bytes()
            .map(|t| PathBuf::from(OsStr::from_bytes(&t)));
        match h.entry_type() {
            tar::EntryType::Directory => make_dir(root, &target, mode, owner, mtime)?,
            tar::EntryType::Symlink => {
                write_symlink(root, &target, &link.unwrap_or_default(), owner, mtime)?;
            }
            tar::EntryType::Link => {
                let t_rel = contained(&link.unwrap_or_default())?;
                let t = join(dest, &t_rel);
                let src = root
                    .resolve_nofollow(&t)
                    .map_err(resolving("linking", &target))?;
                let host = root.place(&target).map_err(resolving("linking", &target))?;
                clear(&host, &target)?;
                std::fs::hard_link(&src, &host).map_err(io("linking", &target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                write_file(root, &target, &mut e, mode, owner, mtime)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// An archive entry name made relative; `..` anywhere is refused.
fn contained(raw: &Path) -> Result<PathBuf, CopyError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(CopyError::Escape(raw.display().to_string()));
            }
            _ => {}
        }
    }
    Ok(out)
}
