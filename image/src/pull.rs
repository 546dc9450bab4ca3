//! Lazy pull: resolving a reference to a manifest, then fetching the config and each layer's
//! TOC (a layer without one is streamed once, now or on first mount). Each layer is taken
//! through its TOC (zstd:chunked of either generation, eStargz), whole from its URLs (foreign
//! layers), or, failing both, as a plain layer to stream.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use tracing::info;

use strata_distribution::{RangeReply, RegistryClient};
use strata_formats::estargz;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::profile::{Prefetch, profile_in};
use strata_formats::toc::{TocAnnotations, TocError, decode_toc};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_oci::timefmt::now_secs;
use strata_storage::plain::sniff;
use strata_storage::store::{
    Compression, ImageRecord, LayerFormat, LayerRecord, Store, StoreError,
};

use crate::catalog::source_ref;
use crate::error::{ImageError, Progress, ProgressFn, digest_of};
use crate::index::LayerIndexer;
use crate::layout::Layout;
use crate::prefetch::Prefetcher;
use crate::soci::{ZtocRef, find_ztocs, soci_layer};

/// A resolved manifest: the manifest, its digest and bytes, and the index it was chosen from
/// (digest and bytes) when the reference named an index.
pub type Resolved = (ImageManifest, Digest, Bytes, Option<(Digest, Bytes)>);

/// How long a pull waits, after its TOCs, for the lookup of a learned profile.
const LEARNED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pulls images lazily and streams layers that have no TOC.
#[derive(Debug, Clone)]
pub struct Puller {
    pub(crate) store: Store,
    pub(crate) client: Arc<RegistryClient>,
    pub(crate) indexer: LayerIndexer,
    pub(crate) layout: Layout,
    prefetcher: Prefetcher,
    prefetch: Prefetch,
}

impl Puller {
    /// A puller over `store` and `client` that indexes plain layers into `indexer`'s cache and
    /// starts a profile's prefetch through `prefetcher` unless `prefetch` is `None`.
    pub(crate) fn new(
        store: Store,
        client: Arc<RegistryClient>,
        indexer: LayerIndexer,
        layout: Layout,
        prefetcher: Prefetcher,
        prefetch: Prefetch,
    ) -> Self {
        Self {
            store,
            client,
            indexer,
            layout,
            prefetcher,
            prefetch,
        }
    }

    pub(crate) async fn range(
        &self,
        r: &Reference,
        blob: &Digest,
        start: u64,
        end: u64,
    ) -> Result<Bytes, ImageError> {
        Ok(
            match self.client.get_blob_range(r, blob, start..end).await? {
                RangeReply::Partial(b) => b,
                RangeReply::Whole(b) => {
                    if strata_oci::usize_of(end) > b.len() {
                        return Err(ImageError::RangePastEnd {
                            layer: *blob,
                            start,
                            end,
                            len: b.len(),
                        });
                    }
                    b.slice(strata_oci::usize_of(start)..strata_oci::usize_of(end))
                }
            },
        )
    }

    /// Fetches the manifest `r` names; an index is resolved to the manifest for `platform`.
    pub async fn resolve_manifest(
        &self,
        r: &Reference,
        platform: &str,
    ) -> Result<Resolved, ImageError> {
        resolve_manifest(&self.client, r, platform).await
    }

    /// Lazy pull: manifest, config and each layer's TOC (a layer without one is streamed once).
    /// The reference is written last, so an interrupted pull lists nothing.
    /// With `stream_plain`, layers without a TOC are streamed and indexed now (`pull --all`);
    /// otherwise that happens when the image is first mounted.
    pub async fn pull(
        &self,
        r: &Reference,
        platform: &str,
        stream_plain: bool,
        progress: ProgressFn<'_>,
    ) -> Result<ImageRecord, ImageError> {
        let (manifest, mdigest, mbytes, index) = self.resolve_manifest(r, platform).await?;
        progress(Progress::Resolved {
            manifest: mdigest,
            layers: manifest.layers().len(),
        });
        let config = digest_of(manifest.config())?;
        let layers = manifest
            .layers()
            .iter()
            .map(digest_of)
            .collect::<Result<Vec<_>, _>>()?;
        let mut learned = None;
        let (pf, repo, blobs) = (self.prefetcher.clone(), r.clone(), layers.clone());
        match profile_in(&mbytes, layers.len()) {
            // The profile's chunks carry their own digests: fetch them alongside the TOCs.
            Some(profile) if self.prefetch != Prefetch::None => {
                tokio::spawn(async move { pf.prefetch_profile(&repo, &blobs, &profile).await });
            }
            Some(_) => {}
            None => {
                // Kept for later mounts even by a pull that prefetches nothing.
                let (client, store) = (self.client.clone(), self.store.clone());
                let sizes = manifest.layers().iter().map(|l| l.size()).collect();
                let prefetch = (self.prefetch != Prefetch::None).then_some(pf);
                let image = (mdigest, blobs, sizes);
                learned = Some(crate::learned::start(client, store, prefetch, repo, image));
            }
        }
        let ztocs = self.soci_ztocs(r, &manifest, &mdigest, &layers).await?;
        self.fetch_config_and_layers(
            r,
            &manifest,
            config,
            &layers,
            &ztocs,
            stream_plain,
            progress,
        )
        .await?;
        self.store.put_blob(&mdigest, &mbytes)?;
        if let Some(found) = learned {
            // Looked up beside the config and TOCs; kept before the image can be mounted.
            let _ = tokio::time::timeout(LEARNED_WAIT, found).await;
        }
        if let Some((idig, ibytes)) = &index {
            self.store.put_blob(idig, ibytes)?;
        }
        let source = r.full_repository();
        let mut sources = vec![source.clone()];
        if let Some(old) = self.store.image(&mdigest)? {
            sources.extend(old.sources.into_iter().filter(|s| *s != source));
        }
        let rec = ImageRecord {
            manifest: mdigest,
            config,
            layers,
            sources,
            index: index.map(|i| i.0),
            pulled: now_secs(),
        };
        let lock = self.store.lock()?;
        self.store.put_image(&rec)?;
        if r.tag.is_some() {
            self.store.set_ref(&lock, &r.tag_key(), &mdigest)?;
        }
        info!(reference = %r, manifest = %mdigest, "pulled");
        Ok(rec)
    }

    /// The ztocs of the image's SOCI index, if it has one (looked for only when a layer is
    /// gzip).
    async fn soci_ztocs(
        &self,
        r: &Reference,
        manifest: &ImageManifest,
        mdigest: &Digest,
        layers: &[Digest],
    ) -> Result<BTreeMap<Digest, ZtocRef>, ImageError> {
        let descs = manifest.layers();
        if !descs
            .iter()
            .any(|l| l.media_type().to_string().ends_with("gzip"))
        {
            return Ok(BTreeMap::new());
        }
        let sizes: Vec<(Digest, u64)> = layers
            .iter()
            .zip(descs)
            .map(|(d, l)| (*d, l.size()))
            .collect();
        let annotations: BTreeMap<String, String> = manifest
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        find_ztocs(&self.client, r, mdigest, &annotations, &sizes).await
    }

    /// Config and TOCs in parallel: each is one round trip.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_config_and_layers(
        &self,
        r: &Reference,
        manifest: &ImageManifest,
        config: Digest,
        layers: &[Digest],
        ztocs: &BTreeMap<Digest, ZtocRef>,
        stream_plain: bool,
        progress: ProgressFn<'_>,
    ) -> Result<(), ImageError> {
        let fetch_config = async {
            if !self.store.has_blob(&config) {
                let bytes = self.client.get_blob(r, &config).await?;
                self.store.put_blob(&config, &bytes)?;
            }
            Ok::<(), ImageError>(())
        };
        let fetch_layers = manifest
            .layers()
            .iter()
            .zip(layers)
            .map(|(desc, &d)| async move {
                if let Some(mut existing) = self.store.layer(&d)? {
                    if distrusted_ztoc(&existing, ztocs.get(&d)) {
                        existing = self.stream_instead_of_ztoc(existing)?;
                    }
                    if stream_plain && existing.toc.is_none() {
                        self.index_plain_layer(r, existing, progress).await?;
                    }
                    progress(Progress::LayerDone {
                        layer: d,
                        what: "Already exists",
                    });
                } else {
                    let rec = match ztocs.get(&d) {
                        Some(z) => {
                            let mt = desc.media_type().to_string();
                            let (store, client) = (&self.store, &self.client);
                            soci_layer(store, client, r, (d, desc.size()), mt, z).await?
                        }
                        None => self.pull_layer(r, desc, d, stream_plain, progress).await?,
                    };
                    self.store.put_layer(&rec)?;
                    progress(Progress::LayerDone {
                        layer: d,
                        what: pulled_path(&rec),
                    });
                }
                Ok::<(), ImageError>(())
            });
        futures_util::future::try_join(
            fetch_config,
            futures_util::future::try_join_all(fetch_layers),
        )
        .await?;
        Ok(())
    }

    async fn pull_layer(
        &self,
        r: &Reference,
        desc: &Descriptor,
        d: Digest,
        stream_plain: bool,
        progress: ProgressFn<'_>,
    ) -> Result<LayerRecord, ImageError> {
        let media_type = desc.media_type().to_string();
        let size = desc.size();
        let ann: BTreeMap<String, String> = desc
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let urls = desc.urls().clone().unwrap_or_default();
        if !urls.is_empty() {
            return self
                .pull_foreign(d, size, media_type, &urls, progress)
                .await;
        }
        match self
            .toc_layer(r, d, size, &media_type, &ann, progress)
            .await
        {
            Ok(Some(rec)) => return Ok(rec),
            Ok(None) => {}
            // A layer any client can extract is never refused for its TOC: it streams instead.
            Err(e) if e.toc_untrusted() => {
                tracing::warn!("layer {d}: table of contents not usable ({e}); streaming it");
            }
            Err(e) => return Err(e),
        }
        let compression = if media_type.ends_with("gzip") {
            Compression::Gzip
        } else if media_type.ends_with("zstd") {
            Compression::Zstd
        } else if media_type.ends_with(".tar") {
            Compression::None
        } else {
            let head = self.range(r, &d, 0, size.min(4)).await?;
            sniff(&head)
        };
        let rec = LayerRecord {
            digest: d,
            size,
            media_type,
            format: LayerFormat::Plain { compression },
            toc: None,
            toc_uncompressed: 0,
            toc_offset: 0,
            content_bytes: 0,
        };
        if stream_plain {
            self.index_plain_layer(r, rec, progress).await
        } else {
            Ok(rec)
        }
    }

    /// Turns the record of a gzip layer read through a SOCI ztoc into a plain one, streamed on
    /// its next use and then read through the local index built from that stream (see
    /// [`distrusted_ztoc`]).
    fn stream_instead_of_ztoc(&self, rec: LayerRecord) -> Result<LayerRecord, ImageError> {
        tracing::warn!(
            layer = %rec.digest,
            "images disagree on this layer's SOCI ztoc: it will be streamed once and checked \
             against its digest instead"
        );
        let rec = LayerRecord {
            format: LayerFormat::Plain {
                compression: Compression::Gzip,
            },
            toc: None,
            toc_uncompressed: 0,
            toc_offset: 0,
            ..rec
        };
        self.store.put_layer(&rec)?;
        Ok(rec)
    }

    /// Streams a layer that has no TOC once: every chunk goes into the cache and its local TOC
    /// into the store. The stream must hash to the layer digest or nothing is recorded.
    pub async fn index_plain_layer(
        &self,
        r: &Reference,
        mut rec: LayerRecord,
        progress: ProgressFn<'_>,
    ) -> Result<LayerRecord, ImageError> {
        let LayerFormat::Plain { compression } = rec.format else {
            return Ok(rec);
        };
        let d = rec.digest;
        progress(Progress::LayerStart {
            layer: d,
            size: rec.size,
            what: "Streaming (no TOC)",
        });
        let ends = (&*self.client, &self.indexer.cache);
        let (toc, ztoc) =
            crate::soci_local::stream_index(ends, r, d, compression, progress).await?;
        self.indexer.store_local_toc(&mut rec, &toc)?;
        if let Some(z) = &ztoc {
            crate::soci_local::keep_local_ztoc(&self.store, &rec, z);
        }
        self.store.put_layer(&rec)?;
        Ok(rec)
    }

    /// Streams and indexes, in parallel, every layer of `img` that has no TOC yet.
    pub async fn ensure_indexed(
        &self,
        img: &ImageRecord,
        progress: ProgressFn<'_>,
    ) -> Result<(), ImageError> {
        let repo = source_ref(img)?;
        let mut pending = Vec::new();
        for d in &img.layers {
            let lr = self
                .store
                .layer(d)?
                .ok_or_else(|| StoreError::NotFound(d.to_string()))?;
            if lr.toc.is_none() {
                pending.push(lr);
            }
        }
        futures_util::future::try_join_all(
            pending
                .into_iter()
                .map(|l| self.index_plain_layer(&repo, l, progress)),
        )
        .await?;
        Ok(())
    }
}

/// Fetches the manifest `r` names through `client`; an index is resolved to the manifest for
/// `platform`.
pub async fn resolve_manifest(
    client: &RegistryClient,
    r: &Reference,
    platform: &str,
) -> Result<Resolved, ImageError> {
    let m = client.get_manifest(r).await?;
    let what = r.to_string();
    let unparsed = |source| ImageError::ManifestParse {
        what: what.clone(),
        source,
    };
    /// Just enough of a manifest or index to tell which it is.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<u64>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe =
        serde_json::from_slice(&m.bytes).map_err(|source| strata_oci::manifest::ManifestError {
            what: what.clone(),
            source,
        })?;
    if probe.schema_version == Some(1) {
        return Err(ImageError::Manifest {
            what,
            problem: "docker schema 1 manifests are not supported".into(),
        });
    }
    if probe.manifests.is_some() {
        let index = ImageIndex::from_reader(&m.bytes[..]).map_err(unparsed)?;
        let d = strata_oci::platform::select(&index, platform).map_err(|source| {
            ImageError::Platform {
                what: what.clone(),
                source,
            }
        })?;
        let inner = client.get_manifest_by(r, &d.to_string()).await?;
        let manifest = ImageManifest::from_reader(&inner.bytes[..]).map_err(unparsed)?;
        return Ok((
            manifest,
            inner.digest,
            Bytes::from(inner.bytes),
            Some((m.digest, Bytes::from(m.bytes))),
        ));
    }
    let manifest = ImageManifest::from_reader(&m.bytes[..]).map_err(unparsed)?;
    Ok((manifest, m.digest, Bytes::from(m.bytes), None))
}

/// How a pulled layer will be read, as `pull` reports it: lazily through its TOC, or streamed
/// (now, or on first use) because it has none strata can use.
pub fn pulled_path(rec: &LayerRecord) -> &'static str {
    if rec.media_type.contains("foreign") || rec.media_type.contains("nondistributable") {
        return "Pull complete (full: foreign layer fetched from its URL)";
    }
    match (rec.format, rec.toc.is_some()) {
        (LayerFormat::ZstdChunked, _) => "Pull complete (lazy: zstd:chunked TOC)",
        (LayerFormat::Estargz, _) => "Pull complete (lazy: eStargz TOC)",
        (LayerFormat::Soci, _) => "Pull complete (lazy: SOCI index)",
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

/// Whether a layer recorded as read through a SOCI ztoc must not be, for an image whose own
/// index names `theirs` for it. A ztoc is not part of the layer's bytes: its checkpoints and
/// offsets are trusted because the image names it, so one image's ztoc must not serve another
/// image that names a different one, or none (a lying ztoc would otherwise poison every image
/// sharing the layer). Two that disagree are both set aside: the layer is streamed and
/// verified against its digest, and the local index built from that stream serves both.
fn distrusted_ztoc(rec: &LayerRecord, theirs: Option<&ZtocRef>) -> bool {
    rec.format == LayerFormat::Soci && theirs.map(|z| z.digest) != rec.toc
}
