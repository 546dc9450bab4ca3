//! `save` and `load`: images as an OCI image layout in a tar archive (what skopeo and podman
//! read as `oci-archive:`) plus docker's `manifest.json`, as Docker 25+ writes it, so `docker
//! load` reads it too. `save` includes every layer blob (fetching base layers that were never
//! downloaded); `load` keeps the blobs locally, so the loaded image needs no registry. `load`
//! also reads docker's older format (see `archive_docker`).

use std::io::{Read, Write};
use std::path::Path;

use serde_json::{Value, json};

use crate::digest::{Digest, Hasher};
use crate::estargz;
use crate::image::{Context, ImageError};
use crate::index::{LayerIndex, Locations};
use crate::plain::{index_plain, sniff};
use crate::reference::Reference;
use crate::store::{Compression, ImageRecord, LayerFormat, LayerRecord};
use crate::timefmt::now_secs;
use crate::toc::{TocAnnotations, decode_toc};

fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> ImageError {
    ImageError::Manifest {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

impl Context {
    /// A local file holding blob `d` of `img` (fetched from its source into the cache's blob
    /// directory if it is not there yet, and checked).
    async fn local_blob(
        &self,
        img: &ImageRecord,
        d: &Digest,
    ) -> Result<std::path::PathBuf, ImageError> {
        use futures_util::TryStreamExt;
        let path = self.root.join("cache/blobs").join(d.hex());
        if path.exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(self.root.join("cache/blobs")).map_err(|e| fail(d, e))?;
        let src = self.source_ref(img)?;
        let mut body = Box::pin(self.client.blob_stream(&src, d).await?);
        let tmp = crate::atomic::temp_path(&path);
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail(d, e))?;
        let mut h = Hasher::default();
        while let Some(piece) = body.try_next().await? {
            h.update(&piece);
            f.write_all(&piece).map_err(|e| fail(d, e))?;
        }
        let got = h.finish();
        if got != *d {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(d, format!("content hashes to {got}")));
        }
        std::fs::rename(&tmp, &path).map_err(|e| fail(d, e))?;
        Ok(path)
    }

    /// Writes `images` (with the names to record) as an OCI layout tar to `out`.
    pub async fn save(
        &self,
        images: &[(ImageRecord, Option<String>)],
        out: impl Write,
    ) -> Result<(), ImageError> {
        let mut b = tar::Builder::new(out);
        let mut added = std::collections::HashSet::new();
        let mut add =
            |b: &mut tar::Builder<_>, d: &Digest, bytes: &[u8]| -> Result<(), ImageError> {
                if added.insert(*d) {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(bytes.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, format!("blobs/sha256/{}", d.hex()), bytes)
                        .map_err(|e| fail(d, e))?;
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
                let bytes = std::fs::read(&path).map_err(|e| fail(d, e))?;
                add(&mut b, d, &bytes)?;
            }
            let media_type = serde_json::from_slice::<Value>(&manifest)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
            let mut desc = json!({"mediaType": media_type, "digest": img.manifest.to_string(), "size": manifest.len()});
            // Named as Docker 25+ names them: the whole reference for containerd, the tag as
            // the OCI ref name.
            let parsed: Option<Reference> = name.as_deref().and_then(|n| n.parse().ok());
            if let Some(n) = &parsed {
                desc["annotations"] = json!({
                    "io.containerd.image.name": n.tag_key(),
                    "org.opencontainers.image.ref.name": n.tag.as_deref().unwrap_or("latest"),
                });
            }
            manifests.push(desc);
            docker.push(crate::archive_docker::entry_for(img, parsed.as_slice()));
        }
        for (name, bytes) in [
            (
                "oci-layout",
                serde_json::to_vec(&json!({"imageLayoutVersion": "1.0.0"})),
            ),
            (
                "index.json",
                serde_json::to_vec(
                    &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}),
                ),
            ),
            ("manifest.json", serde_json::to_vec(&docker)),
        ] {
            let bytes = bytes.map_err(|e| fail(name, e))?;
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &bytes[..])
                .map_err(|e| fail(name, e))?;
        }
        b.into_inner().map_err(|e| fail("archive", e))?;
        Ok(())
    }

    /// Loads every image of an archive as `docker save`, `strata save`, podman or nerdctl write
    /// it: an OCI layout (`index.json`, whose entries may be image indexes) or docker's format
    /// (`manifest.json` with `Config`, `RepoTags` and `Layers` paths, `<id>/layer.tar`).
    pub fn load(&self, archive: impl Read) -> Result<Vec<Loaded>, ImageError> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| fail("load", e))?;
        let tmp = crate::atomic::temp_path(&dir.join("load"));
        std::fs::create_dir(&tmp).map_err(|e| fail("load", e))?;
        let result = (|| {
            tar::Archive::new(archive)
                .unpack(&tmp)
                .map_err(|e| fail("archive", crate::tarwalk::clean_io_error(e)))?;
            if tmp.join("index.json").exists() {
                self.load_layout(&tmp)
            } else if tmp.join("manifest.json").exists() {
                self.load_docker(&tmp)
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
        let local = self.root.join("cache/blobs").join(d.hex());
        crate::atomic::write_file(&local, bytes).map_err(|e| fail(d, e))?;
        let mut diff_id = None;
        let from_toc = TocAnnotations::parse(ann)
            .ok()
            .flatten()
            .and_then(|t| t.toc_digest.map(|dg| (t, dg)))
            .map(|(t, toc_digest)| -> Result<LayerRecord, ImageError> {
                let toc = bytes
                    .get(t.toc.offset as usize..(t.toc.offset + t.toc.compressed) as usize)
                    .ok_or_else(|| fail(d, "TOC outside the blob"))?;
                toc_digest
                    .verify(toc)
                    .map_err(crate::store::StoreError::from)?;
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
                let (rec, id) = self.index_whole_layer(d, bytes, media_type)?;
                diff_id = Some(id);
                rec
            }
        };
        self.store.put_layer(&rec)?;
        Ok(diff_id)
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
        let indexed =
            index_plain(bytes, compression, self.fetcher.cache()).map_err(|e| fail(d, e))?;
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

    fn load_layout(&self, layout: &Path) -> Result<Vec<Loaded>, ImageError> {
        let index: Value = serde_json::from_slice(
            &std::fs::read(layout.join("index.json")).map_err(|e| fail("index.json", e))?,
        )
        .map_err(|e| fail("index.json", e))?;
        // Docker 25+ writes both; its manifest.json carries the names as RepoTags.
        let docker_names = crate::archive_docker::repo_tags_by_config(layout);
        let mut out = Vec::new();
        for m in index["manifests"].as_array().cloned().unwrap_or_default() {
            let d: Digest = m["digest"]
                .as_str()
                .unwrap_or("")
                .parse()
                .map_err(|e| fail("index.json: manifest digest", e))?;
            let bytes = layout_blob(layout, &d)?;
            let doc: Value = serde_json::from_slice(&bytes).map_err(|e| fail(d, e))?;
            let (md, mbytes, from_index) = if doc.get("manifests").is_some() {
                let md = pick_manifest(layout, &d, &bytes)?;
                self.store.put_blob(&d, &bytes)?;
                (md, layout_blob(layout, &md)?, Some(d))
            } else {
                (d, bytes, None)
            };
            let rec = self.load_manifest(layout, md, &mbytes, from_index)?;
            let mut names: Vec<Reference> = name_of(&m).into_iter().collect();
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
        let manifest: Value = serde_json::from_slice(mbytes).map_err(|e| fail(md, e))?;
        let cd: Digest = manifest["config"]["digest"]
            .as_str()
            .unwrap_or("")
            .parse()
            .map_err(|e| fail(md, e))?;
        self.store.put_blob(&cd, &layout_blob(layout, &cd)?)?;
        let mut layers = Vec::new();
        for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let d: Digest = l["digest"]
                .as_str()
                .unwrap_or("")
                .parse()
                .map_err(|e| fail(md, e))?;
            layers.push(d);
            if self.store.layer(&d)?.is_some() {
                continue;
            }
            let ann: std::collections::BTreeMap<String, String> =
                serde_json::from_value(l["annotations"].clone()).unwrap_or_default();
            let media_type = l["mediaType"].as_str().unwrap_or("").to_string();
            self.load_layer(d, &layout_blob(layout, &d)?, media_type, &ann)?;
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
        .map_err(|e| fail(format!("archive blob {d}"), e))?;
    d.verify(&bytes).map_err(crate::store::StoreError::from)?;
    Ok(bytes)
}

/// The name an `index.json` entry gives its image, as docker's containerd image store reads it:
/// `io.containerd.image.name`, else `org.opencontainers.image.ref.name` when it is a whole
/// reference (a bare tag such as `latest` names no repository).
fn name_of(desc: &Value) -> Option<Reference> {
    let ann = &desc["annotations"];
    if let Some(n) = ann["io.containerd.image.name"].as_str()
        && let Ok(r) = n.parse::<Reference>()
    {
        return Some(r);
    }
    ann["org.opencontainers.image.ref.name"]
        .as_str()
        .filter(|n| n.contains('/') || n.contains(':'))
        .and_then(|n| n.parse::<Reference>().ok())
}

/// The manifest to load from the image index `d`: among those whose blob the archive holds
/// (docker saves only its own platform's), the best for linux/amd64 by containerd's rules, or
/// the only one there is. Attestation manifests (platform unknown/unknown) never count.
fn pick_manifest(layout: &Path, d: &Digest, bytes: &[u8]) -> Result<Digest, ImageError> {
    let mut index = oci_spec::image::ImageIndex::from_reader(bytes).map_err(|e| fail(d, e))?;
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
    match crate::platform::select(&index, "linux/amd64") {
        Ok(md) => Ok(md),
        Err(e) => match only {
            Some(m) => m.digest().to_string().parse().map_err(|e| fail(d, e)),
            None => Err(fail(d, e)),
        },
    }
}

impl Context {
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
            let footer_at = (size - estargz::FOOTER_LEN) as usize;
            let toc_offset = estargz::parse_footer(&bytes[footer_at..]).map_err(toc_err)?;
            let member = bytes.get(toc_offset as usize..footer_at).ok_or_else(|| {
                toc_err(crate::toc::TocError::Footer(
                    "eStargz TOC offset past the footer",
                ))
            })?;
            let json = estargz::extract_toc_json(member).map_err(toc_err)?;
            self.estargz_layer(d, size, media_type, tocd, &json, toc_offset)
        };
        Some(build())
    }
}
