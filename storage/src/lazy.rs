//! Lazy reads of file content. For each read: which chunks it touches, which of those are
//! cached, which are already being fetched by someone else (wait for them: one request per
//! chunk however many readers), and which to fetch now — neighbours coalesced into one range
//! request, independent ranges in parallel. Every chunk is decompressed and verified against its
//! digest by the cache before any reader sees it.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use tokio::sync::watch;
use tracing::{debug, error};

use crate::atomic;
use crate::cache::{CacheError, ChunkCache};
use crate::plain::index_plain;
use crate::store::LayerFormat;
use strata_distribution::{RangeReply, RegistryClient, RegistryError};
use strata_formats::index::{Chunk, ChunkLoc};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;

/// Two missing chunks closer than this are fetched in one request, gap included.
const COALESCE_GAP_BYTES: u64 = 256 * 1024;
/// Largest single range request.
const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// Range requests in flight at once for one read.
const PARALLEL_REQUESTS: usize = 8;

/// Errors of lazy reads.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry could not be reached or refused.
    #[error("fetching {blob}: {source}")]
    Registry {
        /// The layer blob.
        blob: Digest,
        /// The cause.
        source: RegistryError,
    },
    /// A chunk did not decompress or did not match its digest.
    #[error("chunk {digest} of layer {blob}: {reason}")]
    BadChunk {
        /// The layer blob.
        blob: Digest,
        /// The chunk's digest.
        digest: Digest,
        /// What went wrong.
        reason: String,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Another reader's fetch of this chunk failed.
    #[error("chunk {0} is not available (its fetch failed)")]
    Unavailable(Digest),
    /// Re-streaming a layer without a TOC failed.
    #[error("streaming layer {blob}: {reason}")]
    Stream {
        /// The layer blob.
        blob: Digest,
        /// What went wrong.
        reason: String,
    },
}

/// Where one layer's bytes come from.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// A repository that has the blob.
    pub repo: Reference,
    /// The blob.
    pub blob: Digest,
    /// Its format.
    pub format: LayerFormat,
}

/// Fetches, verifies and caches chunks; serves reads from the cache.
#[derive(Debug)]
pub struct ChunkFetcher {
    client: Arc<RegistryClient>,
    cache: Arc<ChunkCache>,
    blobs_dir: PathBuf,
    inflight: Mutex<HashMap<Digest, watch::Receiver<()>>>,
    layer_streams: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Reads waiting for the network now; background fetches hold back while there are any.
    waiting_reads: AtomicUsize,
}

/// Counts a read that waits for the network, for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes claimed chunks from the in-flight map when the fetch ends, however it ends; dropping
/// the senders wakes the waiters.
struct Claim<'a> {
    map: &'a Mutex<HashMap<Digest, watch::Receiver<()>>>,
    senders: Mutex<HashMap<Digest, watch::Sender<()>>>,
}

impl Claim<'_> {
    /// Ends the claim on `digests` (their waiters wake and look in the cache).
    fn release(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for d in digests {
            map.remove(&d);
            senders.remove(&d);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let all: Vec<Digest> = self
            .senders
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        self.release(all);
    }
}

impl ChunkFetcher {
    /// A fetcher over `cache`, fetching with `client`; whole blobs (for registries that ignore
    /// ranges) are kept in `blobs_dir`.
    pub fn new(client: Arc<RegistryClient>, cache: Arc<ChunkCache>, blobs_dir: PathBuf) -> Self {
        Self {
            client,
            cache,
            blobs_dir,
            inflight: Mutex::new(HashMap::new()),
            layer_streams: Mutex::new(HashMap::new()),
            waiting_reads: AtomicUsize::new(0),
        }
    }

    /// The cache this fetcher fills.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Chunks of `chunks` that overlap `offset..offset+len`.
    pub fn touching(chunks: &[Chunk], offset: u64, len: u64) -> &[Chunk] {
        let end = offset.saturating_add(len);
        let first = chunks.partition_point(|c| c.file_offset + c.len <= offset);
        let last = chunks.partition_point(|c| c.file_offset < end);
        &chunks[first..last.max(first)]
    }

    /// Reads `len` bytes at `offset` of a file from the cache alone; `None` if a chunk is missing.
    pub fn read_cached(
        &self,
        chunks: &[Chunk],
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let touched = Self::touching(chunks, offset, len);
        let mut out = Vec::with_capacity(len as usize);
        for c in touched {
            let start = offset.max(c.file_offset) - c.file_offset;
            let end = (offset + len).min(c.file_offset + c.len) - c.file_offset;
            let want = (end - start) as usize;
            match (c.loc, c.digest) {
                (ChunkLoc::Zeros, _) | (_, None) => out.resize(out.len() + want, 0),
                (_, Some(d)) => match self.cache.read_at(&d, start, want)? {
                    Some(b) if b.len() == want => out.extend_from_slice(&b),
                    _ => return Ok(None),
                },
            }
        }
        Ok(Some(out))
    }

    /// Reads `len` bytes at `offset` of a file, fetching what is missing.
    pub async fn read(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, FetchError> {
        if let Some(b) = self.read_cached(chunks, offset, len)? {
            return Ok(b);
        }
        self.ensure(layer, Self::touching(chunks, offset, len))
            .await?;
        match self.read_cached(chunks, offset, len)? {
            Some(b) => Ok(b),
            None => {
                let missing = Self::touching(chunks, offset, len)
                    .iter()
                    .filter_map(|c| c.digest)
                    .find(|d| !self.cache.contains(d));
                Err(FetchError::Unavailable(missing.unwrap_or(layer.blob)))
            }
        }
    }

    /// Makes sure every chunk in `chunks` is cached.
    pub async fn ensure(&self, layer: &LayerSource, chunks: &[Chunk]) -> Result<(), FetchError> {
        self.ensure_as(layer, chunks, true).await
    }

    /// [`Self::ensure`] at low priority: starts only when no read has been waiting for the
    /// network for a moment, so background work never delays a reader by more than one request.
    pub async fn ensure_when_idle(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
    ) -> Result<(), FetchError> {
        while self.waiting_reads.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.ensure_as(layer, chunks, false).await
    }

    async fn ensure_as(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        foreground: bool,
    ) -> Result<(), FetchError> {
        let mut mine = Vec::new();
        let mut waits = Vec::new();
        let claim = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            let mut senders = HashMap::new();
            let mut seen = HashSet::new();
            for c in chunks {
                let Some(d) = c.digest else { continue };
                if c.loc == ChunkLoc::Zeros || !seen.insert(d) || self.cache.contains(&d) {
                    continue;
                }
                if let Some(rx) = map.get(&d) {
                    waits.push((d, rx.clone()));
                    continue;
                }
                let (tx, rx) = watch::channel(());
                map.insert(d, rx);
                senders.insert(d, tx);
                mine.push(*c);
            }
            Claim {
                map: &self.inflight,
                senders: Mutex::new(senders),
            }
        };
        let _waiting = (foreground && !(mine.is_empty() && waits.is_empty()))
            .then(|| Waiting::new(&self.waiting_reads));
        let result = if mine.is_empty() {
            Ok(())
        } else if matches!(layer.format, LayerFormat::Plain { .. })
            || mine.iter().any(|c| c.loc == ChunkLoc::Local)
        {
            self.restream(layer).await
        } else {
            self.fetch_ranges(layer, &mine, &claim).await
        };
        drop(claim);
        if let Err(e) = &result {
            error!(blob = %layer.blob, error = %e, "chunk fetch failed");
        }
        result?;
        for (d, mut rx) in waits {
            // The sender is dropped when the other fetch ends, successful or not.
            let _ = rx.changed().await;
            if !self.cache.contains(&d) {
                return Err(FetchError::Unavailable(d));
            }
        }
        Ok(())
    }

    fn whole_blob_path(&self, blob: &Digest) -> PathBuf {
        self.blobs_dir.join(blob.hex())
    }

    /// Fetches `chunks` in coalesced range requests; each request's chunks are released to
    /// their waiters as soon as that request is stored, not when all are.
    async fn fetch_ranges(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        claim: &Claim<'_>,
    ) -> Result<(), FetchError> {
        let groups = coalesce(chunks);
        let whole = self.whole_blob_path(&layer.blob);
        stream::iter(groups)
            .map(|RangeGroup { start, end, items }| {
                let whole = whole.clone();
                async move {
                    let data = if let Ok(mut f) = std::fs::File::open(&whole) {
                        read_range_of_file(&mut f, start, end).map_err(|e| FetchError::Stream {
                            blob: layer.blob,
                            reason: e.to_string(),
                        })?
                    } else {
                        let reply = self
                            .client
                            .get_blob_range(&layer.repo, &layer.blob, start..end)
                            .await
                            .map_err(|source| FetchError::Registry {
                                blob: layer.blob,
                                source,
                            })?;
                        match reply {
                            RangeReply::Partial(b) => {
                                b
                            }
                            RangeReply::Whole(b) => {
                                debug!(blob = %layer.blob, "registry ignored Range: keeping the whole blob");
                                let _ = atomic::write_file(&whole, &b);
                                if end as usize > b.len() {
                                    return Err(FetchError::Stream {
                                        blob: layer.blob,
                                        reason: format!("range ends at {end} past blob size {}", b.len()),
                                    });
                                }
                                b.slice(start as usize..end as usize)
                            }
                        }
                    };
                    let cache = self.cache.clone();
                    let blob = layer.blob;
                    let digests: Vec<Digest> = items.iter().filter_map(|l| l.chunk.digest).collect();
                    let stored = tokio::task::spawn_blocking(move || store_group(&cache, blob, start, &data, &items))
                        .await
                        .map_err(|e| FetchError::Stream {
                            blob: layer.blob,
                            reason: e.to_string(),
                        });
                    claim.release(digests);
                    stored?
                }
            })
            .buffer_unordered(PARALLEL_REQUESTS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Streams a layer without a TOC again, refilling the cache with all its chunks.
    async fn restream(&self, layer: &LayerSource) -> Result<(), FetchError> {
        let LayerFormat::Plain { compression } = layer.format else {
            return Err(FetchError::Stream {
                blob: layer.blob,
                reason: "chunk has no location in the blob".into(),
            });
        };
        let lock = {
            let mut m = self.layer_streams.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(layer.blob).or_default().clone()
        };
        let _guard = lock.lock().await;
        let local = self.whole_blob_path(&layer.blob);
        if local.exists() {
            // A blob made or loaded here: index it from disk.
            let cache = self.cache.clone();
            let blob = layer.blob;
            let indexed = tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&local).map_err(|e| e.to_string())?;
                index_plain(std::io::BufReader::new(f), compression, &cache)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| FetchError::Stream {
                blob,
                reason: e.to_string(),
            })?
            .map_err(|reason| FetchError::Stream { blob, reason })?;
            if indexed.blob_digest != blob {
                return Err(FetchError::Stream {
                    blob,
                    reason: format!("local copy hashes to {}", indexed.blob_digest),
                });
            }
            return Ok(());
        }
        let body = self
            .client
            .blob_stream(&layer.repo, &layer.blob)
            .await
            .map_err(|source| FetchError::Registry {
                blob: layer.blob,
                source,
            })?;
        let cache = self.cache.clone();
        let blob = layer.blob;
        let result =
            feed_blocking(body, |_| {}, move |r| index_plain(r, compression, &cache)).await;
        let stream_err = |reason: String| FetchError::Stream { blob, reason };
        let indexed = result
            .map_err(|e| stream_err(e.to_string()))?
            .map_err(|e| stream_err(e.to_string()))?;
        if indexed.blob_digest != blob {
            return Err(stream_err(format!(
                "stream hashed to {}",
                indexed.blob_digest
            )));
        }
        Ok(())
    }
}

fn read_range_of_file(f: &mut std::fs::File, start: u64, end: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (end - start) as usize];
    f.read_exact_at(&mut buf, start)?;
    Ok(Bytes::from(buf))
}

/// A chunk and its byte range in the blob.
#[derive(Debug, Clone, Copy)]
struct Located {
    start: u64,
    end: u64,
    chunk: Chunk,
}

/// Chunks fetched with one range request.
#[derive(Debug)]
struct RangeGroup {
    start: u64,
    end: u64,
    items: Vec<Located>,
}

/// Sorts chunks by blob offset and merges neighbours into range requests.
fn coalesce(chunks: &[Chunk]) -> Vec<RangeGroup> {
    let mut located: Vec<Located> = chunks
        .iter()
        .filter_map(|c| match c.loc {
            ChunkLoc::Zstd { start, end } | ChunkLoc::Gzip { start, end, .. } => Some(Located {
                start,
                end,
                chunk: *c,
            }),
            _ => None,
        })
        .collect();
    located.sort_by_key(|l| l.start);
    let mut groups: Vec<RangeGroup> = Vec::new();
    for item in located {
        match groups.last_mut() {
            Some(g)
                if item.start <= g.end + COALESCE_GAP_BYTES
                    && item.end.max(g.end) - g.start <= MAX_REQUEST_BYTES =>
            {
                g.end = g.end.max(item.end);
                g.items.push(item);
            }
            _ => groups.push(RangeGroup {
                start: item.start,
                end: item.end,
                items: vec![item],
            }),
        }
    }
    groups
}

/// Decompresses and verifies each chunk of a fetched range and stores it in the cache.
fn store_group(
    cache: &ChunkCache,
    blob: Digest,
    base: u64,
    data: &[u8],
    items: &[Located],
) -> Result<(), FetchError> {
    for Located {
        start,
        end,
        chunk: c,
    } in items
    {
        let Some(digest) = c.digest else { continue };
        let bad = |reason: String| FetchError::BadChunk {
            blob,
            digest,
            reason,
        };
        let slice = data
            .get((start - base) as usize..(end - base) as usize)
            .ok_or_else(|| bad("range reply too short".into()))?;
        let plain = match c.loc {
            ChunkLoc::Zstd { .. } => {
                // The range may run on into the frames of following tar headers (when the TOC
                // gives no end, it ends where the next content starts): take only the chunk.
                let mut out = Vec::with_capacity(c.len as usize);
                zstd::stream::read::Decoder::new(slice)
                    .and_then(|d| d.take(c.len).read_to_end(&mut out))
                    .map_err(|e| bad(format!("zstd: {e}")))?;
                out
            }
            ChunkLoc::Gzip { inner, .. } => {
                let mut d = flate2::read::MultiGzDecoder::new(slice);
                std::io::copy(&mut (&mut d).take(inner), &mut std::io::sink())
                    .map_err(|e| bad(format!("gzip: {e}")))?;
                let mut out = Vec::with_capacity(c.len as usize);
                d.take(c.len)
                    .read_to_end(&mut out)
                    .map_err(|e| bad(format!("gzip: {e}")))?;
                out
            }
            _ => continue,
        };
        if plain.len() as u64 != c.len {
            return Err(bad(format!(
                "decompressed to {} bytes, expected {}",
                plain.len(),
                c.len
            )));
        }
        cache.put(&digest, &plain).map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

/// A blocking reader over byte buffers sent from an async task (use it off the runtime).
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    /// Reads what `rx` receives until its sender is dropped.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

/// Errors of [`feed_blocking`].
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The byte stream failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The blocking consumer panicked or was cancelled.
    #[error("stream consumer failed: {0}")]
    Worker(String),
}

/// Feeds a blob's byte stream to `consume`, which runs on a blocking thread and reads it as
/// `std::io::Read`; `on_bytes` sees the size of each piece as it arrives.
pub async fn feed_blocking<T: Send + 'static>(
    body: impl futures_util::Stream<Item = Result<Bytes, RegistryError>>,
    mut on_bytes: impl FnMut(u64),
    consume: impl FnOnce(ChannelReader) -> T + Send + 'static,
) -> Result<T, FeedError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let work = tokio::task::spawn_blocking(move || consume(ChannelReader::new(rx)));
    let pump = async move {
        let mut body = std::pin::pin!(body);
        while let Some(piece) = body.try_next().await? {
            on_bytes(piece.len() as u64);
            if tx.send(piece).await.is_err() {
                break;
            }
        }
        Ok::<(), RegistryError>(())
    };
    let (pumped, done) = tokio::join!(pump, work);
    let done = done.map_err(|e| FeedError::Worker(e.to_string()))?;
    pumped?;
    Ok(done)
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(off: u64, len: u64) -> Chunk {
        Chunk {
            file_offset: off,
            len,
            digest: None,
            loc: ChunkLoc::Zeros,
        }
    }

    #[test]
    fn touching_selects_overlapping_chunks() {
        let cs = [chunk(0, 10), chunk(10, 10), chunk(20, 5)];
        assert_eq!(ChunkFetcher::touching(&cs, 0, 1).len(), 1);
        assert_eq!(ChunkFetcher::touching(&cs, 9, 2).len(), 2);
        assert_eq!(ChunkFetcher::touching(&cs, 10, 10).len(), 1);
        assert_eq!(ChunkFetcher::touching(&cs, 19, 100).len(), 2);
        assert_eq!(ChunkFetcher::touching(&cs, 25, 10).len(), 0);
    }

    #[test]
    fn coalesces_neighbours_but_not_distant_chunks() {
        let at = |start: u64, end: u64| Chunk {
            file_offset: 0,
            len: 1,
            digest: Some(Digest::of(&start.to_le_bytes())),
            loc: ChunkLoc::Zstd { start, end },
        };
        let groups = coalesce(&[
            at(5000, 6000),
            at(0, 1000),
            at(1000, 2000),
            at(10 << 20, (10 << 20) + 5),
        ]);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            (groups[0].start, groups[0].end, groups[0].items.len()),
            (0, 6000, 3)
        );
        assert_eq!(groups[1].start, 10 << 20);
        let big: Vec<Chunk> = (0..40).map(|i| at(i << 20, (i + 1) << 20)).collect();
        assert!(
            coalesce(&big)
                .iter()
                .all(|g| g.end - g.start <= MAX_REQUEST_BYTES)
        );
    }

    #[test]
    fn bad_chunk_is_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ChunkCache::open(dir.path(), 1 << 30).unwrap();
        let good = b"the real content";
        let frame = zstd::bulk::compress(b"tampered content", 1).unwrap();
        let c = Chunk {
            file_offset: 0,
            len: good.len() as u64,
            digest: Some(Digest::of(good)),
            loc: ChunkLoc::Zstd {
                start: 0,
                end: frame.len() as u64,
            },
        };
        let err = store_group(
            &cache,
            Digest::of(b"blob"),
            0,
            &frame,
            &[Located {
                start: 0,
                end: frame.len() as u64,
                chunk: c,
            }],
        )
        .unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!cache.contains(&Digest::of(good)));

        let frame = zstd::bulk::compress(good, 1).unwrap();
        store_group(
            &cache,
            Digest::of(b"blob"),
            0,
            &frame,
            &[Located {
                start: 0,
                end: frame.len() as u64,
                chunk: c,
            }],
        )
        .unwrap();
        assert!(cache.contains(&Digest::of(good)));
    }
}
