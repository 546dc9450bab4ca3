//! Snapshots of a directory tree for comparison, and the independent reference extraction:
//! GNU tar extracts each layer, whiteouts become overlayfs whiteouts, and the kernel's overlayfs
//! merges the layers.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// What is compared of each entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// dir, reg, symlink, char, block, fifo, socket.
    pub kind: &'static str,
    /// Permission and special bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size (regular files).
    pub size: u64,
    /// mtime seconds (not for symlinks).
    pub mtime: i64,
    /// Device number.
    pub rdev: u64,
    /// sha256 of the content.
    pub content: Option<String>,
    /// Symlink target.
    pub link: Option<Vec<u8>>,
    /// Extended attributes (without overlayfs' own).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// For files with several links: the first path (in walk order) of the same inode.
    pub hardlink_of: Option<Vec<u8>>,
}

/// Walks `root` (not following symlinks) into path → metadata; the root itself is left out.
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Meta> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<u8>> = HashMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<Vec<u8>, Meta>,
    inodes: &mut HashMap<u64, Vec<u8>>,
) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "reg"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let content =
            (kind == "reg").then(|| hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
        let link = (kind == "symlink").then(|| {
            std::fs::read_link(&p)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(&p)
            .map(|it| {
                it.filter_map(|n| {
                    let name = n.to_string_lossy().into_owned();
                    if name.starts_with("trusted.overlay.") || name.starts_with("security.") {
                        return None;
                    }
                    let v = xattr::get(&p, &n).ok().flatten().unwrap_or_default();
                    Some((name, v))
                })
                .collect()
            })
            .unwrap_or_default();
        xattrs.sort();
        let hardlink_of = if kind == "reg" && m.nlink() > 1 {
            Some(inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone())
        } else {
            None
        };
        out.insert(
            rel,
            Meta {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == "reg" { m.size() } else { 0 },
                mtime: if kind == "symlink" { 0 } else { m.mtime() },
                rdev: if matches!(kind, "char" | "block") {
                    m.rdev()
                } else {
                    0
                },
                content,
                link,
                xattrs,
                hardlink_of,
            },
        );
        if kind == "dir" {
            walk(root, &p, out, inodes);
        }
    }
}

/// Asserts two snapshots are equal, naming the first few differences.
pub fn assert_same(what: &str, got: &BTreeMap<Vec<u8>, Meta>, want: &BTreeMap<Vec<u8>, Meta>) {
    let mut diffs = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => diffs.push(format!("missing {:?}", String::from_utf8_lossy(p))),
            Some(g) if g != w => diffs.push(format!(
                "{:?}: got {g:?}, want {w:?}",
                String::from_utf8_lossy(p)
            )),
            _ => {}
        }
    }
    for p in got.keys() {
        if !want.contains_key(p) {
            diffs.push(format!("unexpected {:?}", String::from_utf8_lossy(p)));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(15)].join("\n")
    );
}

/// A reference tree: the layers extracted by GNU tar and merged by kernel overlayfs.
pub struct ReferenceTree {
    /// The merged root.
    pub root: PathBuf,
    mounted: bool,
    _dir: tempfile::TempDir,
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Layers extracted by GNU tar, with OCI whiteouts turned into overlayfs ones.
pub struct ExtractedLayers {
    dir: tempfile::TempDir,
    lowers: Vec<PathBuf>,
}

impl ExtractedLayers {
    /// The layer directories, bottom first.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.lowers
    }
}

/// Extracts `tars` (bottom first), each into its own directory.
pub fn extract_layers(tars: &[Vec<u8>]) -> ExtractedLayers {
    let dir = tempfile::tempdir().unwrap();
    let mut lowers = Vec::new();
    for (i, tar) in tars.iter().enumerate() {
        let l = dir.path().join(format!("l{i}"));
        std::fs::create_dir(&l).unwrap();
        let tf = dir.path().join(format!("l{i}.tar"));
        std::fs::write(&tf, tar).unwrap();
        sh(Command::new("tar")
            .args(["-xpf"])
            .arg(&tf)
            .arg("-C")
            .arg(&l)
            .args([
                "--numeric-owner",
                "--same-owner",
                "--delay-directory-restore",
                "--xattrs",
                "--xattrs-include=*",
            ]));
        to_overlay_whiteouts(&l);
        lowers.push(l);
    }
    ExtractedLayers { dir, lowers }
}

impl ReferenceTree {
    /// Extracts `tars` (bottom first) and merges them.
    pub fn new(tars: &[Vec<u8>]) -> Self {
        let ExtractedLayers { dir, mut lowers } = extract_layers(tars);
        if lowers.len() == 1 {
            return Self {
                root: lowers.remove(0),
                mounted: false,
                _dir: dir,
            };
        }
        let merged = dir.path().join("merged");
        std::fs::create_dir(&merged).unwrap();
        let lowerdir: Vec<String> = lowers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect();
        sh(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
            .arg(&merged));
        Self {
            root: merged,
            mounted: true,
            _dir: dir,
        }
    }
}

impl Drop for ReferenceTree {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.root).status();
        }
    }
}

/// Turns OCI whiteouts into overlayfs ones, keeping directory mtimes as tar set them.
fn to_overlay_whiteouts(dir: &Path) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let dir_mtime = std::fs::metadata(dir).unwrap().modified().unwrap();
    let mut changed = false;
    for p in entries {
        let name = p.file_name().unwrap().as_bytes().to_vec();
        if name == b".wh..wh..opq" {
            std::fs::remove_file(&p).unwrap();
            xattr::set(dir, "trusted.overlay.opaque", b"y").unwrap();
            changed = true;
        } else if let Some(hidden) = name.strip_prefix(b".wh.") {
            std::fs::remove_file(&p).unwrap();
            let target = dir.join(std::ffi::OsStr::from_bytes(hidden));
            sh(Command::new("mknod").arg(&target).args(["c", "0", "0"]));
            changed = true;
        } else if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            to_overlay_whiteouts(&p);
        }
    }
    if changed {
        std::fs::File::open(dir)
            .unwrap()
            .set_modified(dir_mtime)
            .unwrap();
    }
}
