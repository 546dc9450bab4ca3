//! The layer store's tree: one directory per layer, each holding the layer's own files in
//! overlayfs's format, so that kernel overlayfs stacks them as containerd stacks snapshots.
//!
//! ```text
//! /                      the store root
//! └── <chain>/           one per layer *on its lower layers* (its chain id, as containerd
//!     │                  keys snapshots), so a layer's directory may depend on what is below
//!     ├── diff/          the layer's files; OCI whiteouts as overlayfs whiteouts
//!     └── info           JSON describing the layer (containers/storage's additional layer store)
//! ```
//!
//! OCI whiteouts (image-spec `layer.md`, "Whiteouts") become what overlayfs writes itself
//! (kernel `Documentation/filesystems/overlayfs.rst`, "whiteouts and opaque directories"):
//! `.wh.NAME` a character device 0/0 named NAME — only where NAME exists below, since overlayfs
//! shows a whiteout in a directory that is not merged; `.wh..wh..opq` the
//! `trusted.overlay.opaque=y` extended attribute on its directory, except at the layer's root,
//! which overlayfs never treats as opaque: there every name visible below gets a whiteout.
//! As containerd's applier does, a parent directory the layer does not list takes the
//! attributes of the same directory below (0755 root-owned if there is none), and a hardlink to
//! a file below becomes a copy of that file. `trusted.overlay.*` attributes from a layer are
//! dropped: they would steer overlayfs (redirects, opaque marks). Inode numbers only grow: a
//! layer added later never renumbers what the kernel already knows.

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
    /// form on top of `lowers` (the `diff` directories of the layers below, top first), with
    /// content read from layer number `layer` of the filesystem's layer list; `name/info`
    /// holds `info`. Returns the inode of `name/diff`.
    ///
    /// Errors: a hardlink to a path that is neither in this layer nor a file below.
    pub fn add_layer_dir(
        &mut self,
        name: &[u8],
        index: &LayerIndex,
        layer: usize,
        info: Vec<u8>,
        lowers: &[u64],
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
        let mut b = Building {
            diff,
            layer,
            lowers,
            opaque: Vec::new(),
            implicit: vec![(diff, Vec::new())],
            root_opaque: false,
        };
        for e in &index.entries {
            self.add_layer_entry(&mut b, e)?;
        }
        self.finish_layer(&b);
        self.node_mut(ROOT_INO).children.insert(name.to_vec(), dir);
        self.count_dir_links_from(first_new);
        self.count_dir_links_from_root();
        self.freeze_from(first_new);
        Ok(diff)
    }

    /// Opaque marks, the attributes of implicit directories, the root's whiteouts.
    fn finish_layer(&mut self, b: &Building<'_>) {
        for &(ino, ref rel) in &b.implicit {
            let below = self
                .lower_find(b.lowers, rel)
                .and_then(|l| self.get(l).filter(|n| n.kind == Kind::Dir).cloned());
            if let Some(l) = below {
                let n = self.node_mut(ino);
                (n.mode, n.uid, n.gid, n.mtime) = (l.mode, l.uid, l.gid, l.mtime);
                n.xattrs = l
                    .xattrs
                    .into_iter()
                    .filter(|(k, _)| k.as_slice() != OPAQUE_XATTR)
                    .collect();
            }
        }
        // After the attributes taken from below, which must not take the mark away.
        for &d in &b.opaque {
            let n = self.node_mut(d);
            n.xattrs.retain(|(k, _)| k.as_slice() != OPAQUE_XATTR);
            n.xattrs.push((OPAQUE_XATTR.to_vec(), b"y".to_vec()));
        }
        if b.root_opaque {
            for name in self.visible_below(b.lowers, b"") {
                if self.lookup(b.diff, &name).is_none() {
                    let wh = self.whiteout_node(b.diff, 0, 0, (0, 0));
                    let ino = self.alloc(wh);
                    self.node_mut(b.diff).children.insert(name, ino);
                }
            }
        }
    }

    /// Adds entry `e` of the layer being built.
    fn add_layer_entry(&mut self, b: &mut Building<'_>, e: &Entry) -> Result<(), TreeError> {
        let (dir, name) = split_parent(&e.path);
        if e.path.is_empty() {
            let root = self.node_mut(b.diff);
            (root.mode, root.uid, root.gid) = (e.mode, e.uid, e.gid);
            root.mtime = e.mtime;
            root.xattrs = own_xattrs(&e.xattrs);
            b.implicit.retain(|(i, _)| *i != b.diff);
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX)
            && name != OPAQUE_MARKER
        {
            self.add_whiteout(b, e, hidden);
            return Ok(());
        }
        let before = self.len() as u64;
        let parent = self.ensure_dir_at(b.diff, dir);
        self.note_implicit(b, before, dir);
        if name == OPAQUE_MARKER {
            if parent == b.diff {
                b.root_opaque = true;
            } else {
                b.opaque.push(parent);
            }
            return Ok(());
        }
        let existing = self.lookup(parent, name);
        let whiteout = existing.filter(|c| self.is_whiteout(*c));
        if e.kind == Kind::Hardlink {
            return self.add_hardlink(b, e, parent, name, existing);
        }
        if let Some(old) = existing {
            let is_dir = self.get(old).is_some_and(|n| n.kind == Kind::Dir);
            if is_dir && e.kind == Kind::Dir {
                let n = self.node_mut(old);
                (n.mode, n.uid, n.gid) = (e.mode, e.uid, e.gid);
                n.mtime = e.mtime;
                n.xattrs = own_xattrs(&e.xattrs);
                b.implicit.retain(|(i, _)| *i != old);
                return Ok(());
            }
            self.unlink(parent, name, old);
        }
        let mut node = Node::from_entry(e, b.layer, parent);
        node.xattrs = own_xattrs(&node.xattrs);
        let ino = self.alloc(node);
        self.node_mut(parent).children.insert(name.to_vec(), ino);
        // `.wh.X` listed before a directory X of the same layer.
        if whiteout.is_some() && e.kind == Kind::Dir {
            b.opaque.push(ino);
        }
        Ok(())
    }

    /// Notes the directories `ensure_dir_at` just made for `dir` (inodes after `before`).
    fn note_implicit(&self, b: &mut Building<'_>, before: u64, dir: &[u8]) {
        let made = self.len() as u64 - before;
        if made == 0 {
            return;
        }
        let comps: Vec<&[u8]> = dir
            .split(|c| *c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let made = usize::try_from(made)
            .unwrap_or(comps.len())
            .min(comps.len());
        for (k, ino) in (comps.len() - made..comps.len()).zip(before + 1..) {
            b.implicit.push((ino, comps[..=k].join(&b'/')));
        }
    }

    /// `.wh.NAME`: a whiteout where NAME is visible below (its directory made if need be);
    /// nothing where nothing is.
    fn add_whiteout(&mut self, b: &mut Building<'_>, e: &Entry, hidden: &[u8]) {
        let (dir, _) = split_parent(&e.path);
        let here = self
            .resolve_at(b.diff, dir)
            .and_then(|p| self.lookup(p, hidden));
        match here {
            // `.wh.X` beside a directory X of the same layer: X replaces what lies below.
            Some(d) if self.get(d).is_some_and(|n| n.kind == Kind::Dir) => b.opaque.push(d),
            // A file X of the same layer already replaces what lies below.
            Some(_) => {}
            None => {
                let mut rel = dir.to_vec();
                if !rel.is_empty() {
                    rel.push(b'/');
                }
                rel.extend_from_slice(hidden);
                if self.lower_find(b.lowers, &rel).is_some() {
                    let before = self.len() as u64;
                    let parent = self.ensure_dir_at(b.diff, dir);
                    self.note_implicit(b, before, dir);
                    let wh = self.whiteout_node(parent, e.uid, e.gid, e.mtime);
                    let ino = self.alloc(wh);
                    self.node_mut(parent).children.insert(hidden.to_vec(), ino);
                }
            }
        }
    }

    /// A hardlink: to a file of this layer, or (as a copy) to a file below.
    fn add_hardlink(
        &mut self,
        b: &Building<'_>,
        e: &Entry,
        parent: u64,
        name: &[u8],
        existing: Option<u64>,
    ) -> Result<(), TreeError> {
        let dangling = || TreeError::DanglingHardlink {
            layer: b.layer,
            path: lossy(&e.path),
            target: lossy(&e.link),
        };
        let here = self
            .resolve_at(b.diff, &e.link)
            .filter(|t| !self.is_whiteout(*t));
        let target = match here {
            Some(t) => t,
            None => {
                let below = self.lower_find(b.lowers, &e.link).ok_or_else(dangling)?;
                let mut copy = self.get(below).cloned().ok_or_else(dangling)?;
                if copy.kind == Kind::Dir {
                    return Err(TreeError::HardlinkToDir {
                        layer: b.layer,
                        path: lossy(&e.path),
                    });
                }
                (copy.parent, copy.nlink) = (parent, 0);
                self.alloc(copy)
            }
        };
        if self.get(target).is_some_and(|n| n.kind == Kind::Dir) {
            return Err(TreeError::HardlinkToDir {
                layer: b.layer,
                path: lossy(&e.path),
            });
        }
        if let Some(old) = existing.filter(|o| *o != target) {
            self.unlink(parent, name, old);
        }
        self.node_mut(target).nlink += 1;
        self.node_mut(parent).children.insert(name.to_vec(), target);
        Ok(())
    }

    fn whiteout_node(&self, parent: u64, uid: u32, gid: u32, mtime: (i64, u32)) -> Node {
        let mut wh = Node::dir(parent);
        (wh.kind, wh.mode, wh.rdev, wh.nlink) = (Kind::Char, 0, (0, 0), 1);
        (wh.uid, wh.gid, wh.mtime) = (uid, gid, mtime);
        wh
    }

    /// The node at `rel` as the layers `lowers` (top first) show it merged: the topmost
    /// layer that has it decides; a whiteout, a non-directory on the way, or an opaque
    /// directory on the way hides what lies further down.
    fn lower_find(&self, lowers: &[u64], rel: &[u8]) -> Option<u64> {
        let comps: Vec<&[u8]> = rel
            .split(|c| *c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        for &lower in lowers {
            let mut ino = lower;
            let mut stop_below = false;
            let mut found = true;
            for (k, comp) in comps.iter().enumerate() {
                match self.lookup(ino, comp) {
                    Some(c) if self.is_whiteout(c) => return None,
                    Some(c) => {
                        let n = self.get(c)?;
                        if k + 1 < comps.len() && n.kind != Kind::Dir {
                            return None;
                        }
                        stop_below |= n
                            .xattrs
                            .iter()
                            .any(|(x, v)| x.as_slice() == OPAQUE_XATTR && v.as_slice() == b"y");
                        ino = c;
                    }
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            if found {
                return Some(ino);
            }
            if stop_below {
                return None;
            }
        }
        None
    }

    /// The names visible in directory `rel` of `lowers` (top first) merged.
    fn visible_below(&self, lowers: &[u64], rel: &[u8]) -> Vec<Vec<u8>> {
        let mut seen: std::collections::BTreeMap<Vec<u8>, bool> = Default::default();
        for &lower in lowers {
            let Some(d) = self.resolve_at(lower, rel) else {
                continue;
            };
            let Some(n) = self.get(d) else { continue };
            for (name, c) in n.children.iter() {
                seen.entry(name.to_vec()).or_insert(!self.is_whiteout(c));
            }
            if n.xattrs
                .iter()
                .any(|(x, v)| x.as_slice() == OPAQUE_XATTR && v.as_slice() == b"y")
            {
                break;
            }
        }
        seen.into_iter()
            .filter(|(_, v)| *v)
            .map(|(k, _)| k)
            .collect()
    }

    /// Whether `ino` is an overlayfs whiteout (character device 0/0).
    pub fn is_whiteout(&self, ino: u64) -> bool {
        self.get(ino)
            .is_some_and(|n| n.kind == Kind::Char && n.rdev == (0, 0))
    }

    /// Allocates `n` inodes nobody can reach: what keeps later layers' numbers when a layer a
    /// predecessor had added cannot be added again.
    pub fn reserve(&mut self, n: usize) {
        for _ in 0..n {
            self.alloc(Node::dir(ROOT_INO));
        }
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

/// A layer directory being built.
struct Building<'a> {
    diff: u64,
    layer: usize,
    /// `diff` directories of the layers below, top first.
    lowers: &'a [u64],
    /// Directories to mark opaque.
    opaque: Vec<u64>,
    /// Directories made only as parents (and the root, unless the layer lists `./`), with
    /// their paths: they take the attributes below.
    implicit: Vec<(u64, Vec<u8>)>,
    /// The layer hides everything below at its root.
    root_opaque: bool,
}

/// `xattrs` without overlayfs' own (`trusted.overlay.*`), which a layer must not set.
fn own_xattrs(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    xattrs
        .iter()
        .filter(|(k, _)| !k.starts_with(b"trusted.overlay."))
        .cloned()
        .collect()
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
        let mut below = e("d", Kind::Dir);
        below.mode = 0o1777;
        below.uid = 7;
        let lower = LayerIndex {
            entries: vec![
                below,
                e("d/gone", Kind::Reg),
                e("o/old", Kind::Reg),
                e("r/y", Kind::Reg),
            ],
        };
        let mut link = e("d/hl", Kind::Hardlink);
        link.link = b"d/f".to_vec();
        let mut up = e("d/up", Kind::Hardlink);
        up.link = b"o/old".to_vec();
        let mut steer = e("d/f", Kind::Reg);
        steer.xattrs = vec![
            (b"trusted.overlay.redirect".to_vec(), b"/o".to_vec()),
            (b"user.kept".to_vec(), b"1".to_vec()),
        ];
        let layer = LayerIndex {
            entries: vec![
                steer,
                link,
                up,
                e("d/.wh.gone", Kind::Reg),
                e("d/.wh.never", Kind::Reg),
                e("ghost/.wh.x", Kind::Reg),
                e("o/.wh..wh..opq", Kind::Reg),
                e("o/new", Kind::Reg),
                e(".wh.r", Kind::Reg),
                e("r", Kind::Dir),
                e("r/x", Kind::Reg),
            ],
        };
        let mut t = Tree::store();
        let low = t.add_layer_dir(b"low", &lower, 0, Vec::new(), &[]).unwrap();
        let diff = t
            .add_layer_dir(b"abc", &layer, 1, b"{}".to_vec(), &[low])
            .unwrap();
        assert_eq!(t.resolve(b"abc/diff"), Some(diff));
        let gone = t.resolve(b"abc/diff/d/gone").unwrap();
        assert!(t.is_whiteout(gone), "a .wh. entry is a 0/0 char device");
        assert!(t.resolve(b"abc/diff/d/.wh.gone").is_none());
        // Nothing below to hide: no whiteout, no directory made for one.
        assert!(t.resolve(b"abc/diff/d/never").is_none());
        assert!(t.resolve(b"abc/diff/ghost").is_none());
        assert!(opaque(&t, "abc/diff/o"));
        assert!(t.resolve(b"abc/diff/o/.wh..wh..opq").is_none());
        assert!(t.resolve(b"abc/diff/o/new").is_some());
        // `.wh.r` beside a directory r of the same layer: r replaces what lies below.
        assert!(opaque(&t, "abc/diff/r") && !t.is_whiteout(t.resolve(b"abc/diff/r").unwrap()));
        assert!(!opaque(&t, "abc/diff/d"));
        // `d` is not listed: it takes the attributes it has below.
        let d = t.get(t.resolve(b"abc/diff/d").unwrap()).unwrap();
        assert_eq!((d.mode, d.uid), (0o1777, 7));
        assert_eq!(t.resolve(b"abc/diff/d/hl"), t.resolve(b"abc/diff/d/f"));
        // A hardlink to a file below is a copy of it.
        let up = t.resolve(b"abc/diff/d/up").unwrap();
        assert_ne!(Some(up), t.resolve(b"low/diff/o/old"));
        assert_eq!(t.get(up).unwrap().kind, Kind::Reg);
        let f = t.get(t.resolve(b"abc/diff/d/f").unwrap()).unwrap();
        assert_eq!(f.xattrs, vec![(b"user.kept".to_vec(), b"1".to_vec())]);
        let info = t.get(t.resolve(b"abc/info").unwrap()).unwrap();
        assert_eq!(info.inline.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn an_opaque_root_whites_out_what_is_visible_below() {
        let lower = LayerIndex {
            entries: vec![e("a", Kind::Reg), e("b/c", Kind::Reg), e("keep", Kind::Reg)],
        };
        let top = LayerIndex {
            entries: vec![e(".wh..wh..opq", Kind::Reg), e("keep", Kind::Reg)],
        };
        let mut t = Tree::store();
        let low = t.add_layer_dir(b"low", &lower, 0, Vec::new(), &[]).unwrap();
        t.add_layer_dir(b"top", &top, 1, Vec::new(), &[low])
            .unwrap();
        for name in ["a", "b"] {
            let ino = t.resolve(format!("top/diff/{name}").as_bytes()).unwrap();
            assert!(t.is_whiteout(ino), "{name}");
        }
        assert!(!t.is_whiteout(t.resolve(b"top/diff/keep").unwrap()));
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
        t.add_layer_dir(b"one", &one, 0, Vec::new(), &[]).unwrap();
        let before: Vec<(String, Option<u64>)> = ["one/diff/a", "one/diff/b/c", "one/info"]
            .iter()
            .map(|p| (p.to_string(), t.resolve(p.as_bytes())))
            .collect();
        t.add_layer_dir(b"aaa-before-one", &two, 1, Vec::new(), &[])
            .unwrap();
        for (p, ino) in before {
            assert_eq!(t.resolve(p.as_bytes()), ino, "{p}");
        }
        assert_eq!(t.get(ROOT_INO).unwrap().children.len(), 2);
        let mut bad = e("x", Kind::Hardlink);
        bad.link = b"a".to_vec();
        let three = LayerIndex { entries: vec![bad] };
        assert!(
            t.add_layer_dir(b"three", &three, 2, Vec::new(), &[])
                .is_err()
        );
    }
}
