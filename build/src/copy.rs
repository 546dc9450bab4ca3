//! Writing COPY and ADD results into a container root. Every destination is resolved inside
//! the root (its symlinks and `..` never lead out of it), so a hostile image cannot redirect
//! a write to the host.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_runner::secure_join;

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
}

/// How copied entries are owned and moded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs {
    /// Owner (`--chown`); root otherwise.
    pub owner: (u32, u32),
    /// Permission bits for everything copied (`--chmod`).
    pub chmod: Option<u32>,
}

fn io<'a>(what: &'static str, path: &'a str) -> impl FnOnce(std::io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        what,
        path: path.to_string(),
        source,
    }
}

/// The host path where `path` (absolute, in the container) is written: its parent resolved
/// inside `root` (missing directories created), its last component as is.
fn place(root: &Path, path: &str) -> Result<PathBuf, CopyError> {
    let p = Path::new(path);
    let parent = p
        .parent()
        .map(|x| x.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = secure_join(root, &parent, true).map_err(io("creating", path))?;
    Ok(match p.file_name() {
        Some(n) => dir.join(n),
        None => dir,
    })
}

/// Makes room for a non-directory at `host`.
fn clear(host: &Path, path: &str) -> Result<(), CopyError> {
    match std::fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => Err(CopyError::OverwriteDir(path.to_string())),
        Ok(_) => std::fs::remove_file(host).map_err(io("replacing", path)),
        Err(_) => Ok(()),
    }
}

fn set_attrs(
    host: &Path,
    path: &str,
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
    root: &Path,
    path: &str,
    mode: u32,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    let host = secure_join(root, path, true).map_err(io("creating", path))?;
    set_attrs(&host, path, mode, owner, mtime)
}

/// Writes the regular file `path` from `content`.
pub fn write_file(
    root: &Path,
    path: &str,
    content: &mut dyn Read,
    mode: u32,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    let host = place(root, path)?;
    clear(&host, path)?;
    let mut f = std::fs::File::create(&host).map_err(io("creating", path))?;
    std::io::copy(content, &mut f).map_err(io("writing", path))?;
    drop(f);
    set_attrs(&host, path, mode, owner, mtime)
}

/// Makes the symlink `path` → `target`.
pub fn write_symlink(
    root: &Path,
    path: &str,
    target: &Path,
    owner: (u32, u32),
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    let host = place(root, path)?;
    clear(&host, path)?;
    std::os::unix::fs::symlink(target, &host).map_err(io("creating", path))?;
    set_attrs(&host, path, 0o777, owner, mtime)
}

/// Joins container paths.
pub fn join(dir: &str, rel: &Path) -> String {
    let rel = rel.to_string_lossy();
    match (dir.trim_end_matches('/'), rel.is_empty()) {
        ("", true) => "/".into(),
        (d, true) => d.to_string(),
        (d, false) => format!("{d}/{rel}"),
    }
}

/// Copies the source `rel` (a file, symlink or directory of `from`) to the container path
/// `dest`; a directory's contents go into `dest`, as COPY does.
pub fn copy_source(
    root: &Path,
    from: &Sources,
    rel: &Path,
    dest: &str,
    attrs: Attrs,
) -> Result<(), CopyError> {
    for entry in from.walk(rel).map_err(|e| CopyError::Io {
        what: "reading",
        path: rel.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })? {
        let sub = entry.strip_prefix(rel).unwrap_or(Path::new(""));
        let target = join(dest, sub);
        let host = from.host_path(&entry);
        let shown = entry.display().to_string();
        let meta = std::fs::symlink_metadata(&host).map_err(io("reading", &shown))?;
        let mode = attrs.chmod.unwrap_or(meta.mode());
        let mtime = Some(meta.mtime());
        let ft = meta.file_type();
        if ft.is_dir() {
            make_dir(root, &target, mode, attrs.owner, mtime)?;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&host).map_err(io("reading", &shown))?;
            write_symlink(root, &target, &t, attrs.owner, mtime)?;
        } else if ft.is_file() {
            let mut f = std::fs::File::open(&host).map_err(io("reading", &shown))?;
            write_file(root, &target, &mut f, mode, attrs.owner, mtime)?;
        }
        // Devices, fifos and sockets in a build context are skipped, as docker does.
    }
    Ok(())
}

/// Whether the bytes start a tar archive (possibly gzip- or zstd-compressed).
pub fn archive_reader(path: &Path) -> Option<Box<dyn Read>> {
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).ok()?;
    f.read_exact(&mut head).ok()?;
    let comp = strata_fetcher::plain::sniff(&head);
    let f = std::fs::File::open(path).ok()?;
    let mut r = strata_fetcher::plain::decompress(f, comp).ok()?;
    let mut block = vec![0u8; 512];
    r.read_exact(&mut block).ok()?;
    // A tar header: "ustar" magic, or (v7) a checksum that matches.
    let is_tar = &block[257..262] == b"ustar" || {
        let field = String::from_utf8_lossy(&block[148..156]);
        let stored =
            u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8).ok();
        let sum: u32 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        stored == Some(sum) && block[0] != 0
    };
    if !is_tar {
        return None;
    }
    let f = std::fs::File::open(path).ok()?;
    strata_fetcher::plain::decompress(f, comp).ok()
}

/// Extracts a tar archive into the container directory `dest`, owners and modes as the
/// archive has them. Entries climbing out of `dest` are refused.
pub fn extract(root: &Path, archive: Box<dyn Read>, dest: &str) -> Result<(), CopyError> {
    let mut ar = tar::Archive::new(archive);
    let entries = ar.entries().map_err(io("reading archive for", dest))?;
    for e in entries {
        let mut e = e.map_err(io("reading archive for", dest))?;
        let raw = e
            .path()
            .map_err(io("reading archive for", dest))?
            .to_string_lossy()
            .into_owned();
        let rel = crate::context::clean(&raw).ok_or_else(|| CopyError::Escape(raw.clone()))?;
        if raw.split('/').any(|c| c == "..") {
            return Err(CopyError::Escape(raw));
        }
        let target = join(dest, &rel);
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644);
        let owner = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
        let mtime = h.mtime().ok().map(|t| t as i64);
        match h.entry_type() {
            tar::EntryType::Directory => make_dir(root, &target, mode, owner, mtime)?,
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                write_symlink(root, &target, &t, owner, mtime)?;
            }
            tar::EntryType::Link => {
                let t = e
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let t_rel =
                    crate::context::clean(&t).ok_or_else(|| CopyError::Escape(t.clone()))?;
                let src = secure_join(root, &join(dest, &t_rel), false)
                    .map_err(io("linking", &target))?;
                let host = place(root, &target)?;
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
