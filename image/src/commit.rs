//! `commit`: a container's changes (as a tar in OCI layer form) become one new layer in the
//! native lazy format on top of its image. The base layers stay references: nothing of them is
//! fetched. The new blob is kept in the cache's blob directory, where lazy reads find it.

use std::collections::BTreeMap;
use std::io::Read;

use crate::catalog::Catalog;
use crate::convert::LAYER_MEDIA_TYPE;
use crate::error::ImageError;
use crate::layout::Layout;
use strata_formats::chunked::write_chunked;
use strata_oci::config::{ContainerConfig, History, ImageConfig};
use strata_oci::digest::Digest;
use strata_oci::manifest::{CONFIG_MEDIA_TYPE, Descriptor, Manifest};
use strata_oci::timefmt::{now_rfc3339, now_secs};
use strata_storage::store::{ImageRecord, LayerFormat, LayerRecord, Store};

/// What `commit` records besides the layer.
#[derive(Debug, Clone, Default)]
pub struct CommitMeta {
    /// `-m`.
    pub comment: Option<String>,
    /// `--author`.
    pub author: Option<String>,
    /// The history's `created_by`.
    pub created_by: String,
    /// The container config to store (`-c` changes already applied by the caller, with the
    /// Dockerfile parser); `None` keeps the parent's.
    pub config: Option<ContainerConfig>,
}

/// A layer written by [`Committer::write_layer`], ready to go on top of an image.
#[derive(Debug, Clone)]
pub struct NewLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob.
    pub size: u64,
    /// The layer descriptor's annotations (TOC position and checksum).
    pub annotations: BTreeMap<String, String>,
}

/// A history entry as docker writes it, dated now.
pub fn history_entry(
    created_by: &str,
    comment: Option<&str>,
    author: Option<&str>,
    empty_layer: bool,
) -> History {
    History {
        created: Some(now_rfc3339()),
        created_by: Some(created_by.to_string()),
        comment: comment.map(str::to_string),
        author: author.map(str::to_string),
        empty_layer: empty_layer.then_some(true),
        ..History::default()
    }
}

/// Writes new layers and stores new images on top of stored ones (`commit`, `import`, `build`).
#[derive(Debug, Clone)]
pub struct Committer {
    store: Store,
    layout: Layout,
}

impl Committer {
    /// A committer writing into `store` and the blob directory of `layout`.
    pub fn new(store: Store, layout: Layout) -> Self {
        Self { store, layout }
    }

    /// The config a new image on `parent` starts from: the parent's, or an empty linux/amd64
    /// one (`FROM scratch`, `import`).
    pub fn base_config(&self, parent: Option<&ImageRecord>) -> Result<ImageConfig, ImageError> {
        match parent {
            Some(p) => Catalog::new(self.store.clone()).config(p),
            None => Ok(ImageConfig::scratch()),
        }
    }

    /// Writes `tar` as a native (zstd:chunked) layer kept in the cache's blob directory, where
    /// lazy reads of registry-less blobs look for it, with its TOC and layer record stored.
    /// Entries that would land outside the image are refused before anything is stored.
    pub fn write_layer(&self, tar: impl Read) -> Result<NewLayer, ImageError> {
        let tmp_dir = self.layout.tmp();
        std::fs::create_dir_all(&tmp_dir).map_err(ImageError::io(&tmp_dir))?;
        let tmp = strata_storage::atomic::temp_path(&tmp_dir.join("commit-layer"));
        let written = {
            let out = std::fs::File::create(&tmp).map_err(ImageError::io(&tmp))?;
            write_chunked(tar, std::io::BufWriter::new(out), 3).map_err(|source| {
                let _ = std::fs::remove_file(&tmp);
                ImageError::WriteLayer { source }
            })?
        };
        let index = match strata_formats::index::LayerIndex::from_toc(
            &written.toc,
            strata_formats::index::Locations::Zstd,
        ) {
            Ok(i) => i,
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ImageError::Index {
                    layer: written.digest,
                    source,
                });
            }
        };
        let blob_dir = self.layout.blobs();
        std::fs::create_dir_all(&blob_dir).map_err(ImageError::io(&blob_dir))?;
        let blob_path = blob_dir.join(written.digest.hex());
        std::fs::rename(&tmp, &blob_path).map_err(ImageError::io(&blob_path))?;
        self.store
            .put_blob(&written.toc_digest, &written.toc_compressed)?;
        self.store.put_layer(&LayerRecord {
            digest: written.digest,
            size: written.size,
            media_type: LAYER_MEDIA_TYPE.into(),
            format: LayerFormat::ZstdChunked,
            toc: Some(written.toc_digest),
            toc_uncompressed: written.toc_position.uncompressed,
            toc_offset: written.toc_position.offset,
            content_bytes: index.content_bytes(),
        })?;
        Ok(NewLayer {
            digest: written.digest,
            diff_id: written.diff_id,
            size: written.size,
            annotations: written.annotations,
        })
    }

    /// Stores a new image (not tagged): `parent`'s layers, then `layer` if given, with
    /// `config` (complete, its history already extended by the caller; the new layer's
    /// diff_id is appended here). Returns its record.
    pub fn derive(
        &self,
        parent: Option<&ImageRecord>,
        mut config: ImageConfig,
        layer: Option<&NewLayer>,
    ) -> Result<ImageRecord, ImageError> {
        config.created = Some(now_rfc3339());
        if let Some(l) = layer {
            config.push_diff_id(l.diff_id);
        }
        let config_bytes = config.to_vec();
        let config_digest = Digest::of(&config_bytes);
        self.store.put_blob(&config_digest, &config_bytes)?;

        let mut layers: Vec<Descriptor> = match parent {
            Some(p) => {
                let bytes = self.store.get_blob(&p.manifest)?;
                Manifest::from_slice(&bytes, &p.manifest.to_string())?.layers
            }
            None => Vec::new(),
        };
        if let Some(l) = layer {
            layers.push(
                Descriptor::new(LAYER_MEDIA_TYPE, l.digest, l.size)
                    .with_annotations(l.annotations.clone()),
            );
        }
        let config_desc =
            Descriptor::new(CONFIG_MEDIA_TYPE, config_digest, config_bytes.len() as u64);
        let manifest_bytes = Manifest::new(config_desc, layers).to_vec();
        let manifest_digest = Digest::of(&manifest_bytes);
        self.store.put_blob(&manifest_digest, &manifest_bytes)?;
        let mut layer_digests = parent.map(|p| p.layers.clone()).unwrap_or_default();
        layer_digests.extend(layer.map(|l| l.digest));
        let rec = ImageRecord {
            manifest: manifest_digest,
            config: config_digest,
            layers: layer_digests,
            sources: parent.map(|p| p.sources.clone()).unwrap_or_default(),
            index: None,
            pulled: now_secs(),
        };
        self.store.put_image(&rec)?;
        Ok(rec)
    }

    /// Writes `tar` as a new native layer on top of `parent` (or as the only layer of a new
    /// image, for `import`) and stores the new image (not tagged). Returns its record.
    pub fn commit(
        &self,
        parent: Option<&ImageRecord>,
        tar: impl Read,
        meta: &CommitMeta,
    ) -> Result<ImageRecord, ImageError> {
        let layer = self.write_layer(tar)?;
        let mut config = self.base_config(parent)?;
        if let Some(c) = &meta.config {
            config.config = Some(c.clone());
        } else {
            config.container_mut();
        }
        if let Some(a) = &meta.author {
            config.author = Some(a.clone());
        }
        // docker's image config keeps the commit message as `comment` (inspect's .Comment).
        config.comment = meta.comment.clone();
        config.push_history(history_entry(
            &meta.created_by,
            meta.comment.as_deref(),
            meta.author.as_deref(),
            false,
        ));
        self.derive(parent, config, Some(&layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_oci::nullable::Nullable;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_commit_stacks_a_layer_over_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let store = Store::open(&layout.store()).unwrap();
        let committer = Committer::new(store.clone(), layout.clone());
        let import = CommitMeta {
            created_by: "import".into(),
            config: Some(ContainerConfig {
                cmd: Nullable::Set(vec!["sh".into()]),
                ..ContainerConfig::default()
            }),
            ..CommitMeta::default()
        };
        let base = committer
            .commit(None, &tar_of("a", b"1")[..], &import)
            .unwrap();
        let commit = CommitMeta {
            comment: Some("msg".into()),
            created_by: "commit".into(),
            ..CommitMeta::default()
        };
        let top = committer
            .commit(Some(&base), &tar_of("b", b"2")[..], &commit)
            .unwrap();
        assert_eq!(top.layers.len(), 2);
        assert_eq!(top.layers[0], base.layers[0]);
        assert!(layout.blob(&top.layers[1]).exists());

        let catalog = Catalog::new(store.clone());
        let cfg = catalog.config(&top).unwrap();
        // The parent's config carries over; the new layer and history entry are added.
        assert_eq!(cfg.container().cmd.get().unwrap(), &["sh"]);
        assert_eq!(cfg.rootfs.as_ref().unwrap().diff_ids.len(), 2);
        assert_eq!(cfg.history.as_ref().unwrap().len(), 2);
        assert_eq!(cfg.comment.as_deref(), Some("msg"));
        let manifest =
            Manifest::from_slice(&store.get_blob(&top.manifest).unwrap(), "top").unwrap();
        assert_eq!(manifest.config.digest, top.config);
        let digests: Vec<Digest> = manifest.layers.iter().map(|l| l.digest).collect();
        assert_eq!(digests, top.layers);
        assert!(manifest.layers[1].annotations.is_some());

        let layers = catalog.open_layers(&top).unwrap();
        assert!(layers[1].index.entries.iter().any(|e| e.path == b"b"));
        assert!(!layers[1].index.entries.iter().any(|e| e.path == b"a"));
    }
}
