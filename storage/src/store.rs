//! The image store: content-addressed manifests, configs and TOCs; one record per layer and per
//! image; and the name → image references. Everything is written atomically and the references
//! last, so a store interrupted at any moment lists only whole images.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic;
use strata_oci::digest::{Digest, DigestError};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Disk I/O failed.
    #[error("store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A stored file is not what it should be.
    #[error("store {path}: corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Stored bytes no longer match their digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// No image by that name or id.
    #[error("no such image: {0}")]
    NotFound(String),
}

/// How a layer's content is laid out, and so how it is read lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LayerFormat {
    /// zstd:chunked (strata's native format): chunks are zstd frames located by the TOC.
    ZstdChunked,
    /// eStargz: chunks are gzip members; the TOC is `stargz.index.json`.
    Estargz,
    /// A gzip layer with a SOCI index: `toc` is its ztoc; chunks are pieces of its spans,
    /// which are fetched by range and cached compressed.
    Soci,
    /// No usable TOC: the layer is streamed whole and its chunks live only in the cache.
    Plain {
        /// `gzip`, `zstd` or `none`.
        compression: Compression,
    },
}

/// Compression of a plain layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// tar+gzip.
    Gzip,
    /// tar+zstd.
    Zstd,
    /// Uncompressed tar.
    None,
}

/// What the store knows of one layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// Media type from the manifest.
    pub media_type: String,
    /// Format used to read it.
    pub format: LayerFormat,
    /// The stored TOC blob: zstd-compressed zstd:chunked JSON (native and plain layers) or
    /// eStargz JSON. `None` for a plain layer not streamed yet (it is on first mount).
    #[serde(default)]
    pub toc: Option<Digest>,
    /// Uncompressed length of the TOC.
    pub toc_uncompressed: u64,
    /// eStargz: offset of the TOC member, where the last chunk region ends.
    #[serde(default)]
    pub toc_offset: u64,
    /// Bytes of file content in the layer (uncompressed).
    pub content_bytes: u64,
}

/// What the store knows of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Digest of the manifest (not an index).
    pub manifest: Digest,
    /// Digest of the config; its short form is the IMAGE ID.
    pub config: Digest,
    /// Layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// Repositories (`registry/repo`) the blobs can be fetched from, most recent first.
    pub sources: Vec<String>,
    /// The index the manifest was chosen from, if any.
    #[serde(default)]
    pub index: Option<Digest>,
    /// When it was pulled (seconds since the epoch).
    pub pulled: i64,
}

/// The store under a state root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held exclusive lock on the store's references.
#[derive(Debug)]
pub struct StoreLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for d in ["blobs/sha256", "layers", "images"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Takes the store lock (blocking) for changes to references.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(
            |(_, errno)| StoreError::Io {
                path,
                source: io::Error::from(errno),
            },
        )?;
        Ok(StoreLock { _lock: lock })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether a blob is stored.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }

    /// Stores bytes under their digest (verified).
    pub fn put_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        d.verify(bytes)?;
        let p = self.blob_path(d);
        if p.exists() {
            return Ok(());
        }
        atomic::write_file(&p, bytes).map_err(io_err(&p))
    }

    /// Reads a stored blob, checking it still matches its digest.
    pub fn get_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(io_err(&p))?;
        d.verify(&bytes)?;
        Ok(bytes)
    }

    fn learned_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("profiles")
            .join(format!("{}.json", manifest.hex()))
    }

    /// Keeps `bytes` (a prefetch profile learned for image manifest `manifest`, as published
    /// by another run) beside the image, outside its manifest.
    pub fn put_learned_profile(&self, manifest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let p = self.learned_path(manifest);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        atomic::write_file(&p, bytes).map_err(io_err(&p))
    }

    /// The learned profile kept for image manifest `manifest`, if any.
    pub fn learned_profile(&self, manifest: &Digest) -> Option<Vec<u8>> {
        fs::read(self.learned_path(manifest)).ok()
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    fn write_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(v).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        atomic::write_file(path, &bytes).map_err(io_err(path))
    }

    /// The record of a layer blob, if stored.
    pub fn layer(&self, d: &Digest) -> Result<Option<LayerRecord>, StoreError> {
        self.read_json(&self.root.join("layers").join(format!("{}.json", d.hex())))
    }

    /// Stores a layer record (its TOC blob must be stored first).
    pub fn put_layer(&self, rec: &LayerRecord) -> Result<(), StoreError> {
        self.write_json(
            &self
                .root
                .join("layers")
                .join(format!("{}.json", rec.digest.hex())),
            rec,
        )
    }

    /// The record of an image by manifest digest.
    pub fn image(&self, manifest: &Digest) -> Result<Option<ImageRecord>, StoreError> {
        self.read_json(
            &self
                .root
                .join("images")
                .join(format!("{}.json", manifest.hex())),
        )
    }

    /// Stores an image record (its manifest, config and layers must be stored first).
    pub fn put_image(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        self.write_json(
            &self
                .root
                .join("images")
                .join(format!("{}.json", rec.manifest.hex())),
            rec,
        )
    }

    /// All image records.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Some(r) = self.read_json(&p)?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Removes an image record.
    pub fn remove_image(&self, manifest: &Digest) -> Result<(), StoreError> {
        let p = self
            .root
            .join("images")
            .join(format!("{}.json", manifest.hex()));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&p)(e)),
            _ => Ok(()),
        }
    }

    /// Removes a layer record.
    pub fn remove_layer(&self, d: &Digest) -> Result<(), StoreError> {
        let p = self.root.join("layers").join(format!("{}.json", d.hex()));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&p)(e)),
            _ => Ok(()),
        }
    }

    /// Removes stored blobs for which `keep` is false; returns (count, bytes) removed.
    pub fn retain_blobs(&self, keep: impl Fn(&Digest) -> bool) -> Result<(u64, u64), StoreError> {
        let dir = self.root.join("blobs/sha256");
        let mut n = 0;
        let mut bytes = 0;
        for e in fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            if !keep(&d) {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if fs::remove_file(e.path()).is_ok() {
                    n += 1;
                    bytes += len;
                }
            }
        }
        Ok((n, bytes))
    }

    /// All references: `registry/repo:tag` → manifest digest.
    pub fn refs(&self) -> Result<BTreeMap<String, Digest>, StoreError> {
        Ok(self
            .read_json(&self.root.join("refs.json"))?
            .unwrap_or_default())
    }

    /// Points `name` at `manifest`. Call with the lock held.
    pub fn set_ref(
        &self,
        _lock: &StoreLock,
        name: &str,
        manifest: &Digest,
    ) -> Result<(), StoreError> {
        let mut refs = self.refs()?;
        refs.insert(name.to_string(), *manifest);
        self.write_json(&self.root.join("refs.json"), &refs)
    }

    /// Removes `name`; returns the digest it pointed at. Call with the lock held.
    pub fn remove_ref(&self, _lock: &StoreLock, name: &str) -> Result<Option<Digest>, StoreError> {
        let mut refs = self.refs()?;
        let old = refs.remove(name);
        self.write_json(&self.root.join("refs.json"), &refs)?;
        Ok(old)
    }
}

#[path = "store_ztoc.rs"]
mod store_ztoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_records_refs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = Digest::of(b"{}");
        assert!(s.put_blob(&d, b"{ }").is_err());
        s.put_blob(&d, b"{}").unwrap();
        assert_eq!(s.get_blob(&d).unwrap(), b"{}");
        let rec = ImageRecord {
            manifest: d,
            config: d,
            layers: vec![],
            sources: vec!["r/x".into()],
            index: None,
            pulled: 1,
        };
        s.put_image(&rec).unwrap();
        assert_eq!(s.image(&d).unwrap().unwrap(), rec);
        let lock = s.lock().unwrap();
        s.set_ref(&lock, "r/x:1", &d).unwrap();
        assert_eq!(s.refs().unwrap().get("r/x:1"), Some(&d));
        assert_eq!(s.remove_ref(&lock, "r/x:1").unwrap(), Some(d));
        assert!(s.refs().unwrap().is_empty());
        let lr = LayerRecord {
            digest: d,
            size: 2,
            media_type: "m".into(),
            format: LayerFormat::Plain {
                compression: Compression::Gzip,
            },
            toc: Some(d),
            toc_uncompressed: 2,
            toc_offset: 0,
            content_bytes: 0,
        };
        s.put_layer(&lr).unwrap();
        assert_eq!(s.layer(&d).unwrap().unwrap(), lr);
    }
}
