//! `save` and `load`: images as an OCI image layout in a tar archive (what skopeo and podman
//! read as `oci-archive:`) plus docker's `manifest.json`, as Docker 25+ writes it, so `docker
//! load` reads it too. `save` includes every layer blob (fetching base layers that were never
//! downloaded); `load` keeps the blobs locally, so the loaded image needs no registry. `load`
//! also reads docker's older format (see `archive_docker`).

use std::io::{Read, Write};
use std::path::Path;

use std::sync::Arc;

use strata_distribution::RegistryClient;
use strata_storage::store::Store;

use crate::archive_docker::{entries, inside, layer_media_type, parse_tags};
use crate::catalog::{Catalog, source_ref};
use crate::error::ImageError;
use crate::index::LayerIndexer;
use crate::layout::Layout;
use strata_formats::estargz;
use strata_formats::index::{LayerIndex, Locations};
use strata_formats::toc::{TocAnnotations, decode_toc};
use strata_oci::config::ImageConfig;
use strata_oci::digest::{Digest, Hasher};
use strata_oci::manifest::{CONFIG_MEDIA_TYPE, Descriptor, Index, Manifest, media_type_of};
use strata_oci::reference::Reference;
use strata_oci::timefmt::now_secs;
use strata_storage::store::{ImageRecord, LayerFormat, LayerRecord};

/// A problem with part `what` of an archive.
fn fail(what: impl std::fmt::Display, problem: impl std::fmt::Display) -> ImageError {
    ImageError::Archive {
        what: what.to_string(),
        problem: problem.to_string(),
    }
}

/// An I/O error on part `what` of an archive.
fn io_fail(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.to_string();
    move |source| ImageError::ArchiveIo { what, source }
}

/// containerd's `containerd.io/distribution.source.HOST` annotations (the host without its
/// port, the repository as value) for the registries `img` can be fetched from, as docker
/// writes them into `index.json`.
fn distribution_sources(img: &ImageRecord) -> Vec<(String, String)> {
    img.sources
        .iter()
        .filter(|s| s.as_str() != crate::catalog::LOCAL_SOURCE)
        .filter_map(|s| format!("{s}@{}", img.manifest).parse::<Reference>().ok())
        .map(|r| {
            let host = match r.registry.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => r.registry.as_str(),
            };
            (
                format!("containerd.io/distribution.source.{host}"),
                r.repository,
            )
        })
        .collect()
}

/// Writes images to archives and loads them from archives.
#[derive(Debug, Clone)]
pub struct Archives {
    pub(crate) store: Store,
    client: Arc<RegistryClient>,
    indexer: LayerIndexer,
    layout: Layout,
}

/// The `index.json` entry of a saved image, named as Docker 25+ names them: the whole
/// reference for containerd, the tag as the OCI ref name, and its sources.
fn index_entry(img: &ImageRecord, manifest: &[u8], name: Option<&Reference>) -> Descriptor {
    let media_type = media_type_of(manifest);
    let mut desc = Descriptor::new(&media_type, img.manifest, manifest.len() as u64);
    if let Some(n) = name {
        let mut ann: std::collections::BTreeMap<String, String> = [
            ("io.containerd.image.name".to_string(), n.tag_key()),
            (
                "org.opencontainers.image.ref.name".to_string(),
                n.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        ]
        .into();
        // The most recent source wins where two share a host.
        ann.extend(distribution_sources(img).into_iter().rev());
        desc.annotations = Some(ann);
    }
    desc
}

impl Archives {
    pub(crate) fn new(
        store: Store,
        client: Arc<RegistryClient>,
        indexer: LayerIndexer,
        layout: Layout,
    ) -> Self {
        Self {
            store,
            client,
            indexer,
            layout,
        }
    }

    /// Points `name` at `rec`.
    pub(crate) fn tag(&self, rec: &ImageRecord, name: &Reference) -> Result<(), ImageError> {
        Catalog::new(self.store.clone()).tag(rec, name)
    }

    /// A local file holding blob `d` of `img` (fetched from its source into the cache's blob
    /// directory if it is not there yet, and checked).
    pub async fn local_blob(
        &self,
        img: &ImageRecord,
        d: &Digest,
    ) -> Result<std::path::PathBuf, ImageError> {
        use futures_util::TryStreamExt;
        let path = self.layout.blob(d);
        if path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(self.layout.blobs())
            .map_err(ImageError::io(self.layout.blobs()))?;
        let src = source_ref(img)?;
        let mut body = Box::pin(self.client.blob_stream(&src, d).await?);
        let tmp = strata_storage::atomic::temp_path(&path);
        let mut f = std::fs::File::create(&tmp).map_err(ImageError::io(&tmp))?;
        let mut h = Hasher::default();
        while let Some(piece) = body.try_next().await? {
            h.update(&piece);
            f.write_all(&piece).map_err(ImageError::io(&tmp))?;
        }
        let got = h.finish();
        if got != *d {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::Mismatch {
                layer: *d,
                actual: got,
            });
        }
        std::fs::rename(&tmp, &path).map_err(ImageError::io(&path))?;
        Ok(path)
    }

    /// Writes `images` (with the names to record) as an OCI layout tar to `out`.
    pub async fn save(
        &self,
        images: &[(ImageRecord, Option<String>)],
        out: impl Write,
    ) -> Result<(), ImageError> {
        let mut b = tar::Builder::new(out);
        // As docker's archive: the blob directories are entries of their own.
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, dir, std::io::empty())
                .map_err(io_fail(dir))?;
        }
        let mut added = std::collections::HashSet::new();
        let mut add =
            |b: &mut tar::Builder<_>, d: &Digest, bytes: &[u8]| -> Result<(), ImageError> {
                if added.insert(*d) {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(bytes.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), bytes)
                        .map_err(io_fail(format!("blob {d}")))?;
                }
                Ok(())
            };
        let mut manifests = Vec::new();
        let mut docker = Vec::new();
        for (img, name) in images {
            let manifest = self.store.get_blob(&img.manifest)?;
            let config = self.store.get_blob(&img.config)?;
            add(&mut b, &img.manifest, &manifest)?;
            add(&mut b, &img.config, &config)?;
            for d in &img.layers {
                let path = self.local_blob(img, d).await?;
                let bytes = std::fs::read(&path).map_err(ImageError::io(&path))?;
                add(&mut b, d, &bytes)?;
            }
            let parsed: Option<Reference> = name.as_deref().and_then(|n| n.parse().ok());
            manifests.push(index_entry(img, &manifest, parsed.as_ref()));
            docker.push(crate::archive_docker::entry_for(img, parsed.as_slice()));
        }
        for (name, bytes) in [
            (
                "oci-layout",
                serde_json::to_vec(&OciLayout {
                    image_layout_version: "1.0.0",
                }),
            ),
            ("index.json", serde_json::to_vec(&Index::new(manifests))),
            ("manifest.json", serde_json::to_vec(&docker)),
        ] {
            let bytes = bytes.map_err(|source| ImageError::ArchiveJson {
                what: name.into(),
                source,
            })?;
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &bytes[..])
                .map_err(io_fail(name))?;
        }
        b.into_inner().map_err(io_fail("output"))?;
        Ok(())
    }

    /// Loads every image of an archive as `docker save`, `strata save`, podman or nerdctl write
    /// it: an OCI layout (`index.json`, whose entries may be image indexes) or docker's format
    /// (`manifest.json` with `Config`, `RepoTags` and `Layers` paths, `<id>/layer.tar`).
    pub fn load(&self, archive: impl Read) -> Result<Vec<Loaded>, ImageError> {
        let dir = self.layout.tmp();
        std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
        let tmp = strata_storage::atomic::temp_path(&dir.join("load"));
        std::fs::create_dir(&tmp).map_err(ImageError::io(&tmp))?;
        let result = (|| {
            tar::Archive::new(archive)
                .unpack(&tmp)
                .map_err(|e| io_fail("input")(strata_formats::tarwalk::clean_io_error(e)))?;
            if tmp.join("index.json").exists() {
                self.load_layout(&tmp)
            } else if tmp.join("manifest.json").exists() {
                load_docker(self, &tmp)
            } else {
                Err(fail(
                    "archive",
                    "neither index.json (OCI layout) nor manifest.json (docker save) in it",
                ))
            }
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    /// Stores layer `d` (its whole blob in `bytes`) unless it is stored already; returns the
    /// diff_id when the layer was indexed by streaming it (plain layers).
    pub(crate) fn load_layer(
        &self,
        d: Digest,
        bytes: &[u8],
        media_type: String,
        ann: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Digest>, ImageError> {
        if self.store.layer(&d)?.is_some() {
            return Ok(None);
        }
        let local = self.layout.blob(&d);
        strata_storage::atomic::write_file(&local, bytes).map_err(ImageError::io(&local))?;
        let mut diff_id = None;
        let from_toc = TocAnnotations::parse(ann)
            .ok()
            .flatten()
            .and_then(|t| t.toc_digest.map(|dg| (t, dg)))
            .map(|(t, toc_digest)| -> Result<LayerRecord, ImageError> {
                let toc = bytes
                    .get(
                        strata_oci::usize_of(t.toc.offset)
                            ..strata_oci::usize_of(t.toc.offset + t.toc.compressed),
                    )
                    .ok_or_else(|| fail(d, "TOC outside the blob"))?;
                toc_digest
                    .verify(toc)
                    .map_err(strata_storage::store::StoreError::from)?;
                let parsed = decode_toc(toc, t.toc.uncompressed)
                    .map_err(|source| ImageError::Toc { layer: d, source })?;
                let data_end = t.toc.offset.saturating_sub(8);
                let index = LayerIndex::from_toc_bounded(&parsed, Locations::Zstd, Some(data_end))
                    .map_err(|source| ImageError::Index { layer: d, source })?;
                self.store.put_blob(&toc_digest, toc)?;
                Ok(LayerRecord {
                    digest: d,
                    size: bytes.len() as u64,
                    media_type: media_type.clone(),
                    format: LayerFormat::ZstdChunked,
                    toc: Some(toc_digest),
                    toc_uncompressed: t.toc.uncompressed,
                    toc_offset: t.toc.offset,
                    content_bytes: index.content_bytes(),
                })
            });
        let from_toc = from_toc.or_else(|| self.estargz_record(d, bytes, ann, &media_type));
        let rec = match from_toc {
            Some(Ok(rec)) => rec,
            Some(Err(e)) if !e.toc_untrusted() => return Err(e),
            toc => {
                if let Some(Err(e)) = toc {
                    tracing::warn!(
                        "layer {d}: table of contents not usable ({e}); indexing it whole"
                    );
                }
                let (rec, id) = self.indexer.index_whole_layer(d, bytes, media_type)?;
                diff_id = Some(id);
                rec
            }
        };
        self.store.put_layer(&rec)?;
        Ok(diff_id)
    }

    fn load_layout(&self, layout: &Path) -> Result<Vec<Loaded>, ImageError> {
        let bytes = std::fs::read(layout.join("index.json")).map_err(io_fail("index.json"))?;
        let index = Index::from_slice(&bytes, "index.json")?;
        // Docker 25+ writes both; its manifest.json carries the names as RepoTags.
        let docker_names = crate::archive_docker::repo_tags_by_config(layout);
        let mut out = Vec::new();
        for m in &index.manifests {
            let d = m.digest;
            let bytes = layout_blob(layout, &d)?;
            let (md, mbytes, from_index) = if is_index(&bytes) {
                let md = pick_manifest(layout, &d, &bytes)?;
                self.store.put_blob(&d, &bytes)?;
                (md, layout_blob(layout, &md)?, Some(d))
            } else {
                (d, bytes, None)
            };
            let rec = self.load_manifest(layout, md, &mbytes, from_index)?;
            let mut names: Vec<Reference> = name_of(m).into_iter().collect();
            if names.is_empty() {
                names = docker_names.get(&rec.config).cloned().unwrap_or_default();
            }
            for n in &names {
                self.tag(&rec, n)?;
            }
            out.push(Loaded { image: rec, names });
        }
        Ok(out)
    }

    fn load_manifest(
        &self,
        layout: &Path,
        md: Digest,
        mbytes: &[u8],
        index: Option<Digest>,
    ) -> Result<ImageRecord, ImageError> {
        let manifest = Manifest::from_slice(mbytes, &md.to_string())?;
        let cd = manifest.config.digest;
        self.store.put_blob(&cd, &layout_blob(layout, &cd)?)?;
        let mut layers = Vec::new();
        for l in &manifest.layers {
            let d = l.digest;
            layers.push(d);
            if self.store.layer(&d)?.is_some() {
                continue;
            }
            let blob = layout_blob(layout, &d)?;
            self.load_layer(d, &blob, l.media_type.clone(), &l.annotations())?;
        }
        self.store.put_blob(&md, mbytes)?;
        let rec = ImageRecord {
            manifest: md,
            config: cd,
            layers,
            sources: Vec::new(),
            index,
            pulled: now_secs(),
        };
        self.store.put_image(&rec)?;
        Ok(rec)
    }
}

/// `oci-layout`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: &'static str,
}

/// Whether a blob of a layout is an image index (it lists manifests) rather than a manifest.
fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        manifests: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.manifests.is_some())
}

/// An image loaded from an archive, with the names it was given.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The stored image.
    pub image: ImageRecord,
    /// Names it now has (none: docker prints its ID).
    pub names: Vec<Reference>,
}

/// Blob `d` of an OCI layout, checked against its digest.
pub(crate) fn layout_blob(layout: &Path, d: &Digest) -> Result<Vec<u8>, ImageError> {
    let bytes = std::fs::read(layout.join("blobs/sha256").join(d.hex()))
        .map_err(io_fail(format!("blob {d}")))?;
    d.verify(&bytes)
        .map_err(strata_storage::store::StoreError::from)?;
    Ok(bytes)
}

/// The name an `index.json` entry gives its image, as docker's containerd image store reads it:
/// `io.containerd.image.name`, else `org.opencontainers.image.ref.name` when it is a whole
/// reference (a bare tag such as `latest` names no repository).
fn name_of(desc: &Descriptor) -> Option<Reference> {
    let ann = desc.annotations.as_ref()?;
    if let Some(n) = ann.get("io.containerd.image.name")
        && let Ok(r) = n.parse::<Reference>()
    {
        return Some(r);
    }
    ann.get("org.opencontainers.image.ref.name")
        .filter(|n| n.contains('/') || n.contains(':'))
        .and_then(|n| n.parse::<Reference>().ok())
}

/// The manifest to load from the image index `d`: among those whose blob the archive holds
/// (docker saves only its own platform's), the best for linux/amd64 by containerd's rules, or
/// the only one there is. Attestation manifests (platform unknown/unknown) never count.
fn pick_manifest(layout: &Path, d: &Digest, bytes: &[u8]) -> Result<Digest, ImageError> {
    let mut index = oci_spec::image::ImageIndex::from_reader(bytes).map_err(|source| {
        ImageError::ManifestParse {
            what: d.to_string(),
            source,
        }
    })?;
    let present: Vec<_> = index
        .manifests()
        .iter()
        .filter(|m| {
            m.platform()
                .as_ref()
                .is_none_or(|p| p.os().to_string() != "unknown")
                && m.digest()
                    .to_string()
                    .parse::<Digest>()
                    .is_ok_and(|md| layout.join("blobs/sha256").join(md.hex()).exists())
        })
        .cloned()
        .collect();
    if present.is_empty() {
        return Err(fail(
            d,
            "the index lists no manifest whose blob is in the archive",
        ));
    }
    let only = (present.len() == 1).then(|| present[0].clone());
    index.set_manifests(present);
    match strata_oci::platform::select(&index, "linux/amd64") {
        Ok(md) => Ok(md),
        Err(e) => match only {
            Some(m) => m
                .digest()
                .to_string()
                .parse()
                .map_err(|source| ImageError::BadDigest {
                    what: format!("index {d}"),
                    source,
                }),
            None => Err(ImageError::Platform {
                what: format!("index {d}"),
                source: e,
            }),
        },
    }
}

impl Archives {
    /// The record of a loaded eStargz layer (TOC digest annotation, footer, TOC entry), indexed
    /// as a pull indexes it; `None` when the layer does not announce eStargz.
    fn estargz_record(
        &self,
        d: Digest,
        bytes: &[u8],
        ann: &std::collections::BTreeMap<String, String>,
        media_type: &str,
    ) -> Option<Result<LayerRecord, ImageError>> {
        let tocd: Digest = ann.get(estargz::TOC_DIGEST_ANNOTATION)?.parse().ok()?;
        let size = bytes.len() as u64;
        if size <= estargz::FOOTER_LEN {
            return None;
        }
        let toc_err = |source| ImageError::Toc { layer: d, source };
        let build = || -> Result<LayerRecord, ImageError> {
            let footer_at = strata_oci::usize_of(size - estargz::FOOTER_LEN);
            let toc_offset = estargz::parse_footer(&bytes[footer_at..]).map_err(toc_err)?;
            let member = bytes
                .get(strata_oci::usize_of(toc_offset)..footer_at)
                .ok_or_else(|| {
                    toc_err(strata_formats::toc::TocError::Footer(
                        "eStargz TOC offset past the footer",
                    ))
                })?;
            let json = estargz::extract_toc_json(member).map_err(toc_err)?;
            self.indexer
                .estargz_layer(d, size, media_type, tocd, &json, toc_offset)
        };
        Some(build())
    }
}

/// Loads every image `manifest.json` lists: each layer file is stored as a blob (indexed
/// by streaming it, and checked against the config's diff_id), and an OCI manifest is made
/// for the config and layers.
fn load_docker(a: &Archives, dir: &Path) -> Result<Vec<Loaded>, ImageError> {
    let mut out = Vec::new();
    for e in entries(dir)? {
        let config = std::fs::read(inside(dir, &e.config)?).map_err(io_fail(&e.config))?;
        let cd = Digest::of(&config);
        let cfg = ImageConfig::from_slice(&config, &e.config)?;
        let diff_ids: Vec<Digest> = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != e.layers.len() {
            return Err(fail(
                &e.config,
                format!(
                    "config lists {} layers, manifest.json {}",
                    diff_ids.len(),
                    e.layers.len()
                ),
            ));
        }
        a.store.put_blob(&cd, &config)?;
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for (path, want) in e.layers.iter().zip(&diff_ids) {
            let bytes = std::fs::read(inside(dir, path)?).map_err(io_fail(path))?;
            let d = Digest::of(&bytes);
            let media_type = layer_media_type(&bytes);
            let got = a.load_layer(d, &bytes, media_type.into(), &Default::default())?;
            if let Some(got) = got
                && got != *want
            {
                // The layer record stays: it is right for its own digest; no image uses it.
                return Err(fail(
                    path,
                    format!("layer content is {got}, the config says {want}"),
                ));
            }
            descs.push(Descriptor::new(media_type, d, bytes.len() as u64));
            layers.push(d);
        }
        let config_desc = Descriptor::new(CONFIG_MEDIA_TYPE, cd, config.len() as u64);
        let manifest = Manifest::new(config_desc, descs).to_vec();
        let md = Digest::of(&manifest);
        a.store.put_blob(&md, &manifest)?;
        let rec = ImageRecord {
            manifest: md,
            config: cd,
            layers,
            sources: Vec::new(),
            index: None,
            pulled: now_secs(),
        };
        a.store.put_image(&rec)?;
        let names = parse_tags(&e.repo_tags)?;
        for n in &names {
            a.tag(&rec, n)?;
        }
        out.push(Loaded { image: rec, names });
    }
    Ok(out)
}
