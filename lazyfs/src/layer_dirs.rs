//! The layer store's tree: one directory per layer, each holding the layer's own files in
//! overlayfs's format, so that kernel overlayfs stacks them as containerd stacks snapshots.
//!
//! ```text
//! /                      the store root
//! └── <layer>/           one per layer ([`layer_dir_name`] of its digest)
//!     ├── diff/          the layer's files; OCI whiteouts as overlayfs whiteouts
//!     └── info           JSON describing the layer (containers/storage's additional layer store)
//! ```
//!
//! OCI whiteouts (image-spec `layer.md`, "Whiteouts") become what overlayfs writes itself
//! (kernel `Documentation/filesystems/overlayfs.rst`, "whiteouts and opaque directories"):
//! `.wh.NAME` a character device 0/0 named NAME; `.wh..wh..opq` the `trusted.overlay.opaque=y`
//! extended attribute on its directory. Inode numbers only grow: a layer added later never
//! renumbers what the kernel already knows.

use std::sync::Arc;

use strata_formats::index::{Entry, Kind, LayerIndex};
use strata_oci::Digest;

use crate::tree::{
    Node, OPAQUE_MARKER, ROOT_INO, Tree, TreeError, WHITEOUT_PREFIX, lossy, split_parent,
};

/// The extended attribute that makes an overlayfs lower directory opaque.
pub const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// The directory name of a layer in the store: its digest's 64 hex digits (no `:`, which
/// overlayfs' `lowerdir` option uses as its separator).
pub fn layer_dir_name(digest: &Digest) -> String {
    digest.hex()
}

impl Tree {
    /// An empty store: the root directory only.
    pub fn store() -> Self {
        Tree::build(std::iter::empty()).unwrap_or_else(|_| unreachable!("no layers, no errors"))
    }

    /// Adds a layer's directory `name` below the root: `name/diff` holds `index` in overlayfs
    /// form (content read from layer number `layer` of the filesystem's layer list), `name/info`
    /// holds `info`. Returns the inode of `name/diff`.
    ///
    /// Errors: a hardlink whose target is not in this layer (the store serves each layer on its
    /// own, so such a layer cannot be shown; the caller falls back to a merged tree).
    pub fn add_layer_dir(
        &mut self,
        name: &[u8],
        index: &LayerIndex,
        layer: usize,
        info: Vec<u8>,
    ) -> Result<u64, TreeError> {
        let first_new = self.len();
        let dir = self.alloc(Node::dir(ROOT_INO));
        let diff = self.alloc(Node::dir(dir));
        let mut info_node = Node::dir(dir);
        info_node.kind = Kind::Reg;
        info_node.mode = 0o444;
        info_node.size = info.len() as u64;
        info_node.nlink = 1;
        info_node.inline = Some(Arc::from(info));
        let info = self.alloc(info_node);
        let d = self.node_mut(dir);
        d.children.insert(b"diff".to_vec(), diff);
        d.children.insert(b"info".to_vec(), info);
        let mut opaque = Vec::new();
        for e in &index.entries {
            self.add_layer_entry(diff, layer, e, &mut opaque)?;
        }
        for d in opaque {
            let n = self.node_mut(d);
            n.xattrs.retain(|(k, _)| k.as_slice() != OPAQUE_XATTR);
            n.xattrs.push((OPAQUE_XATTR.to_vec(), b"y".to_vec()));
        }
        self.node_mut(ROOT_INO).children.insert(name.to_vec(), dir);
        self.count_dir_links_from(first_new);
        self.count_dir_links_from_root();
        self.freeze_from(first_new);
        Ok(diff)
    }

    /// Adds entry `e` of a layer below `diff`; directories to mark opaque go to `opaque`.
    fn add_layer_entry(
        &mut self,
        diff: u64,
        layer: usize,
        e: &Entry,
        opaque: &mut Vec<u64>,
    ) -> Result<(), TreeError> {
        let (dir, name) = split_parent(&e.path);
        if e.path.is_empty() {
            let root = self.node_mut(diff);
            (root.mode, root.uid, root.gid) = (e.mode, e.uid, e.gid);
            root.mtime = e.mtime;
            root.xattrs = e.xattrs.clone();
            return Ok(());
        }
        let parent = self.ensure_dir_at(diff, dir);
        if name == OPAQUE_MARKER {
            opaque.push(parent);
            return Ok(());
        }
        let existing = self.lookup(parent, name);
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            match self.lookup(parent, hidden) {
                // `.wh.X` beside a directory X of the same layer: X replaces what lies below.
                Some(d) if self.get(d).is_some_and(|n| n.kind == Kind::Dir) => opaque.push(d),
                // A file X of the same layer already replaces what lies below.
                Some(_) => {}
                None => {
                    let mut wh = Node::from_entry(e, layer, parent);
                    (wh.kind, wh.mode, wh.rdev, wh.size) = (Kind::Char, 0, (0, 0), 0);
                    let ino = self.alloc(wh);
                    self.node_mut(parent).children.insert(hidden.to_vec(), ino);
                }
            }
            return Ok(());
        }
        let whiteout = existing.filter(|c| self.is_whiteout(*c));
        if e.kind == Kind::Hardlink {
            let target = self
                .resolve_at(diff, &e.link)
                .filter(|t| !self.is_whiteout(*t))
                .ok_or_else(|| TreeError::DanglingHardlink {
                    layer,
                    path: lossy(&e.path),
                    target: lossy(&e.link),
                })?;
            if self.get(target).is_some_and(|n| n.kind == Kind::Dir) {
                return Err(TreeError::HardlinkToDir {
                    layer,
                    path: lossy(&e.path),
                });
            }
            if let Some(old) = existing.filter(|o| *o != target) {
                self.unlink(parent, name, old);
            }
            self.node_mut(target).nlink += 1;
            self.node_mut(parent).children.insert(name.to_vec(), target);
            return Ok(());
        }
        if let Some(old) = existing {
            let is_dir = self.get(old).is_some_and(|n| n.kind == Kind::Dir);
            if is_dir && e.kind == Kind::Dir {
                let n = self.node_mut(old);
                (n.mode, n.uid, n.gid) = (e.mode, e.uid, e.gid);
                n.mtime = e.mtime;
                n.xattrs = e.xattrs.clone();
                return Ok(());
            }
            self.unlink(parent, name, old);
        }
        let ino = self.alloc(Node::from_entry(e, layer, parent));
        self.node_mut(parent).children.insert(name.to_vec(), ino);
        // `.wh.X` listed before a directory X of the same layer.
        if whiteout.is_some() && e.kind == Kind::Dir {
            opaque.push(ino);
        }
        Ok(())
    }

    /// Whether `ino` is an overlayfs whiteout (character device 0/0).
    pub fn is_whiteout(&self, ino: u64) -> bool {
        self.get(ino)
            .is_some_and(|n| n.kind == Kind::Char && n.rdev == (0, 0))
    }

    fn count_dir_links_from_root(&mut self) {
        let subdirs = self.get(ROOT_INO).map_or(0, |r| r.children.len());
        self.node_mut(ROOT_INO).nlink = 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2);
    }

    fn freeze_from(&mut self, from: usize) {
        self.node_mut(ROOT_INO).children.freeze();
        for ino in from as u64 + 1..=self.len() as u64 {
            self.node_mut(ino).children.freeze();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: Kind) -> Entry {
        crate::tree::test_entry(path, kind)
    }

    fn opaque(t: &Tree, path: &str) -> bool {
        let n = t.get(t.resolve(path.as_bytes()).unwrap()).unwrap();
        n.xattrs
            .iter()
            .any(|(k, v)| k.as_slice() == OPAQUE_XATTR && v.as_slice() == b"y")
    }

    #[test]
    fn whiteouts_and_opaque_markers_take_overlayfs_form() {
        let mut link = e("d/hl", Kind::Hardlink);
        link.link = b"d/f".to_vec();
        let layer = LayerIndex {
            entries: vec![
                e("d", Kind::Dir),
                e("d/f", Kind::Reg),
                link,
                e("d/.wh.gone", Kind::Reg),
                e("o/.wh..wh..opq", Kind::Reg),
                e("o/new", Kind::Reg),
                e(".wh.r", Kind::Reg),
                e("r", Kind::Dir),
                e("r/x", Kind::Reg),
            ],
        };
        let mut t = Tree::store();
        let diff = t.add_layer_dir(b"abc", &layer, 0, b"{}".to_vec()).unwrap();
        assert_eq!(t.resolve(b"abc/diff"), Some(diff));
        let gone = t.resolve(b"abc/diff/d/gone").unwrap();
        assert!(t.is_whiteout(gone), "a .wh. entry is a 0/0 char device");
        assert!(t.resolve(b"abc/diff/d/.wh.gone").is_none());
        assert!(opaque(&t, "abc/diff/o"));
        assert!(t.resolve(b"abc/diff/o/.wh..wh..opq").is_none());
        assert!(t.resolve(b"abc/diff/o/new").is_some());
        // `.wh.r` beside a directory r of the same layer: r replaces what lies below.
        assert!(opaque(&t, "abc/diff/r") && !t.is_whiteout(t.resolve(b"abc/diff/r").unwrap()));
        assert!(!opaque(&t, "abc/diff/d"));
        assert_eq!(t.resolve(b"abc/diff/d/hl"), t.resolve(b"abc/diff/d/f"));
        let info = t.get(t.resolve(b"abc/info").unwrap()).unwrap();
        assert_eq!(info.inline.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn a_later_layer_keeps_every_earlier_inode_number() {
        let one = LayerIndex {
            entries: vec![e("a", Kind::Reg), e("b/c", Kind::Reg)],
        };
        let two = LayerIndex {
            entries: vec![e("z", Kind::Reg)],
        };
        let mut t = Tree::store();
        t.add_layer_dir(b"one", &one, 0, Vec::new()).unwrap();
        let before: Vec<(String, Option<u64>)> = ["one/diff/a", "one/diff/b/c", "one/info"]
            .iter()
            .map(|p| (p.to_string(), t.resolve(p.as_bytes())))
            .collect();
        t.add_layer_dir(b"aaa-before-one", &two, 1, Vec::new())
            .unwrap();
        for (p, ino) in before {
            assert_eq!(t.resolve(p.as_bytes()), ino, "{p}");
        }
        assert_eq!(t.get(ROOT_INO).unwrap().children.len(), 2);
        let mut bad = e("x", Kind::Hardlink);
        bad.link = b"a".to_vec();
        let three = LayerIndex { entries: vec![bad] };
        assert!(t.add_layer_dir(b"three", &three, 2, Vec::new()).is_err());
    }
}
