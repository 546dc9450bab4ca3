//! The chunk cache: verified, uncompressed chunks on local disk keyed by the sha256 of their bytes,
//! shared by every layer and image. A chunk is hashed on the way in and written by temp + rename
//! (without fsync: chunks are cheap to fetch again), and hashed again the first time this process
//! reads it, so neither a crash nor a bad disk can serve bytes that do not match their name: a
//! chunk that fails that check is deleted and reads as missing.
//!
//! The size limit holds as chunks are added: each `put` counts its bytes and, past the limit,
//! evicts the oldest chunks and assembled files. Chunks a reader is waiting for ("hot": a read
//! missed them, or they were stored right after such a chunk, which the same read and its
//! readahead need next; up to half the limit) are kept even past the limit until they are read
//! once (or for 30 s), so that a layer larger than the whole cache, streamed again for a read,
//! still serves that read. A full disk makes a `put` evict what it can and try once more.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, info, warn};

use crate::atomic;
use crate::descriptors::Descriptors;
use strata_oci::digest::{Digest, DigestError};

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
    /// A cached SOCI span could not be inflated.
    #[error("span {digest}: {reason}")]
    Span {
        /// The span digest.
        digest: Digest,
        /// What went wrong.
        reason: String,
    },
}

/// Default size limit of the cache: 10 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 10 << 30;
/// How long a chunk a reader missed stays hot if nobody reads it.
const HOT_FOR: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a chunk a fetch stored stays hot if nobody reads it (the read that asked for it
/// reads it within milliseconds; prefetched chunks nobody reads must not hold the cache).
const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(3);
/// At most this many bytes of chunks stored right after a missed one are kept hot with it.
const HOT_FOLLOWING_BYTES: u64 = 8 << 20;

/// Verified chunks on disk.
#[derive(Debug)]
pub struct ChunkCache {
    dir: PathBuf,
    limit_bytes: u64,
    /// Bytes in the cache as this process last counted them, plus what it added since.
    usage_bytes: AtomicU64,
    /// The usage past which the next `put` evicts: the limit, or more when hot chunks alone
    /// exceed it. `u64::MAX` until the first count.
    next_check: AtomicU64,
    evicting: Mutex<()>,
    hot: Mutex<Hot>,
    /// Whether this process said once that hot chunks exceed the limit.
    warned_hot: std::sync::atomic::AtomicBool,
    /// Chunks this process wrote or has checked once.
    verified: Mutex<HashSet<Digest>>,
    /// Assembled files checked against their chunks' digests by this process.
    verified_files: Mutex<HashSet<PathBuf>>,
    /// Open files of verified chunks.
    fds: Descriptors,
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
            usage_bytes: AtomicU64::new(0),
            next_check: AtomicU64::new(0),
            evicting: Mutex::new(()),
            hot: Mutex::new(Hot::default()),
            warned_hot: std::sync::atomic::AtomicBool::new(false),
            verified: Mutex::new(HashSet::new()),
            verified_files: Mutex::new(HashSet::new()),
            fds: Descriptors::default(),
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir.join("chunks").join(&hex[..2]).join(hex)
    }

    /// The size limit, in bytes.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Whether the chunk is cached.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// Whether chunk `d` was stored (or checked) by this process since it opened the cache:
    /// a chunk that was and is missing now has been evicted.
    pub fn was_stored(&self, d: &Digest) -> bool {
        self.is_verified(d)
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
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.wanted(d);
                    return Ok(None);
                }
                Err(source) => return Err(CacheError::Io { path, source }),
            };
            if d.verify(&whole).is_err() {
                warn!(digest = %d, path = %path.display(), "cached chunk does not match its digest; dropping it");
                let _ = fs::remove_file(&path);
                return Ok(None);
            }
            self.mark_verified(d);
            self.served(d);
            let start = (strata_oci::usize_of(offset)).min(whole.len());
            let end = start.saturating_add(len).min(whole.len());
            return Ok(Some(whole[start..end].to_vec()));
        }
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.wanted(d);
                return Ok(None);
            }
            Err(source) => return Err(CacheError::Io { path, source }),
        };
        self.served(d);
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

    /// Reads bytes at `offset` of a cached chunk into all of `buf`, through a kept descriptor:
    /// false if the chunk is not cached or ends before `buf` is full.
    pub fn read_into(&self, d: &Digest, offset: u64, buf: &mut [u8]) -> Result<bool, CacheError> {
        if !self.is_verified(d) {
            // The first read checks the whole chunk (and marks it verified).
            return Ok(match self.read_at(d, offset, buf.len())? {
                Some(b) if b.len() == buf.len() => {
                    buf.copy_from_slice(&b);
                    true
                }
                _ => false,
            });
        }
        let path = self.path(d);
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let Some(f) = self.fds.get(d, &path).map_err(io)? else {
            // Evicted: the stream or fetch that brings it back keeps it for this reader.
            self.wanted(d);
            return Ok(false);
        };
        match f.read_exact_at(buf, offset) {
            Ok(()) => {
                self.served(d);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    /// Verifies `bytes` against `d` and stores them, kept a moment for the read that fetched
    /// them. Returns false if already cached.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<bool, CacheError> {
        self.put_as(d, bytes, false)
    }

    /// [`Self::put`] for a chunk of a whole layer being streamed: kept only if a reader waits
    /// for it or it follows closely one a reader waits for.
    pub fn put_streamed(&self, d: &Digest, bytes: &[u8]) -> Result<bool, CacheError> {
        self.put_as(d, bytes, true)
    }

    fn put_as(&self, d: &Digest, bytes: &[u8], streamed: bool) -> Result<bool, CacheError> {
        d.verify(bytes)?;
        let path = self.path(d);
        if self.is_verified(d) && path.exists() {
            return Ok(false);
        }
        self.stored(d, bytes.len() as u64, streamed);
        if let Err(source) = atomic::write_file_fast(&path, bytes) {
            if source.kind() != io::ErrorKind::StorageFull {
                return Err(CacheError::Io { path, source });
            }
            // A full disk: give back what this cache can (all but the hot chunks), once.
            let freed = self.evict_to(0)?;
            warn!(
                freed_bytes = freed,
                "disk full while caching chunk {d}: evicted the chunk cache"
            );
            atomic::write_file_fast(&path, bytes)
                .map_err(|source| CacheError::Io { path, source })?;
        }
        self.mark_verified(d);
        let usage = self
            .usage_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed)
            + bytes.len() as u64;
        if usage > self.next_check.load(Ordering::Relaxed) {
            self.enforce_limit()?;
        }
        Ok(true)
    }

    /// Notes that a reader missed chunk `d`: it is hot until read (or for a while).
    fn wanted(&self, d: &Digest) {
        if let Ok(mut h) = self.hot.lock() {
            h.keep(*d, HOT_FOR);
        }
    }

    /// Notes that chunk `d` was read: it need not be kept any more.
    fn served(&self, d: &Digest) {
        if let Ok(mut h) = self.hot.lock()
            && !h.until.is_empty()
        {
            h.until.remove(d);
        }
    }

    /// Notes that chunk `d` of `len` bytes is being stored. A fetched chunk is kept a moment
    /// for its reader; in a stream, a chunk a reader missed starts a run of following chunks
    /// kept with it.
    fn stored(&self, d: &Digest, len: u64, streamed: bool) {
        let run = (self.limit_bytes / 2).min(HOT_FOLLOWING_BYTES);
        if let Ok(mut h) = self.hot.lock() {
            if streamed {
                h.streamed(*d, len, run);
            } else if !h.is_kept(d) {
                h.keep(*d, FRESH_FOR);
            }
        }
    }

    fn hot_set(&self) -> HashSet<Digest> {
        self.hot.lock().map(|mut h| h.current()).unwrap_or_default()
    }

    /// Where the assembled copy of a file with these chunks is (or would be) kept.
    pub fn assembled_path(&self, chunks: &[strata_formats::index::Chunk]) -> PathBuf {
        let mut id = strata_oci::digest::Hasher::default();
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
        chunks: &[strata_formats::index::Chunk],
        size: u64,
    ) -> Result<Option<PathBuf>, CacheError> {
        use std::io::Write as _;
        use std::os::unix::fs::FileExt;
        // SOCI chunks are cached compressed: such files are read through strata, never handed
        // to the kernel.
        if chunks
            .iter()
            .any(|c| matches!(c.loc, strata_formats::index::ChunkLoc::Zran { .. }))
        {
            return Ok(None);
        }
        let path = self.assembled_path(chunks);
        let dir = self.dir.join("files");
        if path.exists() {
            // The kernel reads it without strata: check it once per process, as chunks are,
            // and build it again if a byte changed on disk.
            if self.assembled_is_sound(&path, chunks) {
                return Ok(Some(path));
            }
            warn!(path = %path.display(), "assembled file does not match its chunks' digests; rebuilding it");
            let _ = fs::remove_file(&path);
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
                let Some(d) = c
                    .digest
                    .filter(|_| c.loc != strata_formats::index::ChunkLoc::Zeros)
                else {
                    continue;
                };
                let Some(bytes) = self.read_at(&d, 0, strata_oci::usize_of(c.len))? else {
                    return Ok(false);
                };
                file.write_all_at(&bytes, c.file_offset).map_err(io(&tmp))?;
            }
            (&file).flush().map_err(io(&tmp))?;
            // Unlike a chunk, the kernel reads this file without strata checking it: make it
            // durable before it gets its name, so a crash cannot leave a torn one.
            file.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))?;
            if let Ok(mut v) = self.verified_files.lock() {
                v.insert(path.clone());
            }
            Ok(true)
        })();
        if !matches!(result, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        Ok(result?.then_some(path))
    }

    /// Whether the assembled file at `path` holds exactly its chunks (each region hashed against
    /// the chunk's digest, zero chunks all zeros); remembered once true for this process.
    fn assembled_is_sound(&self, path: &Path, chunks: &[strata_formats::index::Chunk]) -> bool {
        use std::os::unix::fs::FileExt;
        if self.verified_files.lock().is_ok_and(|v| v.contains(path)) {
            return true;
        }
        let Ok(file) = fs::File::open(path) else {
            return false;
        };
        let mut buf = Vec::new();
        for c in chunks {
            buf.resize(strata_oci::usize_of(c.len), 0);
            if file.read_exact_at(&mut buf, c.file_offset).is_err() {
                return false;
            }
            let sound = if c.loc == strata_formats::index::ChunkLoc::Zeros {
                buf.iter().all(|b| *b == 0)
            } else {
                c.digest.is_none_or(|d| d.verify(&buf).is_ok())
            };
            if !sound {
                return false;
            }
        }
        if let Ok(mut v) = self.verified_files.lock() {
            v.insert(path.to_path_buf());
        }
        true
    }

    /// Removes the oldest chunks and assembled files until the cache is within its limit (hot
    /// chunks stay). Returns bytes freed.
    pub fn enforce_limit(&self) -> Result<u64, CacheError> {
        self.evict_to(self.limit_bytes - self.limit_bytes / 10)
    }

    /// Evicts (oldest first, hot chunks kept) until at most `target` bytes are left, if the
    /// cache is over its limit or `target` is 0. Returns bytes freed.
    fn evict_to(&self, target: u64) -> Result<u64, CacheError> {
        let Ok(_guard) = self.evicting.try_lock() else {
            return Ok(0);
        };
        let mut files = self.list()?;
        files.extend(self.list_assembled());
        let total: u64 = files.iter().map(|f| f.1).sum();
        let mut freed = 0u64;
        if total > self.limit_bytes || target == 0 {
            let hot = self.hot_set();
            files.sort_by_key(|f| f.2);
            // Cold files first; hot ones only past half the limit again (oldest first).
            let (hot_files, cold): (Vec<_>, Vec<_>) =
                files.into_iter().partition(|f| is_hot(&f.0, &hot));
            let cap = self.limit_bytes.saturating_add(self.limit_bytes / 2);
            for ((path, len, _), floor) in cold
                .into_iter()
                .map(|f| (f, target))
                .chain(hot_files.into_iter().map(|f| (f, cap)))
            {
                if total - freed <= floor {
                    continue;
                }
                if fs::remove_file(&path).is_ok() {
                    freed += len;
                    debug!(path = %path.display(), "evicted");
                    // An assembled file made again later is checked again; the others stay
                    // checked (clearing all would re-hash every large file on its next open).
                    if let Ok(mut v) = self.verified_files.lock() {
                        v.remove(&path);
                    }
                }
            }
            info!(
                freed_bytes = freed,
                limit_bytes = self.limit_bytes,
                "chunk cache evicted"
            );
        }
        self.fds.clear();
        let left = total - freed;
        self.usage_bytes.store(left, Ordering::Relaxed);
        // Hot chunks alone over the limit: the next check comes after another tenth of it.
        let next = if left > self.limit_bytes {
            if !self.warned_hot.swap(true, Ordering::Relaxed) {
                warn!(
                    hot_bytes = left,
                    limit_bytes = self.limit_bytes,
                    "chunks being read do not fit the chunk cache limit; keeping them (raise --cache-mb)"
                );
            }
            (left + self.limit_bytes / 10).min(self.limit_bytes + self.limit_bytes / 2)
        } else {
            self.limit_bytes
        };
        self.next_check.store(next, Ordering::Relaxed);
        Ok(freed)
    }

    /// (path, size, mtime) of every assembled file.
    fn list_assembled(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let Ok(entries) = fs::read_dir(self.dir.join("files")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let t = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                m.is_file().then(|| (e.path(), m.len(), t))
            })
            .collect()
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
        self.fds.clear();
        Ok((n, bytes))
    }

    /// Cached chunks and the bytes of chunks and assembled files together.
    pub fn usage(&self) -> Result<(u64, u64), CacheError> {
        let files = self.list()?;
        let assembled: u64 = self.list_assembled().iter().map(|f| f.1).sum();
        Ok((
            files.len() as u64,
            files.iter().map(|f| f.1).sum::<u64>() + assembled,
        ))
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

fn is_hot(path: &Path, hot: &HashSet<Digest>) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    format!("sha256:{name}")
        .parse::<Digest>()
        .is_ok_and(|d| hot.contains(&d))
}

/// Chunks readers wait for: missed ones, chunks a fetch for a read just stored, and the run
/// of streamed chunks stored right after a missed one. Each is kept until it is read once or
/// its deadline passes.
#[derive(Debug, Default)]
struct Hot {
    until: HashMap<Digest, std::time::Instant>,
    /// Bytes left in the current run of streamed chunks kept after a missed one.
    following: u64,
}

impl Hot {
    fn keep(&mut self, d: Digest, for_: std::time::Duration) {
        self.until.insert(d, std::time::Instant::now() + for_);
        if self.until.len() > 100_000 {
            let now = std::time::Instant::now();
            self.until.retain(|_, t| *t > now);
        }
    }

    fn is_kept(&self, d: &Digest) -> bool {
        self.until
            .get(d)
            .is_some_and(|t| *t > std::time::Instant::now())
    }

    fn streamed(&mut self, d: Digest, len: u64, run: u64) {
        if self.is_kept(&d) {
            self.following = run;
        } else if self.following > 0 {
            self.following = self.following.saturating_sub(len);
            self.keep(d, HOT_FOR);
        }
    }

    fn current(&mut self) -> HashSet<Digest> {
        let now = std::time::Instant::now();
        self.until.retain(|_, t| *t > now);
        self.until.keys().copied().collect()
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
