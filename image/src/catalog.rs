//! The catalog of stored images: finding an image by name, id or digest, its references, its
//! config, tagging and untagging, and opening its layers' indexes for mounting.

use std::collections::HashMap;

use strata_formats::estargz;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::toc::decode_toc;
use strata_oci::config::ImageConfig;
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::lazy::LayerSource;
use strata_storage::store::{ImageRecord, LayerFormat, Store, StoreError};

use crate::error::ImageError;

/// Repository named for images that exist only here (their blobs are in `cache/blobs`).
pub const LOCAL_SOURCE: &str = "strata.invalid/local";

/// One layer of an opened image.
#[derive(Debug, Clone)]
pub struct OpenLayer {
    /// Where its bytes come from.
    pub source: LayerSource,
    /// Its entries.
    pub index: LayerIndex,
}

/// Looks images up in the store and names them.
#[derive(Debug, Clone)]
pub struct Catalog {
    store: Store,
    /// Where SOCI layers' checkpoints are registered when their indexes are opened.
    fetcher: Option<std::sync::Arc<strata_storage::lazy::ChunkFetcher>>,
}

/// A reference to the image in the first repository known to have it. An image made here
/// (`import`) has none: its blobs are all local, and the placeholder is never contacted.
pub fn source_ref(img: &ImageRecord) -> Result<Reference, ImageError> {
    let source = img
        .sources
        .first()
        .map(String::as_str)
        .unwrap_or(LOCAL_SOURCE)
        .to_string();
    format!("{source}@{}", img.manifest)
        .parse()
        .map_err(|e| ImageError::BadReference {
            what: source.clone(),
            source: e,
        })
}

impl Catalog {
    /// The catalog of `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            fetcher: None,
        }
    }

    /// The catalog, registering the checkpoints of SOCI layers it opens with `fetcher` (which
    /// then reads their chunks).
    pub fn with_fetcher(
        mut self,
        fetcher: std::sync::Arc<strata_storage::lazy::ChunkFetcher>,
    ) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// Finds an image by reference, id prefix or manifest digest; also returns the reference
    /// key it was found under, if any.
    pub fn resolve(&self, name: &str) -> Result<(ImageRecord, Option<String>), ImageError> {
        if let Some(found) = self.by_reference(name)? {
            return Ok(found);
        }
        let needle = name.strip_prefix("sha256:").unwrap_or(name);
        if needle.len() >= 4 && needle.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self.by_id_prefix(name, needle).map(|i| (i, None));
        }
        Err(StoreError::NotFound(name.to_string()).into())
    }

    fn by_reference(
        &self,
        name: &str,
    ) -> Result<Option<(ImageRecord, Option<String>)>, ImageError> {
        let Ok(r) = name.parse::<Reference>() else {
            return Ok(None);
        };
        let key = match (&r.tag, &r.digest) {
            (_, Some(d)) => {
                if let Some(rec) = self.store.image(d)? {
                    return Ok(Some((rec, None)));
                }
                None
            }
            (Some(_), None) => Some(r.tag_key()),
            _ => None,
        };
        if let Some(key) = key
            && let Some(d) = self.store.refs()?.get(&key)
            && let Some(rec) = self.store.image(d)?
        {
            return Ok(Some((rec, Some(key))));
        }
        Ok(None)
    }

    fn by_id_prefix(&self, name: &str, needle: &str) -> Result<ImageRecord, ImageError> {
        let mut found: Vec<ImageRecord> = self
            .store
            .images()?
            .into_iter()
            .filter(|i| i.config.hex().starts_with(needle) || i.manifest.hex().starts_with(needle))
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
            return Ok(one.clone());
        }
        let named = self.tags_by_manifest()?;
        found.sort_by_key(|i| {
            (
                !named.contains_key(&i.manifest),
                std::cmp::Reverse(i.pulled),
                i.manifest,
            )
        });
        Ok(found.swap_remove(0))
    }

    /// The image a container was made from: by the manifest it recorded, or (records of older
    /// versions) by its image id.
    pub fn image_of(
        &self,
        manifest: Option<&str>,
        image_id: &str,
    ) -> Result<(ImageRecord, Option<String>), ImageError> {
        if let Some(m) = manifest {
            let d: Digest = m.parse().map_err(|source| ImageError::BadDigest {
                what: "the container's image record".into(),
                source,
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

    /// The image config.
    pub fn config(&self, rec: &ImageRecord) -> Result<ImageConfig, ImageError> {
        let bytes = self.store.get_blob(&rec.config)?;
        Ok(ImageConfig::from_slice(&bytes, &rec.config.to_string())?)
    }

    /// The image config as JSON, for showing it as it is (`inspect`).
    pub fn config_json(&self, rec: &ImageRecord) -> Result<serde_json::Value, ImageError> {
        let bytes = self.store.get_blob(&rec.config)?;
        Ok(serde_json::from_slice(&bytes).map_err(|source| {
            strata_oci::config::ConfigError::Parse {
                what: rec.config.to_string(),
                source,
            }
        })?)
    }

    /// References that point at each manifest.
    pub fn tags_by_manifest(&self) -> Result<HashMap<Digest, Vec<String>>, ImageError> {
        let mut out: HashMap<Digest, Vec<String>> = HashMap::new();
        for (name, d) in self.store.refs()? {
            out.entry(d).or_default().push(name);
        }
        Ok(out)
    }

    /// Points `name` at an image.
    pub fn tag(&self, rec: &ImageRecord, name: &Reference) -> Result<(), ImageError> {
        let lock = self.store.lock()?;
        self.store.set_ref(&lock, &name.tag_key(), &rec.manifest)?;
        Ok(())
    }

    /// Deletes an image's record (its references must be gone already); layers and blobs that
    /// no other image uses go with the next garbage collection (`Collector::collect`).
    pub fn remove_image(&self, img: &ImageRecord) -> Result<(), ImageError> {
        self.store.remove_image(&img.manifest)?;
        Ok(())
    }

    /// The layers of a stored image, indexed, with where to fetch each from.
    pub fn open_layers(&self, rec: &ImageRecord) -> Result<Vec<OpenLayer>, ImageError> {
        let repo = source_ref(rec)?;
        rec.layers
            .iter()
            .map(|d| {
                let (format, index) = self.layer_index(d)?;
                Ok(OpenLayer {
                    source: LayerSource {
                        repo: repo.clone(),
                        blob: *d,
                        format,
                    },
                    index,
                })
            })
            .collect()
    }

    fn layer_index(&self, d: &Digest) -> Result<(LayerFormat, LayerIndex), ImageError> {
        let lr = self
            .store
            .layer(d)?
            .ok_or_else(|| StoreError::NotFound(d.to_string()))?;
        let toc_digest = lr.toc.ok_or(ImageError::NotIndexed { layer: *d })?;
        let toc = self.store.get_blob(&toc_digest)?;
        let idx_err = |source| ImageError::Index { layer: *d, source };
        let index = match lr.format {
            LayerFormat::Estargz => estargz::index(&toc, lr.toc_offset).map_err(idx_err)?,
            LayerFormat::Soci => {
                let (ztoc, index) = crate::soci::open_ztoc(*d, lr.size, toc_digest, &toc)?;
                if let Some(f) = &self.fetcher {
                    f.register_ztoc(&std::sync::Arc::new(ztoc));
                }
                index
            }
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
                let index =
                    LayerIndex::from_toc_bounded(&parsed, locs, data_end).map_err(idx_err)?;
                if let (LayerFormat::Plain { compression }, Some(f)) = (lr.format, &self.fetcher)
                    && compression == strata_storage::store::Compression::Gzip
                {
                    crate::soci_local::register_local_ztoc(&self.store, f, (*d, lr.size), &parsed);
                }
                index
            }
        };
        Ok((lr.format, index))
    }
}
