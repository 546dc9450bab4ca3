//! Typed image manifests, indexes and descriptors, as strata writes and edits them (reading
//! a registry's manifest for a pull goes through `oci-spec`). Annotations are ordered maps, so
//! the same manifest always has the same bytes and digest; fields strata does not know are
//! kept as read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Errors reading a manifest or index.
#[derive(Debug, thiserror::Error)]
#[error("manifest {what}")]
pub struct ManifestError {
    /// Which manifest (its digest, or where it came from).
    pub what: String,
    /// The cause.
    #[source]
    pub source: serde_json::Error,
}

/// A descriptor: what a manifest or index says about one blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Where else the blob can be fetched (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Annotations (TOC position of lazy layers, image names in an index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Fields strata does not edit (`platform`, `artifactType`, ...), as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Descriptor {
    /// A descriptor of `size` bytes at `digest`.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: None,
            annotations: None,
            extra: Map::new(),
        }
    }

    /// The same with `annotations` (none when empty).
    pub fn with_annotations(mut self, annotations: BTreeMap<String, String>) -> Self {
        self.annotations = (!annotations.is_empty()).then_some(annotations);
        self
    }

    /// The annotations (empty when there are none).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.annotations.clone().unwrap_or_default()
    }
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`] or docker's v2 schema 2 type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations (strata's prefetch profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Fields strata does not edit (`subject`, `artifactType`, ...), as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Manifest {
    /// An OCI manifest of `config` and `layers`.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            config,
            layers,
            annotations: None,
            extra: Map::new(),
        }
    }

    /// Parses a manifest; `what` names it in errors.
    pub fn from_slice(bytes: &[u8], what: &str) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError {
            what: what.to_string(),
            source,
        })
    }

    /// The media type to send it with (OCI when the manifest names none).
    pub fn media_type_or_oci(&self) -> &str {
        self.media_type.as_deref().unwrap_or(MANIFEST_MEDIA_TYPE)
    }

    /// The manifest's JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }
}

/// The media type a stored manifest says it has, OCI's when it says none or is not JSON.
pub fn media_type_of(manifest: &[u8]) -> String {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Typed {
        media_type: Option<String>,
    }
    serde_json::from_slice::<Typed>(manifest)
        .ok()
        .and_then(|t| t.media_type)
        .unwrap_or_else(|| MANIFEST_MEDIA_TYPE.into())
}

/// An image index (and the `index.json` of an OCI layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// [`INDEX_MEDIA_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Fields strata does not edit, as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Index {
    /// An OCI index of `manifests`.
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(INDEX_MEDIA_TYPE.into()),
            manifests,
            extra: Map::new(),
        }
    }

    /// Parses an index; `what` names it in errors.
    pub fn from_slice(bytes: &[u8], what: &str) -> Result<Self, ManifestError> {
        serde_json::from_slice(bytes).map_err(|source| ManifestError {
            what: what.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_keeps_what_strata_does_not_edit() {
        let d = Digest::of(b"c");
        let text = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"m","digest":"{d}","size":1}},"layers":[{{"mediaType":"l","digest":"{d}","size":2,"platform":{{"os":"linux"}}}}],"subject":{{"x":1}}}}"#
        );
        let mut m = Manifest::from_slice(text.as_bytes(), "test").unwrap();
        assert_eq!(m.media_type_or_oci(), MANIFEST_MEDIA_TYPE);
        m.annotations = Some([("a".to_string(), "b".to_string())].into());
        let v: Value = serde_json::from_slice(&m.to_vec()).unwrap();
        assert_eq!(v["subject"]["x"], 1);
        assert_eq!(v["layers"][0]["platform"]["os"], "linux");
        assert_eq!(v["annotations"]["a"], "b");
        assert_eq!(media_type_of(b"{}"), MANIFEST_MEDIA_TYPE);
        assert!(Manifest::from_slice(b"[]", "x").is_err());
    }
}
