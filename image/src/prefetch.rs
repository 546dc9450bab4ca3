//! Fetching ahead: the chunks an image's profile names (in parallel, as soon as the manifest
//! is known), the rest of an image at low priority, or all of it (`pull --all`).

use std::sync::Arc;

use futures_util::{StreamExt, stream};
use tracing::{debug, info};

use strata_formats::index::{Chunk, ChunkLoc, Kind};
use strata_formats::profile::{Profile, batches};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::lazy::{ChunkFetcher, LayerSource};
use strata_storage::store::LayerFormat;

use crate::catalog::OpenLayer;
use crate::error::ImageError;

/// Compressed bytes per batch of a profile prefetch.
const PREFETCH_BATCH_BYTES: u64 = 256 << 10;
/// Batches of a profile prefetch in flight at once.
const PREFETCH_STREAMS: usize = 8;
/// Compressed bytes per low-priority request for the rest of an image.
const REST_REQUEST_BYTES: u64 = 1 << 20;

/// Fetches chunks into the cache ahead of reads, through the chunk fetcher.
#[derive(Debug, Clone)]
pub struct Prefetcher {
    fetcher: Arc<ChunkFetcher>,
}

impl Prefetcher {
    /// A prefetcher over `fetcher`.
    pub fn new(fetcher: Arc<ChunkFetcher>) -> Self {
        Self { fetcher }
    }

    /// Fetches the profile's chunks of `layers` (the image's layer blobs, in order) from
    /// `repo`, in the order the recorded run first read them: batches of neighbouring chunks,
    /// `PREFETCH_STREAMS` at a time, so the first files a process needs arrive first and it
    /// can start while the rest are on their way. Failures are only logged: the reads that need
    /// a chunk fetch it again.
    pub async fn prefetch_profile(&self, repo: &Reference, layers: &[Digest], profile: &Profile) {
        let started = std::time::Instant::now();
        let sources: Vec<LayerSource> = layers
            .iter()
            .map(|blob| LayerSource {
                repo: repo.clone(),
                blob: *blob,
                format: LayerFormat::ZstdChunked,
            })
            .collect();
        let batches = profile.batches(PREFETCH_BATCH_BYTES);
        stream::iter(batches)
            .map(|(layer, chunks)| {
                let source = &sources[layer];
                async move {
                    if let Err(e) = self.fetcher.ensure(source, &chunks).await {
                        debug!(blob = %source.blob, error = %e, "profile prefetch failed");
                    }
                }
            })
            .buffer_unordered(PREFETCH_STREAMS)
            .collect::<Vec<()>>()
            .await;
        info!(
            files = profile.files.len(),
            chunks = profile.chunk_count(),
            bytes = profile.bytes(),
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "profile prefetched"
        );
    }

    /// Fetches every chunk of `layers` not yet cached, one request at a time and only while no
    /// read is waiting for the network, so that it never delays the container.
    pub async fn fetch_rest(&self, layers: &[OpenLayer]) {
        let started = std::time::Instant::now();
        for l in layers
            .iter()
            .filter(|l| l.source.format == LayerFormat::ZstdChunked)
        {
            let mut chunks: Vec<Chunk> = l
                .index
                .entries
                .iter()
                .filter(|e| e.kind == Kind::Reg)
                .flat_map(|e| e.chunks.iter().copied())
                .filter(|c| {
                    matches!(c.loc, ChunkLoc::Zstd { .. })
                        && c.digest.is_some_and(|d| !self.fetcher.cache().contains(&d))
                })
                .collect();
            chunks.sort_by_key(|c| match c.loc {
                ChunkLoc::Zstd { start, .. } => start,
                _ => 0,
            });
            for (_, batch) in batches(chunks.into_iter().map(|c| (0, c)), REST_REQUEST_BYTES) {
                if let Err(e) = self.fetcher.ensure_when_idle(&l.source, &batch).await {
                    debug!(error = %e, "background fetch failed; stopping it");
                    return;
                }
            }
        }
        info!(
            ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "rest of the image fetched"
        );
    }

    /// Fetches every chunk of every layer (`pull --all`).
    pub async fn fetch_all(&self, layers: &[OpenLayer]) -> Result<(), ImageError> {
        for l in layers {
            let chunks: Vec<_> = l
                .index
                .entries
                .iter()
                .filter(|e| e.kind == Kind::Reg)
                .flat_map(|e| e.chunks.iter().copied())
                .collect();
            self.fetcher.ensure(&l.source, &chunks).await?;
        }
        Ok(())
    }
}
