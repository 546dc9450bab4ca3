//! Indexing layers that arrive whole or carry their own TOC: the record of an eStargz layer
//! from its TOC JSON, strata's local TOC of a plain layer, and a whole local blob streamed into
//! the chunk cache. Pull and load both end here.

use std::sync::Arc;

use strata_formats::estargz;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::toc::Toc;
use strata_oci::digest::Digest;
use strata_storage::cache::ChunkCache;
use strata_storage::plain::{index_plain, sniff};
use strata_storage::store::{Compression, LayerFormat, LayerRecord, Store, StoreError};

use crate::error::ImageError;

/// Writes layer records and TOCs into the store and plain layers' chunks into the cache.
#[derive(Debug, Clone)]
pub(crate) struct LayerIndexer {
    pub(crate) store: Store,
    pub(crate) cache: Arc<ChunkCache>,
}

impl LayerIndexer {
    /// The record of eStargz layer `d` from its TOC JSON (taken at `toc_offset`): the JSON is
    /// checked against the `toc.digest` annotation `tocd`, indexed and stored.
    pub(crate) fn estargz_layer(
        &self,
        d: Digest,
        size: u64,
        media_type: &str,
        tocd: Digest,
        json: &[u8],
        toc_offset: u64,
    ) -> Result<LayerRecord, ImageError> {
        tocd.verify(json).map_err(StoreError::from)?;
        let index = estargz::index(json, toc_offset)
            .map_err(|source| ImageError::Index { layer: d, source })?;
        self.store.put_blob(&tocd, json)?;
        Ok(LayerRecord {
            digest: d,
            size,
            media_type: media_type.to_string(),
            format: LayerFormat::Estargz,
            toc: Some(tocd),
            toc_uncompressed: json.len() as u64,
            toc_offset,
            content_bytes: index.content_bytes(),
        })
    }

    /// Checks and stores strata's local TOC of a plain layer (zstd-compressed) and fills in the
    /// layer record's TOC fields.
    pub(crate) fn store_local_toc(
        &self,
        rec: &mut LayerRecord,
        toc: &Toc,
    ) -> Result<(), ImageError> {
        let d = rec.digest;
        let io = |source| ImageError::LayerIo { layer: d, source };
        let index = LayerIndex::from_toc(toc, Locations::Local)
            .map_err(|source| ImageError::Index { layer: d, source })?;
        let json = serde_json::to_vec(toc).map_err(|e| io(std::io::Error::other(e)))?;
        let compressed = zstd::bulk::compress(&json, 3).map_err(io)?;
        let toc_digest = Digest::of(&compressed);
        self.store.put_blob(&toc_digest, &compressed)?;
        rec.toc = Some(toc_digest);
        rec.toc_uncompressed = json.len() as u64;
        rec.content_bytes = index.content_bytes();
        Ok(())
    }

    /// Indexes a whole local layer blob without a TOC (plain tar/gzip/zstd, or one whose TOC is
    /// not trusted): its chunks go to the cache and its local TOC to the store. Returns the
    /// record and the diff_id (sha256 of the uncompressed tar).
    pub(crate) fn index_whole_layer(
        &self,
        d: Digest,
        bytes: &[u8],
        media_type: String,
    ) -> Result<(LayerRecord, Digest), ImageError> {
        let compression = match sniff(bytes) {
            Compression::None if media_type.ends_with("zstd") => Compression::Zstd,
            c => c,
        };
        let indexed = index_plain(bytes, compression, &self.cache)
            .map_err(|source| ImageError::Walk { layer: d, source })?;
        let mut rec = LayerRecord {
            digest: d,
            size: bytes.len() as u64,
            media_type,
            format: LayerFormat::Plain { compression },
            toc: None,
            toc_uncompressed: 0,
            toc_offset: 0,
            content_bytes: 0,
        };
        self.store_local_toc(&mut rec, &indexed.toc)?;
        Ok((rec, indexed.diff_id))
    }
}
