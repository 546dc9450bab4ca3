//! Lazy reads of file content. For each read: which chunks it touches, which of those are
//! cached, which are already being fetched by someone else (wait for them: one request per
//! chunk however many readers), and which to fetch now — neighbours coalesced into one range
//! request, independent ranges in parallel (see [`crate::ranges`]). Every chunk is decompressed
//! and verified against its digest by the cache before any reader sees it. The bytes come from
//! a [`BlobSource`]; a source that ignores ranges gets its whole blob kept on disk and read
//! from there.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use tracing::debug;

use crate::atomic;
use crate::cache::{CacheError, ChunkCache};
use crate::inflight::{Claim, Claimed, Ended, Foreground, Inflight};
use crate::plain::index_plain;
use crate::ranges::{PARALLEL_REQUESTS, RangeGroup, coalesce, store_group};
use crate::source::{BlobSource, RangeReply, SourceError};
use crate::spans::Spans;
use crate::store::LayerFormat;
use strata_formats::index::{Chunk, ChunkLoc};
use strata_formats::tarwalk::WalkError;
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;

pub use crate::feed::{ChannelReader, FeedError, feed_blocking};

/// Errors of lazy reads.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The blob source (the registry) could not be reached or refused.
    #[error("fetching {blob}: {source}")]
    Source {
        /// The layer blob.
        blob: Digest,
        /// The cause.
        #[source]
        source: SourceError,
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
    /// The fetch this read waited for (another read's, or a prefetch) failed, for the reason
    /// given (that error and its causes, on one line).
    #[error("chunk {digest}: {cause}")]
    FailedElsewhere {
        /// The chunk.
        digest: Digest,
        /// Why the fetch failed.
        cause: Arc<str>,
    },
    /// Another reader's fetch brought this chunk in, but the cache evicted it before this
    /// read could copy it (a cache smaller than what is being fetched).
    #[error("chunk {0} was evicted from the cache before it was read")]
    Evicted(Digest),
    /// The read waited for the network past its deadline ([`crate::deadline`]).
    #[error(
        "layer {blob}: {what} from registry {registry}: no answer within {secs}s (STRATA_READ_TIMEOUT_SECS)"
    )]
    TimedOut {
        /// The layer blob.
        blob: Digest,
        /// The chunk (or range) waited for.
        what: String,
        /// The registry asked.
        registry: String,
        /// The deadline, in seconds.
        secs: f64,
        /// The same chunk's read passed the deadline moments ago: this read did not wait.
        repeated: bool,
    },
    /// Another reader's fetch of this chunk was abandoned (that reader passed its deadline or
    /// went away) before it ended: this read fetches it itself.
    #[error("chunk {0}: the fetch this read waited for was abandoned")]
    Abandoned(Digest),
    /// Reading a kept whole blob failed.
    #[error("layer {blob}: reading {path}: {source}")]
    Io {
        /// The layer blob.
        blob: Digest,
        /// The kept copy.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Indexing a layer without a TOC again (to refill the cache) failed.
    #[error("streaming layer {blob}: {source}")]
    Index {
        /// The layer blob.
        blob: Digest,
        /// The cause.
        #[source]
        source: WalkError,
    },
    /// The source's stream of a layer without a TOC failed.
    #[error("streaming layer {blob}: {source}")]
    Feed {
        /// The layer blob.
        blob: Digest,
        /// The cause.
        #[source]
        source: FeedError<SourceError>,
    },
    /// Re-streaming a layer without a TOC, or a range of a whole blob, went wrong otherwise.
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
    source: Arc<dyn BlobSource>,
    cache: Arc<ChunkCache>,
    blobs_dir: PathBuf,
    inflight: Inflight,
    layer_streams: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Reads waiting for the network now; background fetches hold back while there are any.
    foreground: Foreground,
    /// Checkpoints of SOCI layers, for reading their spans.
    spans: Spans,
    /// How long one read, and one range request, may wait for the network.
    pub(crate) read_deadline: std::time::Duration,
    /// Chunks whose reads passed the deadline lately.
    pub(crate) recent_timeouts: crate::read_deadline::RecentTimeouts,
    /// Streamed gzip layers whose chunks are found again through a local ztoc.
    local: local::LocalZtocs,
}

/// How many times a read fetches its chunks when they are evicted before it can copy them.
const READ_ATTEMPTS: usize = 3;

impl ChunkFetcher {
    /// A fetcher over `cache`, fetching from `source`; whole blobs (from sources that ignore
    /// ranges) are kept in `blobs_dir`.
    pub fn new(source: Arc<dyn BlobSource>, cache: Arc<ChunkCache>, blobs_dir: PathBuf) -> Self {
        Self {
            source,
            cache,
            blobs_dir,
            inflight: Inflight::default(),
            layer_streams: Mutex::new(HashMap::new()),
            spans: Spans::default(),
            foreground: Foreground::default(),
            read_deadline: crate::read_deadline::read_deadline(),
            recent_timeouts: Default::default(),
            local: local::LocalZtocs::default(),
        }
    }

    /// This fetcher with reads bounded by `deadline` instead of [`crate::read_deadline::read_deadline`].
    pub fn with_read_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.read_deadline = deadline;
        self
    }

    /// The cache this fetcher fills.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Makes the chunks of a SOCI layer indexed by `ztoc` readable (their spans' checkpoints).
    pub fn register_ztoc(&self, ztoc: &Arc<strata_formats::ztoc::Ztoc>) {
        self.spans.register(ztoc);
    }

    /// Chunks of `chunks` that overlap `offset..offset+len`.
    pub fn touching(chunks: &[Chunk], offset: u64, len: u64) -> &[Chunk] {
        let end = offset.saturating_add(len);
        let first = chunks.partition_point(|c| c.file_offset + c.len <= offset);
        let last = chunks.partition_point(|c| c.file_offset < end);
        &chunks[first..last.max(first)]
    }

    /// Reads the file bytes at `offset` into `buf` from the cache alone, straight from the
    /// cached chunk files. Returns how many bytes the chunks cover (`buf.len()` unless the read
    /// runs past the last chunk), or `None` if a chunk is missing.
    pub fn read_cached_into(
        &self,
        chunks: &[Chunk],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<usize>, CacheError> {
        let len = buf.len() as u64;
        let mut filled = 0;
        for c in Self::touching(chunks, offset, len) {
            let from = offset.max(c.file_offset);
            let to = (offset + len).min(c.file_offset + c.len);
            let out =
                &mut buf[strata_oci::usize_of(from - offset)..strata_oci::usize_of(to - offset)];
            match (c.loc, c.digest) {
                (ChunkLoc::Zeros, _) | (_, None) => out.fill(0),
                (ChunkLoc::Zran { .. }, Some(_)) => {
                    if !self
                        .spans
                        .read_into(&self.cache, c, from - c.file_offset, out)?
                    {
                        return Ok(None);
                    }
                }
                (_, Some(d)) => {
                    if !self.cache.read_into(&d, from - c.file_offset, out)? {
                        return Ok(None);
                    }
                }
            }
            filled = strata_oci::usize_of(to - offset);
        }
        Ok(Some(filled))
    }

    /// Reads the file bytes at `offset` into `buf`, first fetching what is missing of
    /// `offset..offset+fetch_len` (at least the bytes read; more to fetch ahead in the same
    /// requests). Returns how many bytes the chunks cover, as [`Self::read_cached_into`].
    pub async fn read_into(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        offset: u64,
        buf: &mut [u8],
        fetch_len: u64,
    ) -> Result<usize, FetchError> {
        if let Some(n) = self.read_cached_into(chunks, offset, buf)? {
            return Ok(n);
        }
        let len = buf.len() as u64;
        let missed = self.read_missed(layer, chunks, offset, buf, fetch_len);
        self.within_deadline(layer, chunks, (offset, len), missed)
            .await
    }

    /// [`Self::read_into`] that notes a miss in the trace (if one is being written) naming
    /// file `path()`.
    pub async fn read_into_traced(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        (offset, buf): (u64, &mut [u8]),
        fetch_len: u64,
        path: impl FnOnce() -> String,
    ) -> Result<usize, FetchError> {
        let Some(trace) = crate::trace::get() else {
            return self.read_into(layer, chunks, offset, buf, fetch_len).await;
        };
        if let Some(n) = self.read_cached_into(chunks, offset, buf)? {
            return Ok(n);
        }
        let began = std::time::Instant::now();
        trace.mark(began);
        let len = buf.len() as u64;
        let missing: Vec<Digest> = self
            .missing(Self::touching(chunks, offset, len))
            .iter()
            .filter_map(|c| c.digest)
            .collect();
        let missed = self.read_missed(layer, chunks, offset, buf, fetch_len);
        let n = self
            .within_deadline(layer, chunks, (offset, len), missed)
            .await?;
        trace.miss(&layer.blob, &path(), (offset, len), began, &missing);
        Ok(n)
    }

    async fn read_missed(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        offset: u64,
        buf: &mut [u8],
        fetch_len: u64,
    ) -> Result<usize, FetchError> {
        let fetch_len = fetch_len.max(buf.len() as u64);
        // A cache smaller than what concurrent reads fetch may evict this read's chunks
        // before it copies them: fetch again, a bounded number of times.
        // A chunk another fetch (a prefetch) brought in and the cache evicted before this read
        // copied it is fetched again by this read itself, and so is one whose fetch was
        // abandoned (its reader passed its deadline) — within this read's own deadline. A failed
        // fetch is not retried here: the registry client has retried it already.
        for _ in 0..READ_ATTEMPTS {
            match self
                .ensure(layer, Self::touching(chunks, offset, fetch_len))
                .await
            {
                Ok(()) | Err(FetchError::Evicted(_) | FetchError::Abandoned(_)) => {}
                Err(e) => return Err(e),
            }
            if let Some(n) = self.read_cached_into(chunks, offset, buf)? {
                return Ok(n);
            }
        }
        let missing = Self::touching(chunks, offset, buf.len() as u64)
            .iter()
            .filter_map(|c| c.digest)
            .find(|d| !self.cache.contains(d));
        Err(FetchError::Unavailable(missing.unwrap_or(layer.blob)))
    }

    /// Makes sure every chunk in `chunks` is cached.
    pub async fn ensure(&self, layer: &LayerSource, chunks: &[Chunk]) -> Result<(), FetchError> {
        self.ensure_as(layer, chunks, true).await
    }

    /// [`Self::ensure`] at low priority: starts only when no read is waiting for the network
    /// (woken by the last such read), so background work never delays a reader by more than
    /// one request.
    pub async fn ensure_when_idle(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
    ) -> Result<(), FetchError> {
        self.foreground.idle().await;
        self.ensure_as(layer, chunks, false).await
    }

    /// The chunks of `chunks` with content that are not cached, each once. Each is a stat, so
    /// this runs before any lock is taken.
    pub(crate) fn missing(&self, chunks: &[Chunk]) -> Vec<Chunk> {
        let mut seen = HashSet::new();
        chunks
            .iter()
            .filter(|c| c.loc != ChunkLoc::Zeros)
            .filter(|c| {
                c.digest
                    .is_some_and(|d| seen.insert(d) && !self.cache.contains(&d))
            })
            .copied()
            .collect()
    }

    async fn ensure_as(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        foreground: bool,
    ) -> Result<(), FetchError> {
        let missing = self.missing(chunks);
        if missing.is_empty() {
            return Ok(());
        }
        let _waiting = foreground.then(|| self.foreground.enter());
        let Claimed {
            claim,
            mut mine,
            waits,
        } = self.inflight.claim(&missing);
        // A fetch that ended between the stat and the claim has cached its chunks by now.
        let (done, left): (Vec<Chunk>, Vec<Chunk>) = mine
            .into_iter()
            .partition(|c| c.digest.is_some_and(|d| self.cache.contains(&d)));
        claim.release(done.iter().filter_map(|c| c.digest));
        mine = left;
        let result = if mine.is_empty() {
            Ok(())
        } else if matches!(layer.format, LayerFormat::Plain { .. })
            || mine.iter().any(|c| c.loc == ChunkLoc::Local)
        {
            match self
                .fetch_through_local_ztoc(layer, &mine, foreground)
                .await
            {
                // A cache too small to hold the spans beside their chunks evicts them before
                // they are cut up: stream the layer as without a local ztoc.
                Some(Err(FetchError::Evicted(_))) | None => {
                    self.traced_restream(layer, &mine).await
                }
                Some(done) => done,
            }
        } else {
            self.fetch_ranges(layer, &mine, &claim).await
        };
        // Waiters learn a real failure's cause; a chunk evicted or a fetch abandoned on the
        // way is one they fetch again themselves.
        claim.finish(match &result {
            Err(FetchError::Evicted(_) | FetchError::Abandoned(_)) | Ok(()) => None,
            Err(e) => Some(Arc::from(strata_oci::causes::with_causes(e))),
        });
        if let Err(e) = &result {
            // The caller says it (a read as an error, a prefetch at debug level): a bad
            // speculative fetch must not print a line per chunk.
            debug!(blob = %layer.blob, error = %e, "chunk fetch failed");
        }
        result?;
        for (d, mut rx) in waits {
            // The sender is dropped when the other fetch ends, successful or not.
            let _ = rx.changed().await;
            if !self.cache.contains(&d) {
                return Err(if self.cache.was_stored(&d) {
                    FetchError::Evicted(d)
                } else {
                    match &*rx.borrow() {
                        Ended::Abandoned => FetchError::Abandoned(d),
                        Ended::Failed(cause) => FetchError::FailedElsewhere {
                            digest: d,
                            cause: cause.clone(),
                        },
                        Ended::Done => FetchError::Unavailable(d),
                    }
                });
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
        stream::iter(coalesce(chunks))
            .map(|group| async move {
                let digests: Vec<Digest> =
                    group.items.iter().filter_map(|l| l.chunk.digest).collect();
                let stored = self.fetch_group(layer, group).await;
                match &stored {
                    Err(FetchError::TimedOut { .. }) => claim.abandon(digests),
                    Err(e) => claim.fail(digests, &Arc::from(strata_oci::causes::with_causes(e))),
                    Ok(()) => claim.release(digests),
                }
                stored
            })
            .buffer_unordered(PARALLEL_REQUESTS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Fetches one coalesced range (from the kept whole blob if there is one) and stores its
    /// chunks, verified, in the cache. Disk work runs on a blocking thread.
    async fn fetch_group(&self, layer: &LayerSource, group: RangeGroup) -> Result<(), FetchError> {
        let RangeGroup { start, end, items } = group;
        let blob = layer.blob;
        let whole = self.whole_blob_path(&blob);
        let kept = whole.clone();
        let local = blocking(blob, move || read_range_of_file(&kept, start, end))
            .await?
            .map_err(|source| FetchError::Io {
                blob,
                path: whole.clone(),
                source,
            })?;
        let (data, keep) = match local {
            Some(data) => (data, None),
            None => match self.bounded_range(layer, start..end, &items).await? {
                Ok(RangeReply::Partial(b)) => (b, None),
                Ok(RangeReply::Whole(b)) => {
                    debug!(blob = %blob, "source ignored Range: keeping the whole blob");
                    let Some(data) = b.get(strata_oci::usize_of(start)..strata_oci::usize_of(end))
                    else {
                        return Err(FetchError::Stream {
                            blob,
                            reason: format!("range ends at {end} past blob size {}", b.len()),
                        });
                    };
                    (b.slice_ref(data), Some(b))
                }
                Err(source) => return Err(FetchError::Source { blob, source }),
            },
        };
        let cache = self.cache.clone();
        blocking(blob, move || {
            if let Some(b) = keep
                && let Err(e) = atomic::write_file(&whole, &b)
            {
                debug!(blob = %blob, error = %e, "could not keep the whole blob");
            }
            store_group(&cache, start, &data, &items)
        })
        .await?
        .map_err(|e| FetchError::BadChunk {
            blob,
            digest: e.digest,
            reason: e.reason,
        })
    }

    /// The source's bytes `range` of `layer`, noted in the trace if one is being written.
    pub(crate) async fn traced_range(
        &self,
        layer: &LayerSource,
        range: std::ops::Range<u64>,
        items: &[crate::ranges::Located],
    ) -> Result<RangeReply, SourceError> {
        let Some(trace) = crate::trace::get() else {
            return self.source.range(&layer.repo, &layer.blob, range).await;
        };
        let sent = std::time::Instant::now();
        trace.mark(sent);
        let reply = self
            .source
            .range(&layer.repo, &layer.blob, range.clone())
            .await;
        let chunks = items.iter().filter_map(|l| l.chunk.digest);
        trace.request(
            &layer.blob,
            (range.start, range.end),
            sent,
            std::time::Instant::now(),
            chunks,
        );
        reply
    }

    /// [`Self::restream`], noted in the trace (as a request for the whole blob that brought
    /// the chunks `mine`) if one is being written.
    async fn traced_restream(&self, layer: &LayerSource, mine: &[Chunk]) -> Result<(), FetchError> {
        let Some(trace) = crate::trace::get() else {
            return self.restream(layer).await.map(|_| ());
        };
        let sent = std::time::Instant::now();
        trace.mark(sent);
        let size = self.restream(layer).await?;
        let done = std::time::Instant::now();
        trace.request(
            &layer.blob,
            (0, size),
            sent,
            done,
            mine.iter().filter_map(|c| c.digest),
        );
        Ok(())
    }

    /// Streams a layer without a TOC again, refilling the cache with all its chunks: from the
    /// kept whole blob if there is one, else from the source. One stream per layer at a time.
    /// Returns the blob's size.
    async fn restream(&self, layer: &LayerSource) -> Result<u64, FetchError> {
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
        let blob = layer.blob;
        let stream_err = |reason: String| FetchError::Stream { blob, reason };
        let local = self.whole_blob_path(&blob);
        let cache = self.cache.clone();
        let indexed = if local.exists() {
            // A blob made or loaded here: index it from disk.
            let path = local.clone();
            blocking(blob, move || {
                let f = std::fs::File::open(&local).map_err(|source| FetchError::Io {
                    blob,
                    path,
                    source,
                })?;
                index_plain(std::io::BufReader::new(f), compression, &cache)
                    .map_err(|source| FetchError::Index { blob, source })
            })
            .await??
        } else {
            let body = self
                .source
                .stream(&layer.repo, &blob)
                .await
                .map_err(|source| FetchError::Source { blob, source })?;
            feed_blocking(body, |_| {}, move |r| index_plain(r, compression, &cache))
                .await
                .map_err(|source| FetchError::Feed { blob, source })?
                .map_err(|source| FetchError::Index { blob, source })?
        };
        if indexed.blob_digest != blob {
            return Err(stream_err(format!(
                "content hashes to {}",
                indexed.blob_digest
            )));
        }
        Ok(indexed.blob_size)
    }
}

/// Runs disk work on a blocking thread.
async fn blocking<T: Send + 'static>(
    blob: Digest,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FetchError::Stream {
            blob,
            reason: e.to_string(),
        })
}

/// Bytes `start..end` of the file at `path`; `None` if there is no such file.
fn read_range_of_file(
    path: &std::path::Path,
    start: u64,
    end: u64,
) -> std::io::Result<Option<Bytes>> {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; strata_oci::usize_of(end - start)];
    f.read_exact_at(&mut buf, start)?;
    Ok(Some(Bytes::from(buf)))
}

#[path = "lazy_local.rs"]
mod local;
pub use local::ChunkSpans;

#[cfg(test)]
#[path = "lazy_tests.rs"]
mod tests;
