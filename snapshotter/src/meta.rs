//! The snapshotter's metadata: every snapshot containerd asked for, kept in one JSON file
//! under the snapshotter's directory (rewritten whole, atomically, on each change: the set
//! is small, a few per image layer and container), so that a restart keeps them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use strata_storage::store::ImageRecord;

use crate::error::SnapError;

/// What a snapshot is, as containerd's `Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A read-only view of its parent.
    View,
    /// A writable snapshot, not yet committed.
    Active,
    /// A committed, read-only snapshot (a layer).
    Committed,
}

/// A layer served by strata's layer store instead of being unpacked here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remote {
    /// The layer's directory in the store (`<state root>/layers/<chain>/diff`).
    pub dir: PathBuf,
    /// The image it is a layer of: added to the store again when the store lacks it.
    pub image: ImageRecord,
}

/// One snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snap {
    /// Its number: its directory is `snapshots/<id>` (none for a remote snapshot).
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its parent's name, or empty.
    pub parent: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// When it was created.
    pub created: SystemTime,
    /// When it was last changed.
    pub updated: SystemTime,
    /// Set for a layer the store serves.
    #[serde(default)]
    pub remote: Option<Remote>,
}

/// All snapshots, by name (key), and the file they are kept in.
#[derive(Debug)]
pub struct Db {
    path: PathBuf,
    /// The next snapshot number.
    pub next_id: u64,
    /// The snapshots.
    pub snaps: BTreeMap<String, Snap>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    next_id: u64,
    snaps: BTreeMap<String, Snap>,
}

impl Db {
    /// Loads the metadata at `path`, or starts empty when there is none.
    ///
    /// Errors: the file cannot be read or parsed (nothing is overwritten then).
    pub fn load(path: &Path) -> Result<Self, SnapError> {
        let disk = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<OnDisk>(&bytes).map_err(|e| SnapError::Metadata {
                    path: path.to_path_buf(),
                    cause: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OnDisk {
                next_id: 1,
                snaps: BTreeMap::new(),
            },
            Err(source) => {
                return Err(SnapError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            next_id: disk.next_id,
            snaps: disk.snaps,
        })
    }

    /// Writes the metadata (a temporary file renamed over the old one).
    ///
    /// Errors: the file cannot be written.
    pub fn save(&self) -> Result<(), SnapError> {
        let disk = OnDisk {
            next_id: self.next_id,
            snaps: self.snaps.clone(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(|e| SnapError::Metadata {
            path: self.path.clone(),
            cause: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| SnapError::Io {
            path: self.path.clone(),
            source,
        };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    /// The snapshot named `key`.
    ///
    /// Errors: there is none (gRPC NotFound).
    pub fn get(&self, key: &str) -> Result<&Snap, SnapError> {
        self.snaps
            .get(key)
            .ok_or_else(|| SnapError::NotFound(key.to_string()))
    }

    /// The chain below and including `name`, top first.
    ///
    /// Errors: a snapshot of the chain is missing.
    pub fn chain(&self, name: &str) -> Result<Vec<(&str, &Snap)>, SnapError> {
        let mut out = Vec::new();
        let mut cur = name;
        while !cur.is_empty() {
            let (k, s) = self
                .snaps
                .get_key_value(cur)
                .ok_or_else(|| SnapError::NotFound(cur.to_string()))?;
            out.push((k.as_str(), s));
            cur = &s.parent;
            if out.len() > self.snaps.len() {
                return Err(SnapError::Metadata {
                    path: self.path.clone(),
                    cause: format!("snapshot {name} has a cycle among its parents"),
                });
            }
        }
        Ok(out)
    }

    /// Whether any snapshot has `key` as its parent.
    pub fn has_children(&self, key: &str) -> bool {
        self.snaps.values().any(|s| s.parent == key)
    }
}

/// Whether `s` passes containerd's Walk `filters` (any one of them; each a comma-separated
/// conjunction). Only the fields containerd itself filters on are understood — `name`,
/// `parent`, `kind` and `labels."KEY"`, with `==` and `!=`; another field passes, and
/// containerd checks what it asked for again.
pub fn matches(name: &str, s: &Snap, filters: &[String]) -> bool {
    let filters: Vec<&String> = filters.iter().filter(|f| !f.trim().is_empty()).collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.split(',').all(|c| clause(name, s, c)))
}

fn clause(name: &str, s: &Snap, c: &str) -> bool {
    let (field, value, equal) = match (c.split_once("!="), c.split_once("==")) {
        (Some((f, v)), _) => (f, v, false),
        (None, Some((f, v))) => (f, v, true),
        (None, None) => return true,
    };
    let value = unquote(value.trim());
    let field = field.trim();
    let actual = match field {
        "name" => Some(name.to_string()),
        "parent" => Some(s.parent.clone()),
        "kind" => Some(
            match s.kind {
                Kind::View => "view",
                Kind::Active => "active",
                Kind::Committed => "committed",
            }
            .to_string(),
        ),
        _ => match field.strip_prefix("labels.") {
            Some(key) => s.labels.get(&unquote(key)).cloned(),
            None => return true,
        },
    };
    (actual.as_deref() == Some(value.as_str())) == equal
}

fn unquote(s: &str) -> String {
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(parent: &str, labels: &[(&str, &str)]) -> Snap {
        Snap {
            id: 1,
            kind: Kind::Committed,
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: SystemTime::now(),
            updated: SystemTime::now(),
            remote: None,
        }
    }

    #[test]
    fn filters_as_containerd_writes_them() {
        let s = snap("p1", &[("containerd.io/snapshot.ref", "sha256:abc")]);
        let f = |t: &str| vec![t.to_string()];
        assert!(matches(
            "n",
            &s,
            &f(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="p1""#)
        ));
        assert!(!matches(
            "n",
            &s,
            &f(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="p2""#)
        ));
        assert!(!matches(
            "n",
            &s,
            &f(r#"labels."containerd.io/snapshot.ref"==sha256:def"#)
        ));
        assert!(matches("n", &s, &f("kind==committed")));
        assert!(matches("n", &s, &f("name!=m")));
        assert!(matches("n", &s, &[]));
    }

    #[test]
    fn saved_metadata_loads_back_and_a_bad_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        let mut db = Db::load(&path).unwrap();
        db.snaps.insert("a".into(), snap("", &[]));
        db.snaps.insert("b".into(), snap("a", &[]));
        db.next_id = 7;
        db.save().unwrap();
        let back = Db::load(&path).unwrap();
        assert_eq!(back.next_id, 7);
        let chain: Vec<&str> = back.chain("b").unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(chain, ["b", "a"]);
        assert!(back.has_children("a") && !back.has_children("b"));
        std::fs::write(&path, b"{not json").unwrap();
        let err = Db::load(&path).unwrap_err().to_string();
        assert!(err.contains("metadata.json"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
    }
}
