//! SOCI indexes of gzip images: finding the index of a manifest (v2: the manifest's
//! `com.amazon.soci.index-digest` annotation; v1: a referrer of the manifest, through the
//! referrers tag schema `sha256-<hex>`), and the ztocs it names for the image's layers. Each
//! document is fetched by digest and verified; a ztoc must index a layer of the image, of that
//! layer's size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use strata_distribution::RegistryClient;
use strata_formats::index::LayerIndex;
use strata_formats::ztoc::Ztoc;
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::store::{LayerFormat, LayerRecord, Store};

use crate::error::ImageError;

/// The image manifest's annotation naming its SOCI index (v2).
pub const INDEX_DIGEST: &str = "com.amazon.soci.index-digest";
/// On a SOCI index's descriptor in an image index: the image manifest it indexes (v2).
pub const IMAGE_MANIFEST_DIGEST: &str = "com.amazon.soci.image-manifest-digest";
/// On a ztoc descriptor: the layer it indexes.
pub const LAYER_DIGEST: &str = "com.amazon.soci.image-layer-digest";
/// On a ztoc descriptor: the layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "com.amazon.soci.image-layer-mediaType";
/// On a ztoc descriptor: the span size it was built with.
pub const SPAN_SIZE: &str = "com.amazon.soci.span-size";
/// On a SOCI index: the tool that built it.
pub const BUILD_TOOL: &str = "com.amazon.soci.build-tool-identifier";
/// Artifact type (and config media type) of a v1 SOCI index.
pub const ARTIFACT_V1: &str = "application/vnd.amazon.soci.index.v1+json";
/// Artifact type (and config media type) of a v2 SOCI index.
pub const ARTIFACT_V2: &str = "application/vnd.amazon.soci.index.v2+json";
/// Media type of a ztoc.
pub const ZTOC_MEDIA_TYPE: &str = "application/octet-stream";
/// Digest of `{}`, the config of every SOCI index.
pub const EMPTY_JSON: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// A descriptor as SOCI's documents have them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Desc {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Digest.
    pub digest: String,
    /// Size.
    pub size: u64,
    /// Artifact type, on index entries.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform, on index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// A SOCI index: an OCI manifest whose layers are ztocs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SociIndex {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// `application/vnd.oci.image.manifest.v1+json`.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The empty JSON config, typed with the index's artifact type.
    pub config: Desc,
    /// The ztocs.
    pub layers: Vec<Desc>,
    /// The image manifest (v1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Desc>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A ztoc to fetch: its digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZtocRef {
    /// The SOCI index that names it.
    pub index: Digest,
    /// The ztoc blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

#[derive(Deserialize)]
struct Referrers {
    #[serde(default)]
    manifests: Vec<Desc>,
}

fn soci_err(index: Digest, reason: impl Into<String>) -> ImageError {
    ImageError::Soci {
        what: "index",
        digest: index,
        reason: reason.into(),
    }
}

/// Parses and checks the ztoc `zdigest` (bytes already verified against it) of `layer`, a blob
/// of `size` bytes: it must index exactly that many bytes, and every entry must be sound.
pub(crate) fn open_ztoc(
    layer: Digest,
    size: u64,
    zdigest: Digest,
    bytes: &[u8],
) -> Result<(Ztoc, LayerIndex), ImageError> {
    let bad = |e: &dyn std::fmt::Display| ImageError::Soci {
        what: "ztoc",
        digest: zdigest,
        reason: format!("layer {layer}: {e}"),
    };
    let ztoc = Ztoc::parse(bytes).map_err(|e| bad(&e))?;
    ztoc.check_layer(&layer, size).map_err(|e| bad(&e))?;
    let index = ztoc.layer_index().map_err(|e| bad(&e))?;
    Ok((ztoc, index))
}

/// The record of gzip layer `d` (`size` bytes) read through the ztoc `z`: the ztoc is
/// fetched from `r`'s repository (verified against its digest), checked against the layer and
/// stored.
pub(crate) async fn soci_layer(
    store: &Store,
    client: &RegistryClient,
    r: &Reference,
    (d, size): (Digest, u64),
    media_type: String,
    z: &ZtocRef,
) -> Result<LayerRecord, ImageError> {
    let bytes = if store.has_blob(&z.digest) {
        store.get_blob(&z.digest)?
    } else {
        client.get_blob(r, &z.digest).await?.to_vec()
    };
    let (_, index) = open_ztoc(d, size, z.digest, &bytes)?;
    store.put_blob(&z.digest, &bytes)?;
    Ok(LayerRecord {
        digest: d,
        size,
        media_type,
        format: LayerFormat::Soci,
        toc: Some(z.digest),
        toc_uncompressed: bytes.len() as u64,
        toc_offset: 0,
        content_bytes: index.content_bytes(),
    })
}

/// The ztocs of the SOCI index for `manifest` (its bytes `mbytes`), by layer digest; empty
/// when the image has no SOCI index. `layers` are the image's (digest, size) pairs.
pub(crate) async fn find_ztocs(
    client: &RegistryClient,
    r: &Reference,
    mdigest: &Digest,
    annotations: &BTreeMap<String, String>,
    layers: &[(Digest, u64)],
) -> Result<BTreeMap<Digest, ZtocRef>, ImageError> {
    let index = match annotations.get(INDEX_DIGEST) {
        Some(d) => Some(
            d.parse::<Digest>()
                .map_err(|e| soci_err(*mdigest, format!("annotation {INDEX_DIGEST} {d:?}: {e}")))?,
        ),
        None => v1_index(client, r, mdigest).await,
    };
    let Some(index) = index else {
        return Ok(BTreeMap::new());
    };
    let fetched = client
        .get_manifest_by(r, &index.to_string())
        .await
        .map_err(|e| soci_err(index, e.to_string()))?;
    let doc: SociIndex = serde_json::from_slice(&fetched.bytes)
        .map_err(|e| soci_err(index, format!("not a SOCI index: {e}")))?;
    if doc.config.media_type != ARTIFACT_V1 && doc.config.media_type != ARTIFACT_V2 {
        return Err(soci_err(
            index,
            format!(
                "config media type {:?} is not a SOCI index's",
                doc.config.media_type
            ),
        ));
    }
    if let Some(subject) = &doc.subject
        && subject.digest != mdigest.to_string()
    {
        return Err(soci_err(
            index,
            format!("indexes manifest {}, not {mdigest}", subject.digest),
        ));
    }
    ztocs_of(index, &doc, layers)
}

/// The ztoc descriptors of `doc`, each checked to name a layer of the image.
fn ztocs_of(
    index: Digest,
    doc: &SociIndex,
    layers: &[(Digest, u64)],
) -> Result<BTreeMap<Digest, ZtocRef>, ImageError> {
    let mut out = BTreeMap::new();
    for z in doc
        .layers
        .iter()
        .filter(|z| z.media_type == ZTOC_MEDIA_TYPE)
    {
        let Some(layer) = z.annotations.get(LAYER_DIGEST) else {
            continue;
        };
        let layer: Digest = layer
            .parse()
            .map_err(|e| soci_err(index, format!("layer digest {layer:?}: {e}")))?;
        if !layers.iter().any(|(d, _)| *d == layer) {
            return Err(soci_err(
                index,
                format!("names layer {layer}, which the image does not have"),
            ));
        }
        let digest = z
            .digest
            .parse()
            .map_err(|e| soci_err(index, format!("ztoc digest {:?}: {e}", z.digest)))?;
        out.insert(
            layer,
            ZtocRef {
                index,
                digest,
                size: z.size,
            },
        );
    }
    Ok(out)
}

/// The v1 SOCI index that refers to `mdigest`: through the OCI referrers API, or, where the
/// registry has none, the referrers tag schema (`sha256-<hex>`); `None` if there is none (or
/// the registry cannot say).
async fn v1_index(client: &RegistryClient, r: &Reference, mdigest: &Digest) -> Option<Digest> {
    let body = match client.referrers(r, mdigest, ARTIFACT_V1).await {
        Ok(Some(body)) => body,
        _ => {
            let tag = format!("sha256-{}", mdigest.hex());
            client.get_manifest_by(r, &tag).await.ok()?.bytes
        }
    };
    let list: Referrers = serde_json::from_slice(&body).ok()?;
    list.manifests
        .iter()
        .filter(|m| m.artifact_type.as_deref() == Some(ARTIFACT_V1))
        .find_map(|m| m.digest.parse().ok())
}
