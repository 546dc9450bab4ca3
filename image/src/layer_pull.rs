//! How `pull` takes each layer: through its TOC (zstd:chunked of either generation, eStargz),
//! whole from its URLs (foreign layers), or, failing both, as a plain layer to stream.

use std::collections::BTreeMap;

use crate::error::{ImageError, Progress, ProgressFn};
use crate::pull::Puller;
use strata_formats::estargz;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::toc::{TocAnnotations, TocError, decode_toc};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::store::{LayerFormat, LayerRecord, StoreError};

/// How a pulled layer will be read, as `pull` reports it: lazily through its TOC, or streamed
/// (now, or on first use) because it has none strata can use.
pub fn pulled_path(rec: &LayerRecord) -> &'static str {
    if rec.media_type.contains("foreign") || rec.media_type.contains("nondistributable") {
        return "Pull complete (full: foreign layer fetched from its URL)";
    }
    match (rec.format, rec.toc.is_some()) {
        (LayerFormat::ZstdChunked, _) => "Pull complete (lazy: zstd:chunked TOC)",
        (LayerFormat::Estargz, _) => "Pull complete (lazy: eStargz TOC)",
        (LayerFormat::Plain { .. }, true) => "Pull complete (stream: no usable TOC, indexed now)",
        (LayerFormat::Plain { .. }, false) => {
            "Pull complete (stream: no usable TOC, streams on first mount)"
        }
    }
}

impl Puller {
    /// A foreign layer, fetched whole from the first of its `urls` that serves it (as docker and
    /// podman do), verified by digest, kept as a local blob and indexed.
    pub(crate) async fn pull_foreign(
        &self,
        d: Digest,
        size: u64,
        media_type: String,
        urls: &[String],
        progress: ProgressFn<'_>,
    ) -> Result<LayerRecord, ImageError> {
        progress(Progress::LayerStart {
            layer: d,
            size,
            what: "Fetching foreign layer",
        });
        let mut failures = Vec::new();
        let mut bytes = None;
        for url in urls {
            match self.client.get_url(url).await {
                Ok(b) if Digest::of(&b) == d => {
                    bytes = Some(b);
                    break;
                }
                Ok(b) => failures.push(format!("{url}: content hashes to {}", Digest::of(&b))),
                Err(e) => failures.push(e.to_string()),
            }
        }
        let bytes = bytes.ok_or_else(|| ImageError::Foreign {
            layer: d,
            failures: failures.join("; "),
        })?;
        let local = self.layout.blob(&d);
        strata_storage::atomic::write_file(&local, &bytes).map_err(ImageError::io(&local))?;
        Ok(self.indexer.index_whole_layer(d, &bytes, media_type)?.0)
    }

    /// The record of a layer whose TOC (zstd:chunked, either generation, or eStargz) is
    /// fetched, verified and indexed; `None` when the annotations announce no TOC.
    pub(crate) async fn toc_layer(
        &self,
        r: &Reference,
        d: Digest,
        size: u64,
        media_type: &str,
        ann: &BTreeMap<String, String>,
        progress: ProgressFn<'_>,
    ) -> Result<Option<LayerRecord>, ImageError> {
        let toc_err = |source| ImageError::Toc { layer: d, source };
        let idx_err = |source| ImageError::Index { layer: d, source };
        if let Some(ta) = TocAnnotations::parse(ann).map_err(toc_err)?
            && let Some(toc_digest) = ta.toc_digest
        {
            progress(Progress::LayerStart {
                layer: d,
                size,
                what: "Fetching TOC",
            });
            let end = ta.toc.offset + ta.toc.compressed;
            if end > size || ta.toc.offset < 8 {
                return Err(toc_err(TocError::Footer(
                    "TOC position lies outside the blob",
                )));
            }
            let bytes = self.range(r, &d, ta.toc.offset, end).await?;
            toc_digest.verify(&bytes).map_err(StoreError::from)?;
            let toc = decode_toc(&bytes, ta.toc.uncompressed).map_err(toc_err)?;
            let index =
                LayerIndex::from_toc_bounded(&toc, Locations::Zstd, Some(ta.toc.offset - 8))
                    .map_err(idx_err)?;
            self.store.put_blob(&toc_digest, &bytes)?;
            return Ok(Some(LayerRecord {
                digest: d,
                size,
                media_type: media_type.to_string(),
                format: LayerFormat::ZstdChunked,
                toc: Some(toc_digest),
                toc_uncompressed: ta.toc.uncompressed,
                toc_offset: ta.toc.offset,
                content_bytes: index.content_bytes(),
            }));
        }
        if let Some(tocd) = ann
            .get(estargz::TOC_DIGEST_ANNOTATION)
            .and_then(|s| s.parse::<Digest>().ok())
            && size > estargz::FOOTER_LEN
        {
            progress(Progress::LayerStart {
                layer: d,
                size,
                what: "Fetching TOC",
            });
            let footer = self.range(r, &d, size - estargz::FOOTER_LEN, size).await?;
            let toc_offset = estargz::parse_footer(&footer).map_err(toc_err)?;
            if toc_offset >= size - estargz::FOOTER_LEN {
                return Err(toc_err(TocError::Footer(
                    "eStargz TOC offset past the footer",
                )));
            }
            let member = self
                .range(r, &d, toc_offset, size - estargz::FOOTER_LEN)
                .await?;
            let json = estargz::extract_toc_json(&member).map_err(toc_err)?;
            return self
                .indexer
                .estargz_layer(d, size, media_type, tocd, &json, toc_offset)
                .map(Some);
        }
        Ok(None)
    }
}
