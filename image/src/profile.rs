//! Prefetch through a profile: fetching the chunks an image's profile names (in parallel, as
//! soon as the manifest is known) and then, by default, the rest of the image at low priority.
//! The profile format itself is [`strata_formats::profile`].

use futures_util::{StreamExt, stream};
use tracing::{debug, info};

use strata_formats::index::{Chunk, ChunkLoc, Kind};
use strata_formats::profile::{ANNOTATION, Profile, batches, profile_in};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::lazy::LayerSource;
use strata_storage::store::{ImageRecord, LayerFormat};

use crate::image::{Context, ImageError, OpenLayer};

/// Compressed bytes per batch of a profile prefetch.
const PREFETCH_BATCH_BYTES: u64 = 256 << 10;
/// Batches of a profile prefetch in flight at once.
const PREFETCH_STREAMS: usize = 8;
/// Compressed bytes per low-priority request for the rest of an image.
const REST_REQUEST_BYTES: u64 = 1 << 20;

impl Context {
    /// The profile stored with `img`'s manifest.
    pub fn profile_of(&self, img: &ImageRecord) -> Option<Profile> {
        let bytes = self.store.get_blob(&img.manifest).ok()?;
        profile_in(&bytes, img.layers.len())
    }

    /// Fetches the profile's chunks of `layers` (the image's layer blobs, in order) from
    /// `repo`, in the order the recorded run first read them: batches of neighbouring chunks,
    /// [`PREFETCH_STREAMS`] at a time, so the first files a process needs arrive first and it
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
            ms = started.elapsed().as_millis() as u64,
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
            ms = started.elapsed().as_millis() as u64,
            "rest of the image fetched"
        );
    }

    /// Stores `img` again with `profile` in its manifest's annotations: a new manifest (and so a
    /// new image) with the same config and layers. Returns the new record.
    pub fn with_profile(
        &self,
        img: &ImageRecord,
        profile: &Profile,
    ) -> Result<ImageRecord, ImageError> {
        let bytes = self.store.get_blob(&img.manifest)?;
        let bad = |reason: String| ImageError::Manifest {
            what: img.manifest.to_string(),
            reason,
        };
        let mut v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let ann = v
            .as_object_mut()
            .ok_or_else(|| bad("not a JSON object".into()))?
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .ok_or_else(|| bad("annotations is not an object".into()))?;
        ann.insert(ANNOTATION.into(), profile.encode().into());
        let out = serde_json::to_vec(&v).map_err(|e| bad(e.to_string()))?;
        let manifest = Digest::of(&out);
        self.store.put_blob(&manifest, &out)?;
        let rec = ImageRecord {
            manifest,
            index: None,
            ..img.clone()
        };
        self.store.put_image(&rec)?;
        Ok(rec)
    }
}
