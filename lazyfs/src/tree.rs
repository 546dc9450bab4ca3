//! The merged tree of an image: lower layers applied bottom to top from their indexes, with OCI
//! whiteouts (`.wh.NAME` hides NAME below) and opaque directories (`.wh..wh..opq` hides all that
//! lies below in that directory). Whiteout entries themselves never appear in the tree.

use std::sync::Arc;

use strata_formats::index::{Chunk, Entry, Kind, LayerIndex};

pub use crate::children::Children;

/// Prefix of whiteout entries.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Errors building the tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A hardlink names a path that does not exist.
    #[error("layer {layer}: hardlink {path:?} points to missing {target:?}")]
    DanglingHardlink {
        /// Index of the layer, bottom = 0.
        layer: usize,
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A hardlink points at a directory.
    #[error("layer {layer}: hardlink {path:?} points to a directory")]
    HardlinkToDir {
        /// Index of the layer.
        layer: usize,
        /// The link.
        path: String,
    },
}

/// File content: which layer's blob, and its chunks.
#[derive(Debug, Clone)]
pub struct Content {
    /// Index of the layer (into the mount's layer list).
    pub layer: usize,
    /// The chunks.
    pub chunks: Arc<[Chunk]>,
}

/// One inode of the merged tree.
#[derive(Debug, Clone)]
pub struct Node {
    /// Kind (never `Hardlink`: links share the target's node).
    pub kind: Kind,
    /// Permission bits plus setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: (i64, u32),
    /// Size of a regular file; symlink target length.
    pub size: u64,
    /// Symlink target.
    pub link: Vec<u8>,
    /// Device numbers.
    pub rdev: (u32, u32),
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Directory entries pointing at this node (subdirectory count + 2 for directories).
    pub nlink: u32,
    /// Parent directory (the first one that linked it).
    pub parent: u64,
    /// Regular file content.
    pub content: Option<Content>,
    /// Content held in memory (the layer store's `info` files), served as is.
    pub inline: Option<Arc<[u8]>>,
    /// Children of a directory, by name.
    pub children: Children,
}

impl Node {
    pub(crate) fn dir(parent: u64) -> Self {
        Self {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            size: 0,
            link: Vec::new(),
            rdev: (0, 0),
            xattrs: Vec::new(),
            nlink: 2,
            parent,
            content: None,
            inline: None,
            children: Children::default(),
        }
    }

    pub(crate) fn from_entry(e: &Entry, layer: usize, parent: u64) -> Self {
        Self {
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            size: match e.kind {
                Kind::Reg => e.size,
                Kind::Symlink => e.link.len() as u64,
                _ => 0,
            },
            link: if e.kind == Kind::Symlink {
                e.link.clone()
            } else {
                Vec::new()
            },
            rdev: e.rdev,
            xattrs: e.xattrs.clone(),
            nlink: if e.kind == Kind::Dir { 2 } else { 1 },
            parent,
            content: (e.kind == Kind::Reg && !e.chunks.is_empty()).then(|| Content {
                layer,
                chunks: e.chunks.clone().into(),
            }),
            inline: None,
            children: Children::default(),
        }
    }
}

/// The merged tree; inode N is `nodes[N - 1]`.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
}

pub(crate) fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

pub(crate) fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl Tree {
    /// Merges `layers`, bottom first.
    pub fn build<'a>(layers: impl IntoIterator<Item = &'a LayerIndex>) -> Result<Self, TreeError> {
        let mut t = Self {
            nodes: vec![Node::dir(ROOT_INO)],
        };
        for (li, layer) in layers.into_iter().enumerate() {
            t.apply(li, layer)?;
        }
        t.count_dir_links();
        for n in &mut t.nodes {
            n.children.freeze();
        }
        Ok(t)
    }

    /// The node of `ino`.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(strata_oci::usize_of(ino.checked_sub(1)?))
    }

    /// Number of inodes allocated.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is only the root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.get(parent)?.children.get(name)
    }

    /// Resolves a path (no symlinks followed).
    pub fn resolve(&self, path: &[u8]) -> Option<u64> {
        self.resolve_at(ROOT_INO, path)
    }

    /// Resolves a path below directory `base` (no symlinks followed).
    pub fn resolve_at(&self, base: u64, path: &[u8]) -> Option<u64> {
        let mut ino = base;
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            ino = self.lookup(ino, comp)?;
        }
        Some(ino)
    }

    /// The path of `ino` through the parent that first linked it, without a leading `/`.
    pub fn path_of(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let Some(parent) = self.get(cur).map(|n| n.parent) else {
                break;
            };
            let Some(name) = self.get(parent).and_then(|p| {
                p.children
                    .iter()
                    .find(|(_, c)| *c == cur)
                    .map(|(n, _)| lossy(n))
            }) else {
                break;
            };
            parts.push(name);
            cur = parent;
        }
        parts.reverse();
        parts.join("/")
    }

    pub(crate) fn node_mut(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[strata_oci::usize_of(ino - 1)]
    }

    pub(crate) fn alloc(&mut self, n: Node) -> u64 {
        self.nodes.push(n);
        self.nodes.len() as u64
    }

    /// The directory at `path`, created (with default attributes) where missing; a
    /// non-directory in the way is replaced.
    fn ensure_dir(&mut self, path: &[u8]) -> u64 {
        self.ensure_dir_at(ROOT_INO, path)
    }

    /// [`Self::ensure_dir`] below directory `base`.
    pub(crate) fn ensure_dir_at(&mut self, base: u64, path: &[u8]) -> u64 {
        let mut ino = base;
        for comp in path.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            ino = match self.lookup(ino, comp) {
                Some(c) if self.nodes[strata_oci::usize_of(c - 1)].kind == Kind::Dir => c,
                existing => {
                    if let Some(old) = existing {
                        self.unlink(ino, comp, old);
                    }
                    let d = self.alloc(Node::dir(ino));
                    self.node_mut(ino).children.insert(comp.to_vec(), d);
                    d
                }
            };
        }
        ino
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &[u8], child: u64) {
        self.node_mut(parent).children.remove(name);
        let c = self.node_mut(child);
        c.nlink = c.nlink.saturating_sub(1);
    }

    fn apply(&mut self, li: usize, layer: &LayerIndex) -> Result<(), TreeError> {
        // Whiteouts hide what lies below, so they go first.
        for e in &layer.entries {
            self.apply_whiteout(e);
        }
        for e in &layer.entries {
            self.apply_entry(li, e)?;
        }
        Ok(())
    }

    /// Applies `e` if it is a whiteout or an opaque marker.
    fn apply_whiteout(&mut self, e: &Entry) {
        let (dir, name) = split_parent(&e.path);
        if name == OPAQUE_MARKER {
            if let Some(d) = self
                .resolve(dir)
                .filter(|d| self.nodes[strata_oci::usize_of(*d - 1)].kind == Kind::Dir)
            {
                let names: Vec<(Vec<u8>, u64)> = self
                    .node_mut(d)
                    .children
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v))
                    .collect();
                for (n, c) in names {
                    self.unlink(d, &n, c);
                }
            }
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX)
            && let Some(d) = self.resolve(dir)
            && let Some(c) = self.lookup(d, hidden)
        {
            self.unlink(d, hidden, c);
        }
    }

    /// Applies `e` of layer `li` unless it is a whiteout.
    fn apply_entry(&mut self, li: usize, e: &Entry) -> Result<(), TreeError> {
        let (dir, name) = split_parent(&e.path);
        if name.starts_with(WHITEOUT_PREFIX) {
            return Ok(());
        }
        if e.path.is_empty() {
            let root = self.node_mut(ROOT_INO);
            root.mode = e.mode;
            root.uid = e.uid;
            root.gid = e.gid;
            root.mtime = e.mtime;
            root.xattrs = e.xattrs.clone();
            return Ok(());
        }
        let parent = self.ensure_dir(dir);
        let existing = self.lookup(parent, name);
        if e.kind == Kind::Hardlink {
            return self.apply_hardlink(li, e, parent, name, existing);
        }
        if let Some(old) = existing {
            let old_node = &mut self.nodes[strata_oci::usize_of(old - 1)];
            if old_node.kind == Kind::Dir && e.kind == Kind::Dir {
                old_node.mode = e.mode;
                old_node.uid = e.uid;
                old_node.gid = e.gid;
                old_node.mtime = e.mtime;
                old_node.xattrs = e.xattrs.clone();
                return Ok(());
            }
            self.unlink(parent, name, old);
        }
        let ino = self.alloc(Node::from_entry(e, li, parent));
        self.node_mut(parent).children.insert(name.to_vec(), ino);
        Ok(())
    }

    /// Links `name` in `parent` (where `existing` is) to the target of hardlink `e`.
    fn apply_hardlink(
        &mut self,
        li: usize,
        e: &Entry,
        parent: u64,
        name: &[u8],
        existing: Option<u64>,
    ) -> Result<(), TreeError> {
        let target = self
            .resolve(&e.link)
            .ok_or_else(|| TreeError::DanglingHardlink {
                layer: li,
                path: lossy(&e.path),
                target: lossy(&e.link),
            })?;
        if self.nodes[strata_oci::usize_of(target - 1)].kind == Kind::Dir {
            return Err(TreeError::HardlinkToDir {
                layer: li,
                path: lossy(&e.path),
            });
        }
        if existing == Some(target) {
            return Ok(());
        }
        if let Some(old) = existing {
            self.unlink(parent, name, old);
        }
        self.node_mut(target).nlink += 1;
        self.node_mut(parent).children.insert(name.to_vec(), target);
        Ok(())
    }

    fn count_dir_links(&mut self) {
        self.count_dir_links_from(0);
    }

    /// Sets the link count of the directories among `nodes[from..]`.
    pub(crate) fn count_dir_links_from(&mut self, from: usize) {
        for i in from..self.nodes.len() {
            if self.nodes[i].kind != Kind::Dir {
                continue;
            }
            let subdirs = self.nodes[i]
                .children
                .iter()
                .filter(|(_, c)| self.nodes[strata_oci::usize_of(*c - 1)].kind == Kind::Dir)
                .count();
            let subdirs = u32::try_from(subdirs).unwrap_or(u32::MAX - 2);
            self.nodes[i].nlink = 2 + subdirs;
        }
    }
}

/// A regular file whose one zstd chunk is `start..start+len` of the blob, for tests.
#[cfg(test)]
pub(crate) fn test_file_at(path: &str, start: u64, len: u64) -> Entry {
    use strata_formats::index::{Chunk, ChunkLoc};
    Entry {
        size: len,
        chunks: vec![Chunk {
            file_offset: 0,
            len,
            digest: Some(strata_oci::digest::Digest::of(path.as_bytes())),
            loc: ChunkLoc::Zstd {
                start,
                end: start + len,
            },
        }],
        ..test_entry(path, Kind::Reg)
    }
}

/// A bare index entry (mode 0644, owner root, no content), for tests.
#[cfg(test)]
pub(crate) fn test_entry(path: &str, kind: Kind) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: (0, 0),
        size: 0,
        link: Vec::new(),
        rdev: (0, 0),
        xattrs: Vec::new(),
        chunks: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: Kind) -> Entry {
        test_entry(path, kind)
    }

    fn layer(entries: Vec<Entry>) -> LayerIndex {
        LayerIndex { entries }
    }

    fn names(t: &Tree, path: &str) -> Vec<String> {
        let d = t.resolve(path.as_bytes()).unwrap();
        t.get(d)
            .unwrap()
            .children
            .iter()
            .map(|(k, _)| lossy(k))
            .collect()
    }

    #[test]
    fn whiteouts_and_opaque_dirs_across_layers() {
        let l0 = layer(vec![
            e("etc", Kind::Dir),
            e("etc/a", Kind::Reg),
            e("etc/b", Kind::Reg),
            e("var/lib/x", Kind::Reg),
            e("opt/keep", Kind::Reg),
        ]);
        let l1 = layer(vec![
            e("etc/.wh.a", Kind::Reg),
            e("var/lib/.wh..wh..opq", Kind::Reg),
            e("var/lib/y", Kind::Reg),
        ]);
        let l2 = layer(vec![
            e("etc/a", Kind::Dir),
            e("etc/a/new", Kind::Reg),
            e(".wh.opt", Kind::Reg),
        ]);
        let t = Tree::build([&l0, &l1, &l2]).unwrap();
        assert_eq!(names(&t, "etc"), ["a", "b"]);
        assert_eq!(t.get(t.resolve(b"etc/a").unwrap()).unwrap().kind, Kind::Dir);
        assert_eq!(names(&t, "var/lib"), ["y"]);
        assert_eq!(names(&t, ""), ["etc", "var"]);
        assert!(t.resolve(b"opt/keep").is_none());
        // Whiteout entries are never visible.
        assert!(!names(&t, "var/lib").iter().any(|n| n.starts_with(".wh.")));
    }

    #[test]
    fn opaque_dir_keeps_its_own_layer_entries() {
        let l0 = layer(vec![e("d/old", Kind::Reg)]);
        let l1 = layer(vec![
            e("d", Kind::Dir),
            e("d/.wh..wh..opq", Kind::Reg),
            e("d/new", Kind::Reg),
        ]);
        let t = Tree::build([&l0, &l1]).unwrap();
        assert_eq!(names(&t, "d"), ["new"]);
    }

    #[test]
    fn paths_of_inodes() {
        let t = Tree::build([&layer(vec![
            e("usr", Kind::Dir),
            e("usr/bin", Kind::Dir),
            e("usr/bin/python3", Kind::Reg),
        ])])
        .unwrap();
        let ino = t.resolve(b"usr/bin/python3").unwrap();
        assert_eq!(t.path_of(ino), "usr/bin/python3");
        assert_eq!(t.path_of(ROOT_INO), "");
    }

    #[test]
    fn a_built_directory_lists_from_any_index_in_name_order() {
        let l0 = layer(vec![
            e("d/c", Kind::Reg),
            e("d/a", Kind::Reg),
            e("d/b", Kind::Reg),
        ]);
        let l1 = layer(vec![e("d/.wh.b", Kind::Reg), e("d/aa", Kind::Reg)]);
        let t = Tree::build([&l0, &l1]).unwrap();
        let d = t.get(t.resolve(b"d").unwrap()).unwrap();
        assert!(
            matches!(d.children, Children::Sorted(_)),
            "frozen after the build"
        );
        let from = |i| -> Vec<String> { d.children.from(i).map(|(n, _)| lossy(n)).collect() };
        assert_eq!(from(0), ["a", "aa", "c"]);
        assert_eq!(from(1), ["aa", "c"]);
        assert_eq!(from(3), Vec::<String>::new());
        assert_eq!(from(9), Vec::<String>::new());
        assert_eq!(
            t.lookup(t.resolve(b"d").unwrap(), b"aa"),
            t.resolve(b"d/aa")
        );
        assert_eq!(d.children.get(b"b"), None);
    }

    #[test]
    fn hardlinks_share_an_inode() {
        let mut link = e("bin/sh", Kind::Hardlink);
        link.link = b"bin/busybox".to_vec();
        let l0 = layer(vec![e("bin/busybox", Kind::Reg), link]);
        let t = Tree::build([&l0]).unwrap();
        let a = t.resolve(b"bin/busybox").unwrap();
        assert_eq!(t.resolve(b"bin/sh"), Some(a));
        assert_eq!(t.get(a).unwrap().nlink, 2);

        let mut bad = e("x", Kind::Hardlink);
        bad.link = b"missing".to_vec();
        assert!(Tree::build([&layer(vec![bad])]).is_err());
    }

    #[test]
    fn upper_replaces_lower_and_dirs_merge() {
        let l0 = layer(vec![e("a", Kind::Reg), e("d/x", Kind::Reg)]);
        let mut d = e("d", Kind::Dir);
        d.mode = 0o700;
        let l1 = layer(vec![e("a", Kind::Symlink), d, e("d/y", Kind::Reg)]);
        let t = Tree::build([&l0, &l1]).unwrap();
        assert_eq!(t.get(t.resolve(b"a").unwrap()).unwrap().kind, Kind::Symlink);
        assert_eq!(names(&t, "d"), ["x", "y"]);
        assert_eq!(t.get(t.resolve(b"d").unwrap()).unwrap().mode, 0o700);
        assert_eq!(t.get(ROOT_INO).unwrap().nlink, 3);
    }
}
