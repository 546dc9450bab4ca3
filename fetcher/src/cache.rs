//! The chunk cache: verified, uncompressed chunks on local disk keyed by the sha256 of their bytes,
//! shared by every layer and image. A chunk is hashed on the way in and written by temp + rename
//! (without fsync: chunks are cheap to fetch again), and hashed again the first time this process
//! reads it, so neither a crash nor a bad disk can serve bytes that do not match their name: a
//! chunk that fails that check is deleted and reads as missing.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, info, warn};

use crate::atomic;
use crate::digest::{Digest, DigestError};

/// Errors of the chunk cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Bytes offered to the cache did not match their digest.
    #[error("refusing to cache chunk: {0}")]
    Digest(#[from] DigestError),
    /// Disk I/O failed.
    #[error("chunk cache {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Default size limit of the cache: 10 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;
/// How many bytes may be added between two checks of the size limit.
const CHECK_EVERY_BYTES: u64 = 64 << 20;

/// Verified chunks on disk.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    limit_bytes: u64,
    added_since_check: AtomicU64,
    evicting: Mutex<()>,
    /// Chunks this process wrote or has checked once.
    verified: Mutex<HashSet<Digest>>,
}

impl ChunkCache {
    /// The cache under `dir`, holding at most about `limit_bytes`.
    pub fn open(dir: &Path, limit_bytes: u64) -> Result<Self, CacheError> {
        let chunks = dir.join("chunks");
        for shard in 0..=255u8 {
            let d = chunks.join(format!("{shard:02x}"));
            fs::create_dir_all(&d).map_err(|source| CacheError::Io { path: d, source })?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            limit_bytes,
            added_since_check: AtomicU64::new(CHECK_EVERY_BYTES),
            evicting: Mutex::new(()),
            verified: Mutex::new(HashSet::new()),
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir.join("chunks").join(&hex[..2]).join(hex)
    }

    /// Whether the chunk is cached.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    fn is_verified(&self, d: &Digest) -> bool {
        self.verified.lock().map(|v| v.contains(d)).unwrap_or(false)
    }

    fn mark_verified(&self, d: &Digest) {
        if let Ok(mut v) = self.verified.lock() {
            v.insert(*d);
        }
    }

    /// Reads up to `len` bytes at `offset` of a cached chunk; `None` if it is not cached.
    pub fn read_at(
        &self,
        d: &Digest,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.path(d);
        if !self.is_verified(d) {
            let whole = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(CacheError::Io { path, source }),
            };
            if d.verify(&whole).is_err() {
                warn!(digest = %d, path = %path.display(), "cached chunk does not match its digest; dropping it");
                let _ = fs::remove_file(&path);
                return Ok(None);
            }
            self.mark_verified(d);
            let start = (offset as usize).min(whole.len());
            let end = start.saturating_add(len).min(whole.len());
            return Ok(Some(whole[start..end].to_vec()));
        }
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        let mut buf = vec![0u8; len];
        let mut n = 0;
        while n < len {
            match f.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(CacheError::Io { path, source }),
            }
        }
        buf.truncate(n);
        Ok(Some(buf))
    }

    /// Verifies `bytes` against `d` and stores them. Returns false if already cached.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<bool, CacheError> {
        d.verify(bytes)?;
        let path = self.path(d);
        if self.is_verified(d) && path.exists() {
            return Ok(false);
        }
        atomic::write_file_fast(&path, bytes).map_err(|source| CacheError::Io {
            path: path.clone(),
            source,
        })?;
        self.mark_verified(d);
        let added = self
            .added_since_check
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if added + bytes.len() as u64 >= CHECK_EVERY_BYTES {
            self.added_since_check.store(0, Ordering::Relaxed);
            self.enforce_limit()?;
        }
        Ok(true)
    }

    /// Where the assembled copy of a file with these chunks is (or would be) kept.
    pub fn assembled_path(&self, chunks: &[crate::index::Chunk]) -> PathBuf {
        let mut id = crate::digest::Hasher::default();
        for c in chunks {
            id.update(&c.file_offset.to_le_bytes());
            id.update(&c.len.to_le_bytes());
            id.update(c.digest.map(|d| d.hex()).unwrap_or_default().as_bytes());
        }
        self.dir.join("files").join(id.finish().hex())
    }

    /// A whole file assembled from its (verified, cached) chunks, for kernel passthrough: kept in
    /// `files/`, named by the sha256 of its chunk list, holes left sparse. `None` when a chunk is
    /// missing.
    pub fn assemble(
        &self,
        chunks: &[crate::index::Chunk],
        size: u64,
    ) -> Result<Option<PathBuf>, CacheError> {
        use std::io::Write as _;
        use std::os::unix::fs::FileExt;
        let path = self.assembled_path(chunks);
        let dir = self.dir.join("files");
        if path.exists() {
            return Ok(Some(path));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = atomic::temp_path(&path);
        let file = fs::File::create(&tmp).map_err(io(&tmp))?;
        let result = (|| -> Result<bool, CacheError> {
            file.set_len(size).map_err(io(&tmp))?;
            for c in chunks {
                let Some(d) = c.digest.filter(|_| c.loc != crate::index::ChunkLoc::Zeros) else {
                    continue;
                };
                let Some(bytes) = self.read_at(&d, 0, c.len as usize)? else {
                    return Ok(false);
                };
                file.write_all_at(&bytes, c.file_offset).map_err(io(&tmp))?;
            }
            (&file).flush().map_err(io(&tmp))?;
            // Unlike a chunk, the kernel reads this file without strata checking it: make it
            // durable before it gets its name, so a crash cannot leave a torn one.
            file.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))?;
            Ok(true)
        })();
        if !matches!(result, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        Ok(result?.then_some(path))
    }

    /// Removes the oldest chunks until the cache is within its limit. Returns bytes freed.
    pub fn enforce_limit(&self) -> Result<u64, CacheError> {
        let Ok(_guard) = self.evicting.try_lock() else {
            return Ok(0);
        };
        let mut files = self.list()?;
        let total: u64 = files.iter().map(|f| f.1).sum();
        if total <= self.limit_bytes {
            return Ok(0);
        }
        files.sort_by_key(|f| f.2);
        let target = self.limit_bytes - self.limit_bytes / 10;
        let mut freed = 0u64;
        for (path, len, _) in files {
            if total - freed <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                freed += len;
                debug!(path = %path.display(), "evicted chunk");
            }
        }
        info!(
            freed_bytes = freed,
            limit_bytes = self.limit_bytes,
            "chunk cache evicted"
        );
        Ok(freed)
    }

    /// Removes every cached chunk for which `keep` is false. Returns (chunks, bytes) freed.
    pub fn retain(&self, keep: impl Fn(&Digest) -> bool) -> Result<(u64, u64), CacheError> {
        let mut n = 0;
        let mut bytes = 0;
        for (path, len, _) in self.list()? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            if !keep(&d) && fs::remove_file(&path).is_ok() {
                n += 1;
                bytes += len;
            }
        }
        Ok((n, bytes))
    }

    /// Total bytes of cached chunks.
    pub fn usage(&self) -> Result<(u64, u64), CacheError> {
        let files = self.list()?;
        Ok((files.len() as u64, files.iter().map(|f| f.1).sum()))
    }

    /// (path, size, mtime) of every cached chunk.
    fn list(&self) -> Result<Vec<(PathBuf, u64, std::time::SystemTime)>, CacheError> {
        let root = self.dir.join("chunks");
        let io = |path: &Path, source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut out = Vec::new();
        for shard in fs::read_dir(&root).map_err(|e| io(&root, e))? {
            let shard = shard.map_err(|e| io(&root, e))?.path();
            let Ok(entries) = fs::read_dir(&shard) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") {
                    // A killed writer's temporary: nobody will rename it.
                    if crate::leftovers::is_dead_temporary(&name) {
                        let _ = fs::remove_file(e.path());
                    }
                    continue;
                }
                if let Ok(m) = e.metadata() {
                    out.push((
                        e.path(),
                        m.len(),
                        m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        let d = Digest::of(b"chunk bytes");
        assert!(!c.contains(&d));
        assert!(c.read_at(&d, 0, 5).unwrap().is_none());
        assert!(c.put(&d, b"other bytes").is_err());
        assert!(!c.contains(&d), "a bad chunk must not be stored");
        assert!(c.put(&d, b"chunk bytes").unwrap());
        assert!(!c.put(&d, b"chunk bytes").unwrap());
        assert_eq!(c.read_at(&d, 6, 100).unwrap().unwrap(), b"bytes");
    }

    #[test]
    fn a_chunk_damaged_on_disk_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"precious");
        {
            let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
            c.put(&d, b"precious").unwrap();
        }
        let hex = d.hex();
        std::fs::write(
            dir.path().join("chunks").join(&hex[..2]).join(&hex),
            b"precioux",
        )
        .unwrap();
        // A new process (a new cache) checks the chunk before serving it.
        let c = ChunkCache::open(dir.path(), 1 << 20).unwrap();
        assert!(c.read_at(&d, 0, 8).unwrap().is_none());
        assert!(!c.contains(&d), "the damaged chunk is dropped");
    }

    #[test]
    fn evicts_oldest_over_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 3000).unwrap();
        let mut ds = Vec::new();
        for i in 0..5u8 {
            let data = vec![i; 1000];
            let d = Digest::of(&data);
            c.put(&d, &data).unwrap();
            ds.push(d);
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let freed = c.enforce_limit().unwrap();
        assert!(freed >= 2000, "freed {freed}");
        assert!(!c.contains(&ds[0]));
        assert!(c.contains(&ds[4]));
        assert!(c.usage().unwrap().1 <= 3000);
    }
}
