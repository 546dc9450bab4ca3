//! The snapshots API: containerd's `Snapshotter` trait over the metadata ([`crate::meta`]),
//! local snapshot directories and the layer store ([`crate::remote`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use containerd_snapshots::{Info, Snapshotter, Usage, api::types::Mount};
use strata_image::Images;
use strata_storage::store::ImageRecord;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::error::SnapError;
use crate::meta::{Db, Kind, Snap, matches};
use crate::mounts;
use crate::remote::{LayerSource, REMOTE_LABEL, Target, target};

/// The snapshotter of one state root.
#[derive(Debug)]
pub struct StrataSnapshotter {
    /// `<state root>/snapshotter`.
    dir: PathBuf,
    db: Mutex<Db>,
    source: LayerSource,
    /// `snapshotter/lock`, held while this snapshotter runs: one per state root.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Takes `dir/lock` exclusively, without waiting: two snapshotters on one state root would
/// hand out the same snapshot ids and overwrite each other's metadata.
fn lock_root(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, SnapError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(SnapError::io(&path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        SnapError::Io {
            path,
            source: std::io::Error::other(
                "another strata snapshotter serves this state root (its lock is held)",
            ),
        }
    })
}

impl StrataSnapshotter {
    /// Opens (creating) the snapshotter's directory under `images`' state root and loads
    /// its metadata.
    ///
    /// Errors: the directory cannot be made or the metadata read.
    pub fn open(images: Images) -> Result<Self, SnapError> {
        let dir = images.layout().root().join("snapshotter");
        for d in [dir.join("snapshots"), dir.join("empty")] {
            std::fs::create_dir_all(&d).map_err(SnapError::io(&d))?;
        }
        let lock = lock_root(&dir)?;
        let db = Db::load(&dir.join("metadata.json"))?;
        Ok(Self {
            dir,
            db: Mutex::new(db),
            source: LayerSource::new(images),
            _lock: lock,
        })
    }

    /// Takes the layer store lease now (the store stays up while the snapshotter runs); a
    /// store that cannot be reached is logged, and remote layers are then unpacked instead.
    pub async fn connect(&self) {
        match self.source.connect().await {
            Ok(()) => info!(store = %self.source.mount().display(), "layer store lease taken"),
            Err(e) => {
                warn!(error = %e, "layer store not reachable; remote layers will be unpacked")
            }
        }
    }

    fn snap_dir(&self, id: u64) -> PathBuf {
        self.dir.join("snapshots").join(id.to_string())
    }

    /// The directories of the chain from `parent` down, top first, and the images whose
    /// layers among them the store serves.
    fn lowers(&self, db: &Db, parent: &str) -> Result<(Vec<PathBuf>, Vec<ImageRecord>), SnapError> {
        let mut dirs = Vec::new();
        let mut images: Vec<ImageRecord> = Vec::new();
        for (_, s) in db.chain(parent)? {
            match &s.remote {
                Some(r) => {
                    dirs.push(r.dir.clone());
                    if !images.iter().any(|i| i.manifest == r.image.manifest) {
                        images.push(r.image.clone());
                    }
                }
                None => dirs.push(self.snap_dir(s.id).join("fs")),
            }
        }
        Ok((dirs, images))
    }

    fn mounts_of(&self, db: &Db, key: &str) -> Result<(Vec<Mount>, Vec<ImageRecord>), SnapError> {
        let s = db.get(key)?;
        let (lowers, images) = self.lowers(db, &s.parent)?;
        let d = self.snap_dir(s.id);
        let m = match s.kind {
            Kind::Active => mounts::active(&d.join("fs"), &d.join("work"), &lowers),
            Kind::View => mounts::view(&self.dir.join("empty"), &lowers),
            Kind::Committed => {
                return Err(SnapError::Precondition {
                    key: key.to_string(),
                    cause: "is committed; only active snapshots and views have mounts".into(),
                });
            }
        };
        Ok((m, images))
    }

    /// Has the store serve the layers `images` contribute to a mount (it may have ended and
    /// started again since they were committed).
    async fn ensure(&self, images: &[ImageRecord]) -> Result<(), SnapError> {
        for img in images {
            self.source
                .ensure(img)
                .await
                .map_err(|e| SnapError::Remote {
                    image: img.manifest.to_string(),
                    layer: "*".into(),
                    cause: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// A new active snapshot or view `key` on `parent`.
    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapError> {
        let mut db = self.db.lock().await;
        if db.snaps.contains_key(&key) {
            return Err(SnapError::AlreadyExists(key));
        }
        if !parent.is_empty() && db.get(&parent)?.kind != Kind::Committed {
            return Err(SnapError::Precondition {
                key: parent,
                cause: "is not committed; a parent must be".into(),
            });
        }
        let id = db.next_id;
        db.next_id += 1;
        let d = self.snap_dir(id);
        for sub in ["fs", "work"] {
            std::fs::create_dir_all(d.join(sub)).map_err(SnapError::io(&d))?;
        }
        let now = SystemTime::now();
        let snap = Snap {
            id,
            kind,
            parent,
            labels,
            created: now,
            updated: now,
            remote: None,
        };
        db.snaps.insert(key.clone(), snap);
        if let Err(e) = db.save() {
            db.snaps.remove(&key);
            let _ = std::fs::remove_dir_all(&d);
            return Err(e);
        }
        let (m, images) = self.mounts_of(&db, &key)?;
        drop(db);
        debug!(%key, ?kind, "snapshot created");
        self.ensure(&images).await?;
        Ok(m)
    }

    /// Serves `t` from the layer store, committed as `t.name` on `parent`: true when it is
    /// (now or already), false when it cannot be (the caller unpacks instead).
    async fn try_remote(
        &self,
        key: &str,
        parent: &str,
        t: &Target,
        labels: &HashMap<String, String>,
    ) -> Result<bool, SnapError> {
        {
            let db = self.db.lock().await;
            if db.snaps.contains_key(key) {
                return Err(SnapError::AlreadyExists(key.to_string()));
            }
            if let Some(s) = db.snaps.get(&t.name) {
                return Ok(s.kind == Kind::Committed && s.parent == parent);
            }
            if !parent.is_empty() {
                db.get(parent)?;
            }
        }
        let remote = match self.source.resolve(t).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "remote layer not served; containerd unpacks it");
                return Ok(false);
            }
        };
        let mut db = self.db.lock().await;
        if let Some(s) = db.snaps.get(&t.name) {
            return Ok(s.kind == Kind::Committed && s.parent == parent);
        }
        let mut labels = labels.clone();
        labels.insert(REMOTE_LABEL.into(), "strata".into());
        let now = SystemTime::now();
        db.snaps.insert(
            t.name.clone(),
            Snap {
                id: 0,
                kind: Kind::Committed,
                parent: parent.to_string(),
                labels,
                created: now,
                updated: now,
                remote: Some(remote),
            },
        );
        if let Err(e) = db.save() {
            db.snaps.remove(&t.name);
            return Err(e);
        }
        Ok(true)
    }

    /// Removes snapshot directories no snapshot owns (left by a crash between a removal's
    /// metadata and its directory).
    fn cleanup(&self, db: &Db) -> Result<(), SnapError> {
        let root = self.dir.join("snapshots");
        let owned: std::collections::HashSet<String> = db
            .snaps
            .values()
            .filter(|s| s.remote.is_none())
            .map(|s| s.id.to_string())
            .collect();
        for entry in std::fs::read_dir(&root).map_err(SnapError::io(&root))? {
            let entry = entry.map_err(SnapError::io(&root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !owned.contains(&name) {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(SnapError::io(&p))?;
                debug!(dir = %p.display(), "unowned snapshot directory removed");
            }
        }
        Ok(())
    }
}

fn info_of(name: &str, s: &Snap) -> Info {
    Info {
        kind: match s.kind {
            Kind::View => containerd_snapshots::Kind::View,
            Kind::Active => containerd_snapshots::Kind::Active,
            Kind::Committed => containerd_snapshots::Kind::Committed,
        },
        name: name.to_string(),
        parent: s.parent.clone(),
        labels: s.labels.clone(),
        created_at: s.created,
        updated_at: s.updated,
    }
}

/// Disk usage of `dir` as containerd counts it: blocks of each inode once, and the inodes.
fn disk_usage(dir: &Path) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert(meta.ino()) {
            usage.inodes += 1;
            usage.size += i64::try_from(meta.blocks() * 512).unwrap_or(i64::MAX);
        }
        if meta.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    usage
}

/// Applies containerd's update mask to `s`'s labels: no paths (or `labels`) replaces them
/// all, `labels.KEY` sets or removes one.
fn apply_update(s: &mut Snap, new: HashMap<String, String>, paths: Option<Vec<String>>) {
    let paths = paths.unwrap_or_default();
    if paths.is_empty() || paths.iter().any(|p| p == "labels") {
        s.labels = new;
        return;
    }
    for p in paths {
        if let Some(k) = p.strip_prefix("labels.") {
            match new.get(k) {
                Some(v) => s.labels.insert(k.to_string(), v.clone()),
                None => s.labels.remove(k),
            };
        }
    }
}

#[tonic::async_trait]
impl Snapshotter for StrataSnapshotter {
    type Error = SnapError;

    async fn stat(&self, key: String) -> Result<Info, SnapError> {
        let db = self.db.lock().await;
        Ok(info_of(&key, db.get(&key)?))
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, SnapError> {
        let mut db = self.db.lock().await;
        let s = db
            .snaps
            .get_mut(&info.name)
            .ok_or_else(|| SnapError::NotFound(info.name.clone()))?;
        apply_update(s, info.labels, fieldpaths);
        s.updated = SystemTime::now();
        let out = info_of(&info.name, s);
        db.save()?;
        Ok(out)
    }

    async fn usage(&self, key: String) -> Result<Usage, SnapError> {
        let dir = {
            let db = self.db.lock().await;
            let s = db.get(&key)?;
            if s.remote.is_some() {
                // Its bytes are the store's (the chunk cache), not this snapshot's.
                return Ok(Usage::default());
            }
            self.snap_dir(s.id).join("fs")
        };
        tokio::task::spawn_blocking(move || disk_usage(&dir))
            .await
            .map_err(|e| SnapError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, SnapError> {
        let (m, images) = {
            let db = self.db.lock().await;
            self.mounts_of(&db, &key)?
        };
        self.ensure(&images).await?;
        Ok(m)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapError> {
        if let Some(t) = target(&labels)
            && self.try_remote(&key, &parent, &t, &labels).await?
        {
            // containerd's "fetch with search": the layer exists, nothing to download.
            return Err(SnapError::AlreadyExists(t.name));
        }
        self.create(Kind::Active, key, parent, labels).await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapError> {
        self.create(Kind::View, key, parent, labels).await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapError> {
        let mut db = self.db.lock().await;
        if db.snaps.contains_key(&name) {
            return Err(SnapError::AlreadyExists(name));
        }
        let mut s = db.get(&key)?.clone();
        if s.kind != Kind::Active {
            return Err(SnapError::Precondition {
                key,
                cause: "is not active; only an active snapshot can be committed".into(),
            });
        }
        s.kind = Kind::Committed;
        s.labels = labels;
        s.updated = SystemTime::now();
        db.snaps.remove(&key);
        db.snaps.insert(name.clone(), s.clone());
        if let Err(e) = db.save() {
            db.snaps.remove(&name);
            db.snaps.insert(key, s);
            return Err(e);
        }
        debug!(%name, %key, "snapshot committed");
        Ok(())
    }

    async fn remove(&self, key: String) -> Result<(), SnapError> {
        let mut db = self.db.lock().await;
        let s = db.get(&key)?.clone();
        if db.has_children(&key) {
            return Err(SnapError::Precondition {
                key,
                cause: "cannot remove snapshot with child".into(),
            });
        }
        db.snaps.remove(&key);
        if let Err(e) = db.save() {
            db.snaps.insert(key, s);
            return Err(e);
        }
        if s.remote.is_none() {
            let d = self.snap_dir(s.id);
            if let Err(e) = std::fs::remove_dir_all(&d) {
                warn!(dir = %d.display(), error = %e, "snapshot directory not removed; cleanup will");
            }
        }
        debug!(%key, "snapshot removed");
        Ok(())
    }

    async fn clear(&self) -> Result<(), SnapError> {
        let db = self.db.lock().await;
        self.cleanup(&db)
    }

    type InfoStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Info, SnapError>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, SnapError> {
        let db = self.db.lock().await;
        let infos: Vec<Result<Info, SnapError>> = db
            .snaps
            .iter()
            .filter(|(k, s)| matches(k, s, &filters))
            .map(|(k, s)| Ok(info_of(k, s)))
            .collect();
        Ok(futures_util::stream::iter(infos))
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
