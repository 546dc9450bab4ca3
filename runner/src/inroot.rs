//! The one path resolver for every path that comes from outside: a build context entry, a
//! COPY/ADD source or destination, a `-v` target, the working directory, a symlink inside an
//! image. A path is resolved inside its root as if the root were `/` — absolute symlinks and
//! `..` never lead out of it — by libpathrs (`openat2(2)` with `RESOLVE_IN_ROOT` where the
//! kernel has it, its checked userspace emulation elsewhere). Names are bytes throughout
//! (`Path`/`OsStr`), never converted to UTF-8.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors resolving a path inside a root.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    /// The root itself cannot be opened.
    #[error("opening root {root}: {source}")]
    Root {
        /// The root directory.
        root: PathBuf,
        /// Why.
        #[source]
        source: pathrs::error::Error,
    },
    /// `path` cannot be resolved (or created) inside the root.
    #[error("{path}: {source}")]
    Resolve {
        /// The path, as given (relative to the root).
        path: PathBuf,
        /// Why.
        #[source]
        source: pathrs::error::Error,
    },
    /// The resolved handle's host path cannot be read back.
    #[error("{path}: {source}")]
    HostPath {
        /// The path, as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl InRootError {
    /// The errno behind the failure, if it came from a system call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Root { source, .. } | Self::Resolve { source, .. } => match source.kind() {
                pathrs::error::ErrorKind::OsError(e) => e,
                pathrs::error::ErrorKind::SafetyViolation => Some(libc::EXDEV),
                _ => None,
            },
            Self::HostPath { source, .. } => source.raw_os_error(),
        }
    }

    /// Whether the path (or one of its components) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }
}

impl From<InRootError> for std::io::Error {
    fn from(e: InRootError) -> Self {
        match e.errno() {
            Some(n) => {
                let kind = std::io::Error::from_raw_os_error(n).kind();
                std::io::Error::new(kind, e)
            }
            None => std::io::Error::other(e),
        }
    }
}

/// A directory that paths are resolved inside of.
#[derive(Debug)]
pub struct InRoot {
    dir: PathBuf,
    root: pathrs::Root,
}

impl InRoot {
    /// Opens `dir` as a root.
    pub fn open(dir: &Path) -> Result<Self, InRootError> {
        let root = pathrs::Root::open(dir).map_err(|source| InRootError::Root {
            root: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            root,
        })
    }

    /// The root directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn host_of(&self, path: &Path, h: &impl AsFd) -> Result<PathBuf, InRootError> {
        let fd = h.as_fd().as_raw_fd();
        std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|source| InRootError::HostPath {
            path: path.to_path_buf(),
            source,
        })
    }

    fn err(path: &Path) -> impl FnOnce(pathrs::error::Error) -> InRootError + '_ {
        move |source| InRootError::Resolve {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The host path of `path`, every symlink (the last one too) followed inside the root.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, InRootError> {
        let h = self.root.resolve(or_root(path)).map_err(Self::err(path))?;
        self.host_of(path, &h)
    }

    /// The host path of `path` with its parents resolved inside the root and its last
    /// component taken as it is (a symlink stays the link).
    pub fn resolve_nofollow(&self, path: &Path) -> Result<PathBuf, InRootError> {
        let h = self
            .root
            .resolve_nofollow(or_root(path))
            .map_err(Self::err(path))?;
        self.host_of(path, &h)
    }

    /// Creates the directory `path` and its missing parents (mode 0755 before the umask)
    /// inside the root; returns its host path. A dangling symlink on the way has its target
    /// created (inside the root), as strata always did for bind targets and working
    /// directories.
    pub fn mkdir_all(&self, path: &Path) -> Result<PathBuf, InRootError> {
        let perm = std::fs::Permissions::from_mode(0o755);
        let mut at = path.to_path_buf();
        for _ in 0..MAX_LINKS {
            match self.root.mkdir_all(or_root(&at), &perm) {
                Ok(h) => return self.host_of(path, &h),
                Err(e) => match self.through_dangling(&at) {
                    Some(next) => at = next,
                    None => return Err(Self::err(path)(e)),
                },
            }
        }
        Err(InRootError::HostPath {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ELOOP),
        })
    }

    /// The host path of the file `path`, created empty (0644) if missing; a dangling symlink
    /// on the way, the last component included, has its target created inside the root, so
    /// nothing is ever created or truncated through a link that points at the host.
    pub fn make_file(&self, path: &Path) -> Result<PathBuf, InRootError> {
        let mut at = path.to_path_buf();
        for _ in 0..MAX_LINKS {
            match self.resolve(&at) {
                Ok(host) => return Ok(host),
                Err(e) if !e.is_not_found() => return Err(e),
                Err(_) => {}
            }
            if let Some(next) = self.through_dangling(&at) {
                at = next;
                continue;
            }
            let host = self.place(&at)?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&host)
                .map_err(|source| InRootError::HostPath {
                    path: path.to_path_buf(),
                    source,
                })?;
            return Ok(host);
        }
        Err(InRootError::HostPath {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ELOOP),
        })
    }

    /// `path` with its first dangling symlink replaced by the link's target, so that making
    /// the result makes what the link points at; `None` when no component is one.
    fn through_dangling(&self, path: &Path) -> Option<PathBuf> {
        let comps: Vec<_> = path.components().collect();
        let mut prefix = PathBuf::from("/");
        for (i, c) in comps.iter().enumerate() {
            prefix.push(c);
            let h = self.root.resolve_nofollow(&prefix).ok()?;
            let host = self.host_of(&prefix, &h).ok()?;
            if !std::fs::symlink_metadata(&host)
                .ok()?
                .file_type()
                .is_symlink()
            {
                continue;
            }
            match self.root.resolve(&prefix) {
                Ok(_) => continue,
                Err(_) => {
                    let target = self.root.readlink(&prefix).ok()?;
                    let mut next = match prefix.parent() {
                        Some(parent) if target.is_relative() => parent.join(&target),
                        _ => PathBuf::from("/").join(&target),
                    };
                    next.extend(&comps[i + 1..]);
                    return Some(next);
                }
            }
        }
        None
    }

    /// Where a new entry `path` goes: its parent created and resolved inside the root, its
    /// last component as it is (not followed). `None` for the root itself.
    pub fn place(&self, path: &Path) -> Result<PathBuf, InRootError> {
        let parent = path.parent().unwrap_or(Path::new(""));
        let dir = self.mkdir_all(parent)?;
        Ok(match last_name(path) {
            Some(n) => dir.join(n),
            None => dir,
        })
    }
}

/// Symlinks followed before giving up, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// `path`, or `/` (the root itself) when it is empty.
fn or_root(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new("/")
    } else {
        path
    }
}

/// The last normal component of `path` (`None` for `/`, `.` or `..` endings).
fn last_name(path: &Path) -> Option<&std::ffi::OsStr> {
    match path.components().next_back()? {
        std::path::Component::Normal(n) => Some(n),
        _ => None,
    }
}

/// Resolves `path` inside `root` in one call (see [`InRoot::resolve`]), creating missing
/// directories when `create`.
pub fn resolve_in(root: &Path, path: &Path, create: bool) -> Result<PathBuf, InRootError> {
    let r = InRoot::open(root)?;
    if create {
        r.mkdir_all(path)
    } else {
        r.resolve(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("pw")).unwrap();
        let r = InRoot::open(&root).unwrap();
        let p = |s: &str| Path::new(s).to_path_buf();
        assert_eq!(
            r.resolve(&p("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            r.resolve(&p("rel/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(r.resolve(&p("pw")).unwrap(), root.join("etc/passwd"));
        assert_eq!(r.resolve_nofollow(&p("pw")).unwrap(), root.join("pw"));
        assert!(
            r.resolve(&p("../../etc/shadow"))
                .unwrap_err()
                .is_not_found()
        );
        assert!(r.resolve(&p("loop/x")).is_err());
        let made = r.mkdir_all(&p("/abs/new/dir")).unwrap();
        assert_eq!(made, root.join("etc/new/dir"));
        assert!(made.is_dir());
        assert_eq!(r.place(&p("/rel/x/y")).unwrap(), root.join("etc/x/y"));
        // Through dangling links, absolute and relative, the target is made inside.
        std::os::unix::fs::symlink("/nowhere/deep", root.join("dangling")).unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("../../../gone", root.join("d/rel")).unwrap();
        let made = r.mkdir_all(&p("dangling/x")).unwrap();
        assert_eq!(made, root.join("nowhere/deep/x"));
        assert_eq!(r.mkdir_all(&p("/d/rel/y")).unwrap(), root.join("gone/y"));
        assert!(!Path::new("/nowhere/deep").exists() && !Path::new("/gone").exists());
        assert!(r.mkdir_all(&p("loop/x")).is_err());
        // A file through a dangling link (like an image's /etc/resolv.conf -> /run/...).
        let stub = format!("/run/strata-test-{}/stub.conf", std::process::id());
        std::os::unix::fs::symlink(&stub, root.join("etc/resolv.conf")).unwrap();
        let made = r.make_file(&p("/etc/resolv.conf")).unwrap();
        assert_eq!(made, root.join(&stub[1..]));
        assert!(made.is_file() && !Path::new(&stub).exists());
        assert_eq!(r.make_file(&p("/etc/resolv.conf")).unwrap(), made);
        assert_eq!(
            r.make_file(&p("etc/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        // Names are bytes.
        let odd = std::ffi::OsStr::from_bytes(b"d-\xe4/f-\xff");
        let made = r.mkdir_all(Path::new(odd)).unwrap();
        assert_eq!(made, root.join(odd));
        assert!(root.join(odd).is_dir());
    }
}
