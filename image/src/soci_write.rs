//! `strata index`: builds a SOCI index (v2) for a gzip image and pushes it, as
//! `soci convert` does: a ztoc for each gzip layer of at least the minimum size, the SOCI index
//! manifest naming them, the image manifest again with the `com.amazon.soci.index-digest`
//! annotation (as an OCI manifest), and an image index holding both, pushed under the tag.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use strata_distribution::RegistryClient;
use strata_formats::soci::build_ztoc;
use strata_formats::ztoc::Ztoc;
use strata_oci::digest::Digest;
use strata_oci::manifest::{
    CONFIG_MEDIA_TYPE, Descriptor, INDEX_MEDIA_TYPE, Index, MANIFEST_MEDIA_TYPE, Manifest,
};
use strata_oci::reference::Reference;
use strata_storage::lazy::feed_blocking;
use strata_storage::plain::HashingReader;
use strata_storage::store::Store;

use crate::error::{ImageError, Progress, ProgressFn, feed_error};
use crate::pull::resolve_manifest;
use crate::soci::{
    ARTIFACT_V2, BUILD_TOOL, EMPTY_JSON, IMAGE_MANIFEST_DIGEST, INDEX_DIGEST, LAYER_DIGEST,
    LAYER_MEDIA_TYPE, SPAN_SIZE, ZTOC_MEDIA_TYPE,
};

/// What `strata index` did.
#[derive(Debug, Clone)]
pub struct Indexed {
    /// The SOCI index manifest.
    pub index: Digest,
    /// The image manifest with its annotation.
    pub manifest: Digest,
    /// The image index pushed under the tag.
    pub image_index: Digest,
    /// Layers that got a ztoc.
    pub ztocs: usize,
}

/// Builds and pushes SOCI indexes.
#[derive(Debug, Clone)]
pub struct SociWriter {
    client: Arc<RegistryClient>,
    store: Store,
}

impl SociWriter {
    /// A writer talking to registries through `client`, using the local ztocs of `store`.
    pub fn new(client: Arc<RegistryClient>, store: Store) -> Self {
        Self { client, store }
    }

    /// Indexes image `r` (the manifest for `platform`): a ztoc with spans of `span_size`
    /// for every gzip layer of at least `min_layer_size` bytes; pushes the result under `r`.
    pub async fn index(
        &self,
        r: &Reference,
        platform: &str,
        min_layer_size: u64,
        span_size: u64,
        progress: ProgressFn<'_>,
    ) -> Result<Indexed, ImageError> {
        let (_, mdigest, mbytes, prior) = resolve_manifest(&self.client, r, platform).await?;
        let mut manifest = Manifest::from_slice(&mbytes, &mdigest.to_string())?;
        let mut ztocs = Vec::new();
        for layer in &manifest.layers {
            if !layer.media_type.ends_with("gzip") || layer.size < min_layer_size {
                continue;
            }
            ztocs.push(self.ztoc_for(r, layer, span_size, progress).await?);
        }
        if ztocs.is_empty() {
            return Err(ImageError::Manifest {
                what: r.to_string(),
                problem: format!("no gzip layer of at least {min_layer_size} bytes to index"),
            });
        }
        let count = ztocs.len();
        let (index, index_bytes) = self.push_index(r, ztocs).await?;
        // As soci convert: an OCI manifest (and config type) carrying the index's digest.
        manifest.media_type = Some(MANIFEST_MEDIA_TYPE.into());
        manifest.config.media_type = CONFIG_MEDIA_TYPE.into();
        manifest
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(INDEX_DIGEST.into(), index.to_string());
        let mbytes = Bytes::from(manifest.to_vec());
        let by_digest = |d: &Digest| {
            let mut at = r.clone();
            at.tag = None;
            at.digest = Some(*d);
            at
        };
        let new_manifest = Digest::of(&mbytes);
        self.client
            .put_manifest(
                &by_digest(&new_manifest),
                mbytes.clone(),
                MANIFEST_MEDIA_TYPE,
            )
            .await?;
        let mut image_index =
            image_index(platform, new_manifest, mbytes.len(), index, &index_bytes);
        if let Some((_, bytes)) = &prior {
            let prior = Index::from_slice(bytes, &r.to_string())?;
            image_index = merged_index(prior, mdigest, image_index);
        }
        let bytes =
            Bytes::from(
                serde_json::to_vec(&image_index).map_err(|e| ImageError::Manifest {
                    what: r.to_string(),
                    problem: e.to_string(),
                })?,
            );
        let pushed = self.client.put_manifest(r, bytes, INDEX_MEDIA_TYPE).await?;
        Ok(Indexed {
            index,
            manifest: new_manifest,
            image_index: pushed,
            ztocs: count,
        })
    }

    /// The ztoc of one layer, with spans of `span_size`: the one built here while the layer
    /// streamed, if there is one with that span size, else built by streaming the layer
    /// (checked against its digest). Pushes it; returns its descriptor.
    async fn ztoc_for(
        &self,
        r: &Reference,
        layer: &Descriptor,
        span_size: u64,
        progress: ProgressFn<'_>,
    ) -> Result<Descriptor, ImageError> {
        let d = layer.digest;
        progress(Progress::LayerStart {
            layer: d,
            size: layer.size,
            what: "Indexing",
        });
        let ztoc = match crate::soci_local::local_ztoc(&self.store, &d, layer.size) {
            Some((_, z)) if z.zinfo.span_size == span_size => z,
            _ => self.stream_ztoc(r, d, span_size, progress).await?,
        };
        let bytes = Bytes::from(ztoc.to_bytes());
        let zdigest = Digest::of(&bytes);
        let size = bytes.len() as u64;
        self.client.put_blob(r, &zdigest, bytes).await?;
        progress(Progress::LayerDone {
            layer: d,
            what: "Indexed",
        });
        let annotations = BTreeMap::from([
            (LAYER_DIGEST.to_string(), d.to_string()),
            (LAYER_MEDIA_TYPE.to_string(), layer.media_type.clone()),
            (SPAN_SIZE.to_string(), span_size.to_string()),
        ]);
        Ok(Descriptor::new(ZTOC_MEDIA_TYPE, zdigest, size).with_annotations(annotations))
    }

    /// Builds the ztoc of layer `d` in one pass over its stream, which must hash to `d`.
    async fn stream_ztoc(
        &self,
        r: &Reference,
        d: Digest,
        span_size: u64,
        progress: ProgressFn<'_>,
    ) -> Result<Ztoc, ImageError> {
        let body = self.client.blob_stream(r, &d).await?;
        let mut done = 0u64;
        let (built, actual) = feed_blocking(
            body,
            |n| {
                done += n;
                progress(Progress::LayerBytes { layer: d, done });
            },
            move |reader| {
                let mut hashing = HashingReader::new(reader);
                let built = build_ztoc(&mut hashing, span_size);
                let digest = hashing.finish().map(|(digest, _)| digest);
                (built, digest)
            },
        )
        .await
        .map_err(feed_error(d))?;
        let actual = actual.map_err(|source| ImageError::LayerIo { layer: d, source })?;
        if actual != d {
            return Err(ImageError::Mismatch { layer: d, actual });
        }
        built.map_err(|e| ImageError::Soci {
            what: "ztoc",
            digest: d,
            reason: format!("building the ztoc of layer {d}: {e}"),
        })
    }

    /// Pushes the empty config and the SOCI index manifest naming `ztocs`.
    async fn push_index(
        &self,
        r: &Reference,
        ztocs: Vec<Descriptor>,
    ) -> Result<(Digest, Bytes), ImageError> {
        let empty: Digest = EMPTY_JSON.parse().map_err(|_| ImageError::Manifest {
            what: "soci index".into(),
            problem: "bad empty config digest".into(),
        })?;
        self.client
            .put_blob(r, &empty, Bytes::from_static(b"{}"))
            .await?;
        let mut index = Manifest::new(Descriptor::new(ARTIFACT_V2, empty, 2), ztocs);
        index.annotations = Some(BTreeMap::from([(
            BUILD_TOOL.to_string(),
            format!("strata {}", env!("CARGO_PKG_VERSION")),
        )]));
        let bytes = Bytes::from(index.to_vec());
        let digest = Digest::of(&bytes);
        let mut at = r.clone();
        at.tag = None;
        at.digest = Some(digest);
        self.client
            .put_manifest(&at, bytes.clone(), MANIFEST_MEDIA_TYPE)
            .await?;
        Ok((digest, bytes))
    }
}

/// The image index of a SOCI v2 image: the image manifest first (readers that pick the first
/// match for a platform take it), then the SOCI index, typed by its artifact type.
fn image_index(
    platform: &str,
    manifest: Digest,
    manifest_len: usize,
    index: Digest,
    index_bytes: &[u8],
) -> Index {
    let p = strata_oci::platform::Platform::parse(platform).ok();
    let platform: Value = match &p {
        Some(p) => json!({"os": p.os, "architecture": p.arch}),
        None => json!({"os": "linux", "architecture": "amd64"}),
    };
    let mut m = Descriptor::new(MANIFEST_MEDIA_TYPE, manifest, manifest_len as u64);
    m.extra.insert("platform".into(), platform.clone());
    let mut s =
        Descriptor::new(MANIFEST_MEDIA_TYPE, index, index_bytes.len() as u64).with_annotations(
            BTreeMap::from([(IMAGE_MANIFEST_DIGEST.to_string(), manifest.to_string())]),
        );
    s.extra.insert("artifactType".into(), ARTIFACT_V2.into());
    s.extra.insert("platform".into(), platform);
    let mut out = Index::new(vec![m, s]);
    out.media_type = Some(INDEX_MEDIA_TYPE.into());
    out
}

/// The tag's image index `prior` with its entry for manifest `old` (and any SOCI index of it)
/// replaced by `fresh`'s two entries (the annotated manifest, then its SOCI index), each keeping
/// the old entry's platform and the manifest its annotations: indexing one platform of a
/// multi-platform tag keeps the others, and the index's own annotations, as they were.
fn merged_index(mut prior: Index, old: Digest, fresh: Index) -> Index {
    let at = prior.manifests.iter().position(|d| d.digest == old);
    let replaced = at.map(|i| prior.manifests[i].clone());
    let of_old = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get(IMAGE_MANIFEST_DIGEST))
            .is_some_and(|m| *m == old.to_string())
    };
    prior.manifests.retain(|d| d.digest != old && !of_old(d));
    let mut fresh = fresh.manifests;
    if let Some(r) = replaced {
        for d in &mut fresh {
            if let Some(p) = r.extra.get("platform") {
                d.extra.insert("platform".into(), p.clone());
            }
        }
        if let (Some(m), Some(a)) = (fresh.first_mut(), r.annotations) {
            m.annotations.get_or_insert_with(BTreeMap::new).extend(a);
        }
    }
    let at = at.unwrap_or(0).min(prior.manifests.len());
    prior.manifests.splice(at..at, fresh);
    prior.media_type = Some(INDEX_MEDIA_TYPE.into());
    prior
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(d: &[u8], arch: &str) -> Descriptor {
        let mut x = Descriptor::new(MANIFEST_MEDIA_TYPE, Digest::of(d), 10);
        x.extra.insert(
            "platform".into(),
            json!({"os": "linux", "architecture": arch}),
        );
        x
    }

    /// Indexes `old` of `prior` as manifest `new` with SOCI index `soci`; the names of the
    /// resulting entries, in order.
    fn index_into(prior: Index, old: &[u8], new: &[u8], soci: &[u8]) -> (Index, Vec<Digest>) {
        let fresh = image_index("linux/amd64", Digest::of(new), 20, Digest::of(soci), b"{}");
        let out = merged_index(prior, Digest::of(old), fresh);
        let digests = out.manifests.iter().map(|d| d.digest).collect();
        (out, digests)
    }

    #[test]
    fn indexing_one_platform_keeps_the_others_and_the_annotations() {
        let mut prior = Index::new(vec![desc(b"amd64", "amd64"), desc(b"arm64", "arm64")]);
        prior.extra.insert("annotations".into(), json!({"k": "v"}));
        let names = |n: [&[u8]; 3]| n.map(Digest::of).to_vec();
        let (out, got) = index_into(prior, b"amd64", b"new", b"soci");
        assert_eq!(got, names([b"new", b"soci", b"arm64"]));
        assert_eq!(out.extra["annotations"], json!({"k": "v"}));
        assert_eq!(out.manifests[2].extra["platform"]["architecture"], "arm64");
        // Indexing it again replaces the SOCI index of the manifest it replaces.
        let (_, got) = index_into(out, b"new", b"newer", b"soci2");
        assert_eq!(got, names([b"newer", b"soci2", b"arm64"]));
    }
}
