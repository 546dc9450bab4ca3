//! Chunks of a streamed gzip layer that the cache lost, read by range through the layer's
//! local ztoc (see [`crate::plain_ztoc`]) instead of streaming the whole layer again: the spans
//! holding a chunk are fetched like a SOCI layer's (coalesced, single flight, each checked
//! against its span digest and cached compressed), the chunk is inflated from the first span's
//! checkpoint and cached once it matches its own digest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use strata_formats::index::{Chunk, ChunkLoc};
use strata_formats::ztoc::Ztoc;
use strata_oci::digest::Digest;

use super::{ChunkFetcher, FetchError, LayerSource};
use crate::store::LayerFormat;

/// Where a layer's content chunks lie in its spans: chunk digest → pieces (`ChunkLoc::Zran`,
/// offsets from the chunk's start).
pub type ChunkSpans = HashMap<Digest, Vec<Chunk>>;

/// The layers with a local ztoc that this process serves, by layer digest.
#[derive(Debug, Default)]
pub(super) struct LocalZtocs {
    layers: Mutex<HashMap<Digest, Arc<ChunkSpans>>>,
}

impl LocalZtocs {
    fn get(&self, layer: &Digest) -> Option<Arc<ChunkSpans>> {
        let m = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        m.get(layer).cloned()
    }
}

impl ChunkFetcher {
    /// Makes the content chunks of plain gzip layer `layer` readable by range through its
    /// local ztoc: `chunks` locates each in the ztoc's spans.
    pub fn register_local_ztoc(&self, layer: Digest, ztoc: &Arc<Ztoc>, chunks: ChunkSpans) {
        self.spans.register(ztoc);
        let mut m = self.local.layers.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(layer, Arc::new(chunks));
    }

    /// Whether `layer` is read through a local ztoc when its chunks are missing.
    pub fn has_local_ztoc(&self, layer: &Digest) -> bool {
        self.local.get(layer).is_some()
    }

    /// Fetches `mine` (content chunks of a plain layer, none cached) through the layer's
    /// local ztoc; `None` when the layer has none or it does not locate every chunk.
    pub(super) async fn fetch_through_local_ztoc(
        &self,
        layer: &LayerSource,
        mine: &[Chunk],
        foreground: bool,
    ) -> Option<Result<(), FetchError>> {
        let located = self.local.get(&layer.blob)?;
        let mut wanted = Vec::with_capacity(mine.len());
        for c in mine {
            let d = c.digest?;
            wanted.push((d, c.len, located.get(&d)?));
        }
        Some(self.fill_from_spans(layer, &wanted, foreground).await)
    }

    /// Fills `wanted` (chunk, length, its pieces in spans) from their spans, in batches whose
    /// spans take at most a quarter of the cache (at least one chunk's), so that a cache smaller
    /// than the layer does not evict a batch's spans before its chunks are cut from them.
    async fn fill_from_spans(
        &self,
        layer: &LayerSource,
        wanted: &[(Digest, u64, &Vec<Chunk>)],
        foreground: bool,
    ) -> Result<(), FetchError> {
        let budget = self.cache.limit_bytes() / 4;
        let mut batch = 0;
        let mut spans: HashSet<Digest> = HashSet::new();
        let mut spent = 0u64;
        for (i, (_, _, pieces)) in wanted.iter().enumerate() {
            let cost: u64 = pieces
                .iter()
                .filter(|p| p.digest.is_some_and(|d| !spans.contains(&d)))
                .map(|p| match p.loc {
                    ChunkLoc::Zran { start, end, .. } => end - start,
                    _ => 0,
                })
                .sum();
            if i > batch && spent + cost > budget {
                self.fill_batch(layer, &wanted[batch..i], foreground)
                    .await?;
                (batch, spent) = (i, 0);
                spans.clear();
            }
            spent += cost;
            spans.extend(pieces.iter().filter_map(|p| p.digest));
        }
        self.fill_batch(layer, &wanted[batch..], foreground).await
    }

    async fn fill_batch(
        &self,
        layer: &LayerSource,
        wanted: &[(Digest, u64, &Vec<Chunk>)],
        foreground: bool,
    ) -> Result<(), FetchError> {
        let pieces: Vec<Chunk> = wanted
            .iter()
            .flat_map(|(_, _, p)| p.iter().copied())
            .collect();
        let spans = LayerSource {
            format: LayerFormat::Soci,
            ..layer.clone()
        };
        Box::pin(self.ensure_as(&spans, &pieces, foreground)).await?;
        for (d, len, pieces) in wanted {
            let mut buf = vec![0u8; strata_oci::usize_of(*len)];
            for p in pieces.iter() {
                let from = strata_oci::usize_of(p.file_offset);
                let out = buf
                    .get_mut(from..from + strata_oci::usize_of(p.len))
                    .ok_or_else(|| FetchError::BadChunk {
                        blob: layer.blob,
                        digest: *d,
                        reason: "its spans hold more than the chunk".into(),
                    })?;
                if !self.spans.read_into(&self.cache, p, 0, out)? {
                    let span = p.digest.unwrap_or(layer.blob);
                    return Err(FetchError::Evicted(span));
                }
            }
            self.cache.put(d, &buf).map_err(|e| FetchError::BadChunk {
                blob: layer.blob,
                digest: *d,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}
