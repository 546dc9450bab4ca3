//! Container records on disk (`<root>/containers/<id>/container.json`), written atomically, so
//! that `ps -a` is right after any restart of the tool.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Lifecycle state, as docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Prepared, not started.
    Created,
    /// Its process is running.
    Running,
    /// Its process ended.
    Exited,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// 64 hex digits.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The image's id (config digest).
    pub image_id: String,
    /// The digest of the image manifest the container was made from: two images (an image and
    /// its `strata convert` output, or one image under a Docker and an OCI manifest) can share
    /// a config, so the id alone does not say which. `None` in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_manifest: Option<String>,
    /// The command line.
    pub command: Vec<String>,
    /// Creation time, seconds since the epoch.
    pub created: i64,
    /// State.
    pub state: State,
    /// Helper process id while running.
    pub pid: Option<u32>,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// When it exited.
    pub finished: Option<i64>,
    /// When its process last started (`run`, `start`, `restart`), seconds since the epoch;
    /// absent in records written before strata kept it (then `created` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
}

/// Errors of the container records.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Disk I/O failed.
    #[error("container state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where containers live.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
}

impl Containers {
    /// Containers under `root/containers`.
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("containers"),
        }
    }

    /// A new container id: 64 hex digits from /dev/urandom.
    pub fn new_id() -> std::io::Result<String> {
        let mut b = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
        Ok(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// The directory of container `id` (upper layer, mounts, generated files).
    pub fn dir_of(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Writes a record atomically.
    pub fn save(&self, c: &Container) -> Result<(), StateError> {
        let dir = self.dir_of(&c.id);
        let path = dir.join("container.json");
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(c).map_err(|e| io(std::io::Error::other(e)))?;
        match crate::stateroot::write_private(&path, &bytes) {
            // A full disk has no room for the temporary: rewrite the record in place, in the
            // blocks it already holds, rather than lose the container's state.
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull && path.exists() => {
                crate::stateroot::rewrite_in_place(&path, &bytes).map_err(io)
            }
            other => other.map_err(io),
        }
    }

    /// All records (unreadable ones are skipped).
    pub fn list(&self) -> Vec<Container> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Container> = entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("container.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.created));
        out
    }

    /// The container with this name, id, or unique id prefix.
    pub fn find(&self, key: &str) -> Option<Container> {
        let all = self.list();
        if let Some(c) = all.iter().find(|c| c.name == key || c.id == key) {
            return Some(c.clone());
        }
        let mut by_prefix = all.into_iter().filter(|c| c.id.starts_with(key));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(c), None) if !key.is_empty() => Some(c),
            _ => None,
        }
    }

    /// Removes a container's record and directory (and cgroups a crashed run left).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        crate::cgroup::remove_for(&crate::cgroup::Host::current(), id);
        let dir = self.dir_of(id);
        std::fs::remove_dir_all(&dir).map_err(|source| StateError::Io { path: dir, source })
    }
}
