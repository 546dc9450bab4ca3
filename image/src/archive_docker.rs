//! docker's own archive format (`docker save` before Docker 25, and the `manifest.json` Docker
//! 25+ still writes beside its OCI layout): `manifest.json` lists each image as its config file,
//! its names (`RepoTags`, absent or null for an untagged image) and its layer tars, paths inside
//! the archive (`<id>.json`, `<id>/layer.tar`, or `blobs/sha256/<hex>` from Docker 25 on).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::plain::sniff;
use strata_storage::store::{Compression, ImageRecord};

/// One entry of `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerManifestEntry {
    /// Path of the config JSON in the archive.
    #[serde(rename = "Config")]
    pub config: String,
    /// Names, docker's familiar form (`busybox:latest`).
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, bottom first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// An I/O error reading part `what` of the archive.
pub(crate) fn io_fail(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.to_string();
    move |source| ImageError::ArchiveIo { what, source }
}

/// A path named by `manifest.json`, kept inside the unpacked archive.
pub(crate) fn inside(dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let rel = strata_formats::index::normalize_path(name.as_bytes()).map_err(|source| {
        ImageError::ArchivePath {
            path: name.to_string(),
            source,
        }
    })?;
    Ok(dir.join(String::from_utf8_lossy(&rel).into_owned()))
}

pub(crate) fn entries(dir: &Path) -> Result<Vec<DockerManifestEntry>, ImageError> {
    let bytes = std::fs::read(dir.join("manifest.json")).map_err(io_fail("manifest.json"))?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::ArchiveJson {
        what: "manifest.json".into(),
        source,
    })
}

pub(crate) fn parse_tags(tags: &Option<Vec<String>>) -> Result<Vec<Reference>, ImageError> {
    tags.iter()
        .flatten()
        .map(|t| {
            t.parse::<Reference>()
                .map_err(|source| ImageError::BadReference {
                    what: format!("{t:?} in manifest.json RepoTags"),
                    source,
                })
        })
        .collect()
}

/// The names `manifest.json` gives each config digest (for an OCI layout whose index carries
/// none); empty when there is no usable `manifest.json`.
pub(crate) fn repo_tags_by_config(dir: &Path) -> HashMap<Digest, Vec<Reference>> {
    let mut out = HashMap::new();
    let Ok(list) = entries(dir) else {
        return out;
    };
    for e in list {
        let Ok(bytes) =
            inside(dir, &e.config).and_then(|p| std::fs::read(p).map_err(io_fail(&e.config)))
        else {
            continue;
        };
        if let Ok(tags) = parse_tags(&e.repo_tags) {
            out.insert(Digest::of(&bytes), tags);
        }
    }
    out
}

pub(crate) fn layer_media_type(bytes: &[u8]) -> &'static str {
    match sniff(bytes) {
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
    }
}

/// The `manifest.json` entry `save` writes for an image (as Docker 25+ does: paths into the
/// OCI layout's blobs), so that `docker load` reads the archive.
pub fn entry_for(img: &ImageRecord, names: &[Reference]) -> DockerManifestEntry {
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
    DockerManifestEntry {
        config: blob(&img.config),
        repo_tags: (!names.is_empty()).then(|| {
            names
                .iter()
                .map(|n| {
                    format!(
                        "{}:{}",
                        n.familiar_repository(),
                        n.tag.as_deref().unwrap_or("latest")
                    )
                })
                .collect()
        }),
        layers: img.layers.iter().map(blob).collect(),
    }
}
