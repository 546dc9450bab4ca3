//! Images: the context that ties store, cache and registry together; lazy pull; resolving names;
//! opening an image's layers for mounting.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use tracing::info;

pub use crate::layer_pull::pulled_path;
use strata_distribution::{ClientOptions, RangeReply, RegistryClient, RegistryError};
use strata_formats::estargz;
use strata_formats::index::{IndexError, Kind, LayerIndex, Locations};
use strata_formats::profile::{Prefetch, profile_in};
use strata_formats::toc::{TocError, decode_toc};
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_oci::timefmt::now_secs;
use strata_storage::cache::{CacheError, ChunkCache};
use strata_storage::lazy::{ChunkFetcher, FeedError, FetchError, LayerSource, feed_blocking};
use strata_storage::plain::{index_plain, sniff};
use strata_storage::store::{
    Compression, ImageRecord, LayerFormat, LayerRecord, Store, StoreError,
};

/// Repository named for images that exist only here (their blobs are in `cache/blobs`).
pub const LOCAL_SOURCE: &str = "strata.invalid/local";

/// Errors of image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A TOC or footer is malformed.
    #[error("layer {layer}: {source}")]
    Toc {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        source: TocError,
    },
    /// A TOC entry is malformed or escapes the image.
    #[error("layer {layer}: {source}")]
    Index {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        source: IndexError,
    },
    /// A manifest or index is malformed or unsupported.
    #[error("manifest {what}: {reason}")]
    Manifest {
        /// Which manifest.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// No manifest of an index fits the wanted platform.
    #[error("{what}: {source}")]
    Platform {
        /// The reference.
        what: String,
        /// The cause.
        source: strata_oci::platform::PlatformError,
    },
    /// Fetching content failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A layer stream failed.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// The layer blob.
        layer: Digest,
        /// What went wrong.
        reason: String,
    },
}

impl ImageError {
    /// Whether this error only says a layer's TOC cannot be trusted or read (so the layer can
    /// still be streamed like any `tar+gzip`/`tar+zstd`), rather than that storage failed.
    pub fn toc_untrusted(&self) -> bool {
        match self {
            Self::Toc { .. } | Self::Index { .. } | Self::Layer { .. } => true,
            Self::Store(StoreError::Digest(_)) => true,
            Self::Registry(e) => e.status().is_some_and(|s| s.as_u16() == 416),
            _ => false,
        }
    }
}

/// Progress of long operations, for the CLI to show.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The manifest was resolved.
    Resolved {
        /// Its digest.
        manifest: Digest,
        /// Number of layers.
        layers: usize,
    },
    /// A layer started: `what` says what is being done.
    LayerStart {
        /// The blob.
        layer: Digest,
        /// Size of the blob.
        size: u64,
        /// e.g. "Fetching TOC", "Streaming (no TOC)".
        what: &'static str,
    },
    /// Bytes of a layer processed.
    LayerBytes {
        /// The blob.
        layer: Digest,
        /// Bytes so far.
        done: u64,
    },
    /// A layer is done.
    LayerDone {
        /// The blob.
        layer: Digest,
        /// e.g. "Pull complete", "Already exists".
        what: &'static str,
    },
    /// A layer the registry mounted from another repository instead of an upload.
    Mounted {
        /// The blob.
        layer: Digest,
        /// The repository it came from (path on the same registry).
        from: String,
    },
}

/// A progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// Store, cache, registry client and chunk fetcher under one state root.
#[derive(Debug, Clone)]
pub struct Context {
    /// The state root.
    pub root: PathBuf,
    /// The image store.
    pub store: Store,
    /// The registry client.
    pub client: Arc<RegistryClient>,
    /// The chunk fetcher (and through it the cache).
    pub fetcher: Arc<ChunkFetcher>,
    /// What a cold start fetches ahead (`None` unless a command that starts containers or
    /// mounts images asks for more: a `pull` alone ends before a prefetch could finish).
    pub prefetch: Prefetch,
}

/// One layer of an opened image.
#[derive(Debug, Clone)]
pub struct OpenLayer {
    /// Where its bytes come from.
    pub source: LayerSource,
    /// Its entries.
    pub index: LayerIndex,
}

impl Context {
    /// Opens the state under `root`.
    pub fn open(root: &Path, opts: ClientOptions, cache_bytes: u64) -> Result<Self, ImageError> {
        let store = Store::open(&root.join("store"))?;
        let cache = Arc::new(ChunkCache::open(&root.join("cache"), cache_bytes)?);
        let client = Arc::new(RegistryClient::new(opts)?);
        let fetcher = Arc::new(ChunkFetcher::new(
            Arc::new(crate::blobs::RegistryBlobs(client.clone())),
            cache,
            root.join("cache/blobs"),
        ));
        Ok(Self {
            root: root.to_path_buf(),
            store,
            client,
            fetcher,
            prefetch: Prefetch::None,
        })
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
                    if end as usize > b.len() {
                        return Err(ImageError::Layer {
                            layer: *blob,
                            reason: format!(
                                "range {start}-{end} past the blob's {} bytes",
                                b.len()
                            ),
                        });
                    }
                    b.slice(start as usize..end as usize)
                }
            },
        )
    }

    /// Fetches the manifest `r` names; an index is resolved to the manifest for `platform`.
    pub async fn resolve_manifest(
        &self,
        r: &Reference,
        platform: &str,
    ) -> Result<(ImageManifest, Digest, Bytes, Option<(Digest, Bytes)>), ImageError> {
        let m = self.client.get_manifest(r).await?;
        let what = r.to_string();
        let bad = |reason: String| ImageError::Manifest {
            what: what.clone(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&m.bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
            return Err(bad("docker schema 1 manifests are not supported".into()));
        }
        if v.get("manifests").is_some() {
            let index = ImageIndex::from_reader(&m.bytes[..]).map_err(|e| bad(e.to_string()))?;
            let d = strata_oci::platform::select(&index, platform).map_err(|source| {
                ImageError::Platform {
                    what: what.clone(),
                    source,
                }
            })?;
            let inner = self.client.get_manifest_by(r, &d.to_string()).await?;
            let manifest =
                ImageManifest::from_reader(&inner.bytes[..]).map_err(|e| bad(e.to_string()))?;
            return Ok((
                manifest,
                inner.digest,
                Bytes::from(inner.bytes),
                Some((m.digest, Bytes::from(m.bytes))),
            ));
        }
        let manifest = ImageManifest::from_reader(&m.bytes[..]).map_err(|e| bad(e.to_string()))?;
        Ok((manifest, m.digest, Bytes::from(m.bytes), None))
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
        if self.prefetch != Prefetch::None
            && let Some(profile) = profile_in(&mbytes, layers.len())
        {
            // The profile's chunks carry their own digests: fetch them alongside the TOCs.
            let (ctx, repo, blobs) = (self.clone(), r.clone(), layers.clone());
            tokio::spawn(async move { ctx.prefetch_profile(&repo, &blobs, &profile).await });
        }
        // Config and TOCs in parallel: each is one round trip.
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
            .zip(&layers)
            .map(|(desc, &d)| async move {
                if let Some(existing) = self.store.layer(&d)? {
                    if stream_plain && existing.toc.is_none() {
                        self.index_plain_layer(r, existing, progress).await?;
                    }
                    progress(Progress::LayerDone {
                        layer: d,
                        what: "Already exists",
                    });
                } else {
                    let rec = self.pull_layer(r, desc, d, stream_plain, progress).await?;
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
        self.store.put_blob(&mdigest, &mbytes)?;
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
        let indexed = self.stream_index(r, d, compression, progress).await?;
        self.store_local_toc(&mut rec, &indexed)?;
        self.store.put_layer(&rec)?;
        Ok(rec)
    }

    /// Checks and stores strata's local TOC of a plain layer (zstd-compressed) and fills in the
    /// layer record's TOC fields.
    pub(crate) fn store_local_toc(
        &self,
        rec: &mut LayerRecord,
        toc: &strata_formats::toc::Toc,
    ) -> Result<(), ImageError> {
        let d = rec.digest;
        let fail = |reason: String| ImageError::Layer { layer: d, reason };
        let index = LayerIndex::from_toc(toc, Locations::Local)
            .map_err(|source| ImageError::Index { layer: d, source })?;
        let json = serde_json::to_vec(toc).map_err(|e| fail(e.to_string()))?;
        let compressed = zstd::bulk::compress(&json, 3).map_err(|e| fail(e.to_string()))?;
        let toc_digest = Digest::of(&compressed);
        self.store.put_blob(&toc_digest, &compressed)?;
        rec.toc = Some(toc_digest);
        rec.toc_uncompressed = json.len() as u64;
        rec.content_bytes = index.content_bytes();
        Ok(())
    }

    /// Streams and indexes, in parallel, every layer of `img` that has no TOC yet.
    pub async fn ensure_indexed(
        &self,
        img: &ImageRecord,
        progress: ProgressFn<'_>,
    ) -> Result<(), ImageError> {
        let repo = self.source_ref(img)?;
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

    /// A reference to the image in the first repository known to have it. An image made here
    /// (`import`) has none: its blobs are all local, and the placeholder is never contacted.
    pub fn source_ref(&self, img: &ImageRecord) -> Result<Reference, ImageError> {
        let source = img
            .sources
            .first()
            .map(String::as_str)
            .unwrap_or(LOCAL_SOURCE)
            .to_string();
        format!("{source}@{}", img.manifest).parse().map_err(
            |e: strata_oci::reference::ReferenceError| ImageError::Manifest {
                what: source.clone(),
                reason: e.to_string(),
            },
        )
    }

    async fn stream_index(
        &self,
        r: &Reference,
        d: Digest,
        c: Compression,
        progress: ProgressFn<'_>,
    ) -> Result<strata_formats::toc::Toc, ImageError> {
        let body = self.client.blob_stream(r, &d).await?;
        let cache = self.fetcher.cache().clone();
        let mut done = 0u64;
        let indexed = feed_blocking(
            body,
            |n| {
                done += n;
                progress(Progress::LayerBytes { layer: d, done });
            },
            move |reader| index_plain(reader, c, &cache),
        )
        .await
        .map_err(feed_error(d))?
        .map_err(|e| ImageError::Layer {
            layer: d,
            reason: e.to_string(),
        })?;
        if indexed.blob_digest != d {
            return Err(ImageError::Layer {
                layer: d,
                reason: format!("content hashes to {}", indexed.blob_digest),
            });
        }
        Ok(indexed.toc)
    }

    /// Finds an image by reference, id prefix or manifest digest.
    pub fn resolve(&self, name: &str) -> Result<(ImageRecord, Option<String>), ImageError> {
        let refs = self.store.refs()?;
        if let Ok(r) = name.parse::<Reference>() {
            let key = match (&r.tag, &r.digest) {
                (_, Some(d)) => {
                    if let Some(rec) = self.store.image(d)? {
                        return Ok((rec, None));
                    }
                    None
                }
                (Some(_), None) => Some(r.tag_key()),
                _ => None,
            };
            if let Some(key) = key
                && let Some(d) = refs.get(&key)
                && let Some(rec) = self.store.image(d)?
            {
                return Ok((rec, Some(key)));
            }
        }
        let needle = name.strip_prefix("sha256:").unwrap_or(name);
        if needle.len() >= 4 && needle.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found: Vec<ImageRecord> = self
                .store
                .images()?
                .into_iter()
                .filter(|i| {
                    i.config.hex().starts_with(needle) || i.manifest.hex().starts_with(needle)
                })
                .collect();
            // A manifest digest names one image; an id (config) may be shared by several
            // manifests (an image and its conversion): they are one image id, so any of them
            // will do, and the choice is stable — named ones first, then the most recent.
            if found.is_empty() || found.iter().any(|i| i.config != found[0].config) {
                return Err(StoreError::NotFound(name.to_string()).into());
            }
            let by_manifest: Vec<&ImageRecord> = found
                .iter()
                .filter(|i| i.manifest.hex().starts_with(needle))
                .collect();
            if let [one] = by_manifest[..] {
                return Ok((one.clone(), None));
            }
            let named = self.tags_by_manifest()?;
            found.sort_by_key(|i| {
                (
                    !named.contains_key(&i.manifest),
                    std::cmp::Reverse(i.pulled),
                    i.manifest,
                )
            });
            return Ok((found[0].clone(), None));
        }
        Err(StoreError::NotFound(name.to_string()).into())
    }

    /// The image a container was made from: by the manifest it recorded, or (records of older
    /// versions) by its image id.
    pub fn image_of(
        &self,
        manifest: Option<&str>,
        image_id: &str,
    ) -> Result<(ImageRecord, Option<String>), ImageError> {
        if let Some(m) = manifest {
            let d: Digest =
                m.parse()
                    .map_err(|e: strata_oci::digest::DigestError| ImageError::Manifest {
                        what: m.to_string(),
                        reason: e.to_string(),
                    })?;
            return match self.store.image(&d)? {
                Some(rec) => Ok((rec, None)),
                None => Err(StoreError::NotFound(m.to_string()).into()),
            };
        }
        self.resolve(image_id)
    }

    /// Every stored image whose id (config digest) is `config`.
    pub fn images_with_config(&self, config: &Digest) -> Result<Vec<ImageRecord>, ImageError> {
        Ok(self
            .store
            .images()?
            .into_iter()
            .filter(|i| i.config == *config)
            .collect())
    }

    /// The layers of a stored image, indexed, with where to fetch each from.
    pub fn open_layers(&self, rec: &ImageRecord) -> Result<Vec<OpenLayer>, ImageError> {
        let repo = self.source_ref(rec)?;
        let mut out = Vec::new();
        for d in &rec.layers {
            let lr = self
                .store
                .layer(d)?
                .ok_or_else(|| StoreError::NotFound(d.to_string()))?;
            let toc_digest = lr.toc.ok_or_else(|| ImageError::Layer {
                layer: *d,
                reason: "layer has no TOC yet (it is streamed on first mount)".into(),
            })?;
            let toc = self.store.get_blob(&toc_digest)?;
            let idx_err = |source| ImageError::Index { layer: *d, source };
            let index = match lr.format {
                LayerFormat::Estargz => estargz::index(&toc, lr.toc_offset).map_err(idx_err)?,
                LayerFormat::ZstdChunked | LayerFormat::Plain { .. } => {
                    let parsed = decode_toc(&toc, lr.toc_uncompressed)
                        .map_err(|source| ImageError::Toc { layer: *d, source })?;
                    let locs = if lr.format == LayerFormat::ZstdChunked {
                        Locations::Zstd
                    } else {
                        Locations::Local
                    };
                    let data_end = (lr.format == LayerFormat::ZstdChunked)
                        .then(|| lr.toc_offset.saturating_sub(8));
                    LayerIndex::from_toc_bounded(&parsed, locs, data_end).map_err(idx_err)?
                }
            };
            out.push(OpenLayer {
                source: LayerSource {
                    repo: repo.clone(),
                    blob: *d,
                    format: lr.format,
                },
                index,
            });
        }
        Ok(out)
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

    /// The image config as JSON.
    pub fn config(&self, rec: &ImageRecord) -> Result<serde_json::Value, ImageError> {
        let bytes = self.store.get_blob(&rec.config)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Manifest {
            what: rec.config.to_string(),
            reason: e.to_string(),
        })
    }

    /// References that point at each manifest.
    pub fn tags_by_manifest(&self) -> Result<HashMap<Digest, Vec<String>>, ImageError> {
        let mut out: HashMap<Digest, Vec<String>> = HashMap::new();
        for (name, d) in self.store.refs()? {
            out.entry(d).or_default().push(name);
        }
        Ok(out)
    }
}

/// Maps a failed [`feed_blocking`] of `layer` to an image error.
pub(crate) fn feed_error(layer: Digest) -> impl FnOnce(FeedError<RegistryError>) -> ImageError {
    move |e| match e {
        FeedError::Source(r) => ImageError::Registry(r),
        other => ImageError::Layer {
            layer,
            reason: other.to_string(),
        },
    }
}

/// Our digest of a descriptor.
pub fn digest_of(desc: &Descriptor) -> Result<Digest, ImageError> {
    desc.digest()
        .to_string()
        .parse()
        .map_err(|e: strata_oci::digest::DigestError| ImageError::Manifest {
            what: desc.digest().to_string(),
            reason: e.to_string(),
        })
}
