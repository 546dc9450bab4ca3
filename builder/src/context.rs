//! The build context: `.dockerignore` rules, COPY/ADD sources resolved (globs included)
//! without leaving the context, and the content hash that keys the build cache.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use strata_runner::{InRoot, InRootError};

use sha2::{Digest as _, Sha256};

/// Errors about the build context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context directory cannot be used.
    #[error("build context {path}: {source}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `.dockerignore` pattern or a source glob is malformed.
    #[error("bad pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A source leaves the context.
    #[error("forbidden path outside the build context: {0}")]
    Outside(String),
    /// A source does not exist (or only matches excluded files).
    #[error(
        "file not found in build context or excluded by .dockerignore: stat {0}: file does not exist"
    )]
    NotFound(String),
    /// Reading a source failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// `path` made relative and normal: `.` dropped, `..` applied; `None` if it climbs out.
pub fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir if !out.pop() => return None,
            _ => {}
        }
    }
    Some(out)
}

fn glob(pattern: &str) -> Result<globset::GlobMatcher, ContextError> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| ContextError::Pattern {
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })
}

/// `.dockerignore` rules, as moby's `patternmatcher`: the last pattern that matches a path
/// (or one of its parents) decides; `!` patterns re-include, also below an excluded directory.
#[derive(Debug, Default)]
pub struct Ignore {
    rules: Vec<(globset::GlobMatcher, bool)>,
    /// The cleaned text of each `!` pattern, to know which excluded directories to enter.
    exceptions: Vec<String>,
}

impl Ignore {
    /// Parses `.dockerignore` text.
    pub fn parse(text: &str) -> Result<Self, ContextError> {
        let mut rules = Vec::new();
        let mut exceptions = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclude, pat) = match line.strip_prefix('!') {
                Some(p) => (false, p.trim()),
                None => (true, line),
            };
            let Some(cleaned) = clean(pat) else { continue };
            let cleaned = cleaned.to_string_lossy().into_owned();
            if cleaned.is_empty() {
                continue;
            }
            rules.push((glob(&cleaned)?, exclude));
            if !exclude {
                exceptions.push(cleaned);
            }
        }
        Ok(Self { rules, exceptions })
    }

    /// Whether an excluded directory `dir` must still be entered because a `!` pattern may
    /// re-include something below it: moby's walk enters it when an exception's text starts
    /// with `dir/` (its `TarWithOptions` rule).
    pub fn enter_excluded(&self, dir: &Path) -> bool {
        let dir_slash = format!("{}/", dir.to_string_lossy());
        self.exceptions
            .iter()
            .any(|e| format!("{e}/").starts_with(&dir_slash))
    }

    /// Whether the context-relative `rel` is excluded.
    pub fn excluded(&self, rel: &Path) -> bool {
        let mut verdict = false;
        for (m, exclude) in &self.rules {
            let hit = rel
                .ancestors()
                .any(|a| !a.as_os_str().is_empty() && m.is_match(a));
            if hit {
                verdict = *exclude;
            }
        }
        verdict
    }
}

/// Where sources are taken from: the build context (with its ignore rules) or another
/// stage's or image's root. Every path is resolved inside that root by the one resolver
/// ([`InRoot`]): a symlink, absolute or relative, never leads out of it, so nothing outside
/// the context is ever read.
#[derive(Debug)]
pub struct Sources {
    root: InRoot,
    ignore: Ignore,
}

impl Sources {
    /// The build context at `dir`, with its `.dockerignore`.
    pub fn context(dir: &Path) -> Result<Self, ContextError> {
        let open = |source| ContextError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let canon = dir.canonicalize().map_err(open)?;
        let root = InRoot::open(&canon).map_err(|e| open(e.into()))?;
        let ignore = match root
            .resolve(Path::new(".dockerignore"))
            .and_then(|p| std::fs::read_to_string(p).map_err(|e| inroot_io(".dockerignore", e)))
        {
            Ok(t) => Ignore::parse(&t)?,
            Err(_) => Ignore::default(),
        };
        Ok(Self { root, ignore })
    }

    /// The root filesystem of a stage or image, mounted at `root`.
    pub fn image_root(root: &Path) -> Result<Self, ContextError> {
        let root = InRoot::open(root).map_err(|e| ContextError::Open {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Self {
            root,
            ignore: Ignore::default(),
        })
    }

    /// The directory sources are relative to.
    pub fn root(&self) -> &Path {
        self.root.dir()
    }

    /// Whether `rel` is left out by `.dockerignore`.
    pub fn excluded(&self, rel: &Path) -> bool {
        self.ignore.excluded(rel)
    }

    /// The host path of the source `rel`, its symlinks (the last one too, as COPY follows a
    /// source that is a link) resolved inside the root.
    pub fn host_path(&self, rel: &Path) -> Result<PathBuf, ContextError> {
        self.root.resolve(rel).map_err(|e| self.unresolved(rel, e))
    }

    /// The error for a source that does not resolve: docker's "outside the build context"
    /// when a symlink on its way points out of the root, else not found.
    fn unresolved(&self, rel: &Path, e: InRootError) -> ContextError {
        let shown = rel.display().to_string();
        if let Some((link, target)) = escaping_link(self.root.dir(), rel) {
            return ContextError::Outside(format!(
                "{shown} (symlink {} -> {})",
                link.display(),
                target.display()
            ));
        }
        if e.is_not_found() {
            ContextError::NotFound(shown)
        } else {
            ContextError::Read {
                path: rel.to_path_buf(),
                source: e.into(),
            }
        }
    }

    /// The relative paths `src` names: one path, or every match of a glob (component by
    /// component, `*` never crossing `/`), excluded paths left out.
    pub fn resolve(&self, src: &str) -> Result<Vec<PathBuf>, ContextError> {
        let rel = clean(src).ok_or_else(|| ContextError::Outside(src.to_string()))?;
        if !has_glob(src) {
            self.host_path(&rel)?;
            if !rel.as_os_str().is_empty() && self.excluded(&rel) {
                return Err(ContextError::NotFound(src.to_string()));
            }
            return Ok(vec![rel]);
        }
        let mut found = vec![PathBuf::new()];
        for comp in rel.components() {
            let name = comp.as_os_str();
            let pattern = name.to_string_lossy();
            let mut next = Vec::new();
            for base in &found {
                if !has_glob(&pattern) {
                    let p = base.join(name);
                    if self.root.resolve_nofollow(&p).is_ok() {
                        next.push(p);
                    }
                    continue;
                }
                let m = glob(&pattern)?;
                let Ok(dir) = self.host_path(base) else {
                    continue;
                };
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<_> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .filter(|n| m.is_match(Path::new(n)))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            }
            found = next;
        }
        found.retain(|p| !self.excluded(p));
        for p in &found {
            self.host_path(p)?;
        }
        if found.is_empty() {
            return Err(ContextError::NotFound(src.to_string()));
        }
        Ok(found)
    }

    /// Every entry at and under `rel` that is not excluded, parents first, sorted, each with
    /// its host path: `rel` itself followed if it is a symlink, entries below it not. An
    /// excluded directory is entered when a `!` pattern may re-include something below it
    /// (as moby does) and kept only as the parent of what is re-included.
    pub fn walk(&self, rel: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ContextError> {
        let mut out = vec![(rel.to_path_buf(), self.host_path(rel)?)];
        let mut implied = Vec::new();
        let mut i = 0;
        while i < out.len() {
            let (r, p) = out[i].clone();
            let read_err = |source| ContextError::Read {
                path: r.clone(),
                source,
            };
            let meta = std::fs::symlink_metadata(&p).map_err(read_err)?;
            if meta.is_dir() {
                let mut names = Vec::new();
                for e in std::fs::read_dir(&p)
                    .map_err(read_err)?
                    .filter_map(Result::ok)
                {
                    let c = r.join(e.file_name());
                    if self.excluded(&c) {
                        let dir = e.file_type().is_ok_and(|t| t.is_dir());
                        if !(dir && self.ignore.enter_excluded(&c)) {
                            continue;
                        }
                        implied.push(c.clone());
                    }
                    names.push((c, p.join(e.file_name())));
                }
                names.sort();
                out.splice(i + 1..i + 1, names);
            }
            i += 1;
        }
        // An entered directory from which nothing was re-included is left out, as moby's
        // context tar would not have it.
        let kept: Vec<PathBuf> = out
            .iter()
            .filter(|(r, _)| !implied.contains(r))
            .map(|(r, _)| r.clone())
            .collect();
        out.retain(|(r, _)| !implied.contains(r) || kept.iter().any(|k| k.starts_with(r)));
        Ok(out)
    }

    /// The size of the context as docker's CLI would send it: a tar of everything not
    /// excluded (512-byte headers, contents padded to 512, two closing blocks).
    pub fn tar_size(&self) -> Result<u64, ContextError> {
        let mut size = 1024;
        for (rel, p) in self.walk(Path::new(""))?.into_iter().skip(1) {
            let meta = std::fs::symlink_metadata(&p).map_err(|source| ContextError::Read {
                path: rel.clone(),
                source,
            })?;
            size += 512;
            if meta.is_file() {
                size += meta.len().div_ceil(512) * 512;
            }
        }
        Ok(size)
    }

    /// The name docker's classic builder gives the source `rel` in the step's history:
    /// `file:SUM` for a file, `dir:HASH` for a directory (see [`crate::tarsum`]). A directory
    /// entered only for what `!` re-includes below it is not in docker's context tar and
    /// counts by its name; a symlink by the entry it leads to, as moby follows it.
    pub fn docker_hash(&self, rel: &Path) -> Result<String, ContextError> {
        let entries = self.walk(rel)?;
        let sum = |r: &Path, p: &Path| -> Result<String, ContextError> {
            let read_err = |source| ContextError::Read {
                path: r.to_path_buf(),
                source,
            };
            let link = std::fs::symlink_metadata(p).map_err(read_err)?;
            if !link.file_type().is_symlink() {
                return crate::tarsum::entry_sum(r, p).map_err(read_err);
            }
            let followed = self.root.resolve(r).ok();
            let target = followed
                .as_deref()
                .and_then(|t| t.strip_prefix(self.root.dir()).ok().map(|rel| (rel, t)));
            match target {
                Some((t_rel, t)) => crate::tarsum::entry_sum(t_rel, t).map_err(read_err),
                None => Ok(r.display().to_string()),
            }
        };
        let Some((first, first_host)) = entries.first() else {
            return Err(ContextError::NotFound(rel.display().to_string()));
        };
        if !std::fs::metadata(first_host).is_ok_and(|m| m.is_dir()) {
            return Ok(format!("file:{}", sum(first, first_host)?));
        }
        let mut sums = Vec::new();
        for (r, p) in &entries {
            if r.as_os_str().is_empty() {
                continue;
            }
            if self.excluded(r) {
                sums.push(r.display().to_string());
            } else {
                sums.push(sum(r, p)?);
            }
        }
        sums.sort();
        Ok(crate::tarsum::hash_strings("dir", &sums))
    }

    /// The content hash of the given sources: names, kinds, permission bits, symlink targets
    /// and file contents of everything they copy (owners and times left out, as COPY sets
    /// them itself).
    pub fn hash(&self, srcs: &[PathBuf]) -> Result<String, ContextError> {
        let mut h = Sha256::new();
        for src in srcs {
            for (rel, p) in self.walk(src)? {
                let read_err = |source| ContextError::Read {
                    path: rel.clone(),
                    source,
                };
                let meta = std::fs::symlink_metadata(&p).map_err(read_err)?;
                h.update(rel.as_os_str().as_bytes());
                h.update([0]);
                h.update(format!("{:o}\0", meta.mode()).as_bytes());
                if meta.file_type().is_symlink() {
                    let t = std::fs::read_link(&p).map_err(read_err)?;
                    h.update(t.as_os_str().as_bytes());
                } else if meta.is_file() {
                    let mut f = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                        .open(&p)
                        .map_err(read_err)?;
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = f.read(&mut buf).map_err(read_err)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                }
                h.update([0xff]);
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

fn inroot_io(what: &str, e: std::io::Error) -> InRootError {
    InRootError::HostPath {
        path: PathBuf::from(what),
        source: e,
    }
}

/// The first symlink on the way to `rel` (looked at, never followed) whose target leaves
/// `root`: absolute, or climbing above it with `..`. For the error message only.
fn escaping_link(root: &Path, rel: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut at = PathBuf::new();
    for c in rel.components() {
        at.push(c);
        let meta = std::fs::symlink_metadata(root.join(&at)).ok()?;
        if !meta.file_type().is_symlink() {
            continue;
        }
        let target = std::fs::read_link(root.join(&at)).ok()?;
        let mut depth = i64::try_from(at.components().count()).unwrap_or(i64::MAX) - 1;
        let mut leaves = target.is_absolute();
        for t in target.components() {
            match t {
                Component::ParentDir => depth -= 1,
                Component::Normal(_) => depth += 1,
                _ => {}
            }
            leaves |= depth < 0;
        }
        return leaves.then_some((at, target));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_rules_like_docker() {
        let ig = Ignore::parse("# comment\n*.log\n!keep.log\nbuild/\n/secret\n**/*.tmp\n").unwrap();
        let cases = [
            ("a.log", true),
            ("keep.log", false),
            ("sub/a.log", false),
            ("build", true),
            ("build/x/y", true),
            ("secret", true),
            ("x/secret", false),
            ("deep/er/f.tmp", true),
            ("f.tmp", true),
            ("src/main.c", false),
        ];
        for (p, want) in cases {
            assert_eq!(ig.excluded(Path::new(p)), want, "{p}");
        }
    }

    #[test]
    fn sources_resolve_globs_and_refuse_escapes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src/sub")).unwrap();
        for f in [
            "a.txt",
            "b.txt",
            "c.md",
            "src/x.c",
            "src/sub/y.c",
            "skip.txt",
        ] {
            std::fs::write(d.path().join(f), f).unwrap();
        }
        std::fs::write(d.path().join(".dockerignore"), "skip.txt\n").unwrap();
        let s = Sources::context(d.path()).unwrap();
        let names = |v: Vec<PathBuf>| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(s.resolve("*.txt").unwrap()), ["a.txt", "b.txt"]);
        assert_eq!(names(s.resolve("src/*.c").unwrap()), ["src/x.c"]);
        assert_eq!(names(s.resolve("./src/../c.md").unwrap()), ["c.md"]);
        assert!(matches!(
            s.resolve("../etc/passwd"),
            Err(ContextError::Outside(_))
        ));
        assert!(matches!(
            s.resolve("missing"),
            Err(ContextError::NotFound(_))
        ));
        assert!(matches!(
            s.resolve("skip.txt"),
            Err(ContextError::NotFound(_))
        ));
        assert_eq!(
            names(
                s.walk(Path::new("src"))
                    .unwrap()
                    .into_iter()
                    .map(|(r, _)| r)
                    .collect()
            ),
            ["src", "src/sub", "src/sub/y.c", "src/x.c"]
        );
        let before = s.hash(&[PathBuf::from("src")]).unwrap();
        assert_eq!(before, s.hash(&[PathBuf::from("src")]).unwrap());
        std::fs::write(d.path().join("src/sub/y.c"), "changed").unwrap();
        assert_ne!(before, s.hash(&[PathBuf::from("src")]).unwrap());
        // Excluded files do not count.
        let a = s.hash(&[PathBuf::new()]).unwrap();
        std::fs::write(d.path().join("skip.txt"), "other").unwrap();
        assert_eq!(a, s.hash(&[PathBuf::new()]).unwrap());
    }

    #[test]
    fn exceptions_reinclude_below_an_excluded_dir() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["secret/deep", "gone/x", "other"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        for f in [
            "secret/keep.txt",
            "secret/no.txt",
            "secret/deep/no.txt",
            "gone/x/f",
            "other/f",
        ] {
            std::fs::write(d.path().join(f), f).unwrap();
        }
        // moby's rules: `secret` excluded, `secret/keep.txt` re-included with its parent;
        // `gone` entered for an exception that matches nothing, so left out entirely.
        std::fs::write(
            d.path().join(".dockerignore"),
            "secret\n!secret/keep.txt\ngone\n!gone/x/nothere\n.dockerignore\n",
        )
        .unwrap();
        let s = Sources::context(d.path()).unwrap();
        let walked: Vec<String> = s
            .walk(Path::new(""))
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.display().to_string())
            .collect();
        assert_eq!(
            walked,
            ["", "other", "other/f", "secret", "secret/keep.txt"]
        );
        assert!(s.resolve("secret/no.txt").is_err());
        assert!(s.resolve("secret/keep.txt").is_ok());
    }
}
