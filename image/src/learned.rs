//! Learned profiles: a prefetch profile recorded by one cold run and published beside the
//! image as an OCI referrer (an artifact manifest whose `subject` is the image manifest), so
//! that every later cold start anywhere fetches the same chunks up front — without rewriting
//! the image (its digest, tags and signatures stay).
//!
//! The artifact (OCI image spec v1.1, "Guidelines for artifact usage"): `artifactType`
//! [`ARTIFACT`], the empty config (`{}`), one layer holding the profile's JSON
//! ([`strata_formats::profile`]), `subject` = the image manifest's descriptor. It is found
//! through the referrers API (distribution spec v1.1 `GET /v2/<name>/referrers/<digest>`) or,
//! on registries without it (the CNCF distribution registry 2.x), the referrers tag schema: an
//! index tagged `sha256-<hex of the image manifest>` listing the referrers, which publishing
//! updates (the newest profile first).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::json;
use tracing::{debug, info};

use strata_distribution::RegistryClient;
use strata_formats::profile::Profile;
use strata_oci::Reference;
use strata_oci::digest::Digest;
use strata_oci::manifest::{Descriptor, INDEX_MEDIA_TYPE, Index, MANIFEST_MEDIA_TYPE, Manifest};

use crate::error::ImageError;
use crate::soci::EMPTY_JSON;

/// Artifact type (and layer media type) of a learned profile.
pub const ARTIFACT: &str = "application/vnd.strata.profile.v1+json";
/// Media type of the empty config.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Largest profile read from a registry (a profile of 1 Mi chunks is ~100 MB of JSON; the
/// ones worth replaying are far smaller).
const MAX_PROFILE_BYTES: u64 = 16 << 20;

/// The referrers tag of manifest `subject`, for registries without the referrers API.
fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

fn at(repo: &Reference, tag: Option<String>, digest: Option<Digest>) -> Reference {
    let mut r = repo.clone();
    r.tag = tag;
    r.digest = digest;
    r
}

/// Publishes `profile` as a referrer of the image manifest `subject` (`subject_bytes`, of
/// media type `subject_type`) in `repo`'s repository. Returns the artifact's digest.
///
/// Errors: any registry error of the uploads (the image itself is never changed).
pub async fn publish(
    client: &RegistryClient,
    repo: &Reference,
    subject: &Digest,
    subject_bytes: &[u8],
    subject_type: &str,
    profile: &Profile,
) -> Result<Digest, ImageError> {
    let empty: Digest = EMPTY_JSON.parse().map_err(|_| ImageError::Manifest {
        what: "learned profile".into(),
        problem: "bad empty config digest".into(),
    })?;
    let blobs = at(repo, None, None);
    client
        .put_blob(&blobs, &empty, Bytes::from_static(b"{}"))
        .await?;
    let body = Bytes::from(profile.encode());
    let body_digest = Digest::of(&body);
    client.put_blob(&blobs, &body_digest, body.clone()).await?;
    let mut m = Manifest::new(
        Descriptor::new(EMPTY_MEDIA_TYPE, empty, 2),
        vec![Descriptor::new(ARTIFACT, body_digest, body.len() as u64)],
    );
    m.extra.insert("artifactType".into(), ARTIFACT.into());
    m.extra.insert(
        "subject".into(),
        json!({"mediaType": subject_type, "digest": subject.to_string(), "size": subject_bytes.len()}),
    );
    m.annotations = Some(BTreeMap::from([(
        "org.opencontainers.image.created".to_string(),
        strata_oci::timefmt::now_rfc3339(),
    )]));
    let bytes = Bytes::from(m.to_vec());
    let digest = Digest::of(&bytes);
    client
        .put_manifest(
            &at(repo, None, Some(digest)),
            bytes.clone(),
            MANIFEST_MEDIA_TYPE,
        )
        .await?;
    update_fallback(client, repo, subject, digest, bytes.len() as u64).await?;
    info!(image = %subject, artifact = %digest, files = profile.files.len(), "learned profile published");
    Ok(digest)
}

/// Puts the artifact first in the referrers tag's index (created if absent), dropping
/// older learned profiles of the same image.
async fn update_fallback(
    client: &RegistryClient,
    repo: &Reference,
    subject: &Digest,
    artifact: Digest,
    size: u64,
) -> Result<(), ImageError> {
    let tag = fallback_tag(subject);
    let mut index = match client.get_manifest_by(repo, &tag).await {
        Ok(m) => Index::from_slice(&m.bytes, &tag).unwrap_or_else(|_| Index::new(Vec::new())),
        Err(_) => Index::new(Vec::new()),
    };
    index
        .manifests
        .retain(|d| d.extra.get("artifactType").and_then(|v| v.as_str()) != Some(ARTIFACT));
    let mut d = Descriptor::new(MANIFEST_MEDIA_TYPE, artifact, size);
    d.extra.insert("artifactType".into(), ARTIFACT.into());
    index.manifests.insert(0, d);
    index.media_type = Some(INDEX_MEDIA_TYPE.into());
    let bytes = Bytes::from(
        serde_json::to_vec(&index).map_err(|e| ImageError::Manifest {
            what: tag.clone(),
            problem: e.to_string(),
        })?,
    );
    client
        .put_manifest(&at(repo, Some(tag), None), bytes, INDEX_MEDIA_TYPE)
        .await?;
    Ok(())
}

/// The newest learned profile published for image manifest `subject` (whose layer blobs have
/// `sizes` bytes) in `repo`'s repository, verified (artifact and profile by digest) and checked
/// against the image (layer indexes, every chunk inside its blob); `None` when there is none
/// or it cannot be used (an image without one is the common case: logged at debug level; a
/// profile that does not fit the image is a warning).
pub async fn find(
    client: &RegistryClient,
    repo: &Reference,
    subject: &Digest,
    sizes: &[u64],
) -> Option<Profile> {
    let list = match client.referrers(repo, subject, ARTIFACT).await {
        Ok(Some(body)) => body,
        _ => {
            client
                .get_manifest_by(repo, &fallback_tag(subject))
                .await
                .ok()?
                .bytes
        }
    };
    let index = Index::from_slice(&list, "referrers").ok()?;
    let artifact = index
        .manifests
        .iter()
        .find(|d| d.extra.get("artifactType").and_then(|v| v.as_str()) == Some(ARTIFACT))?;
    let m = client
        .get_manifest_by(repo, &artifact.digest.to_string())
        .await
        .ok()?;
    let m = Manifest::from_slice(&m.bytes, &artifact.digest.to_string()).ok()?;
    let names_subject = m
        .extra
        .get("subject")
        .and_then(|s| s.get("digest"))
        .and_then(|d| d.as_str())
        == Some(subject.to_string().as_str());
    let layer = m.layers.first().filter(|l| l.media_type == ARTIFACT)?;
    if !names_subject || layer.size > MAX_PROFILE_BYTES {
        debug!(artifact = %artifact.digest, "learned profile artifact is not for this image");
        return None;
    }
    let body = client.get_blob(repo, &layer.digest).await.ok()?;
    match Profile::parse(&String::from_utf8_lossy(&body), sizes.len()) {
        Ok(p) if within(&p, sizes) => Some(p),
        Ok(_) => {
            tracing::warn!(artifact = %artifact.digest, "ignoring a learned profile with chunks outside the image's layers");
            None
        }
        Err(e) => {
            tracing::warn!(artifact = %artifact.digest, error = %e, "ignoring a learned profile");
            None
        }
    }
}

/// Looks for a learned profile of image manifest `subject` (its layer blobs and their sizes)
/// in the background; when one is found it is kept in `store` (so mounts of the image replay
/// it), the returned receiver is told, and its chunks are prefetched through `prefetcher` if
/// one is given. The receiver gets `false` at once when there is none.
pub(crate) fn start(
    client: std::sync::Arc<RegistryClient>,
    store: strata_storage::store::Store,
    prefetcher: Option<crate::prefetch::Prefetcher>,
    repo: Reference,
    (subject, layers, sizes): (Digest, Vec<Digest>, Vec<u64>),
) -> tokio::sync::oneshot::Receiver<bool> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Some(profile) = find(&client, &repo, &subject, &sizes).await else {
            let _ = tx.send(false);
            return;
        };
        let kept = store.put_learned_profile(&subject, profile.encode().as_bytes());
        let _ = tx.send(kept.is_ok());
        if let Some(prefetcher) = prefetcher {
            info!(image = %subject, files = profile.files.len(), "replaying a learned profile");
            prefetcher.prefetch_profile(&repo, &layers, &profile).await;
        }
    });
    rx
}

/// Whether every chunk of `p` lies inside its layer's blob (`sizes`, in bytes) and the
/// profile asks for no more than the whole image: a learned profile is not covered by the
/// image's digest (anyone who can push to the repository can publish one), so its ranges are
/// checked before a byte is asked for.
fn within(p: &Profile, sizes: &[u64]) -> bool {
    let inside = p.files.iter().all(|f| {
        sizes
            .get(f.layer)
            .is_some_and(|&size| f.chunks.iter().all(|&(_, end, _, _)| end <= size))
    });
    inside && p.bytes() <= sizes.iter().sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_formats::profile::ProfileFile;

    fn profile(layer: usize, start: u64, end: u64) -> Profile {
        Profile {
            files: vec![ProfileFile {
                path: "f".into(),
                layer,
                chunks: vec![(start, end, 10, Digest::of(b"x"))],
            }],
        }
    }

    #[test]
    fn a_learned_profile_must_fit_inside_the_image_layers() {
        let sizes = [1000, 5000];
        assert!(within(&profile(1, 4000, 5000), &sizes));
        assert!(!within(&profile(1, 4000, 5001), &sizes), "past its blob");
        assert!(!within(&profile(0, 0, 1001), &sizes), "past layer 0");
        assert!(!within(&profile(2, 0, 10), &sizes), "no such layer");
        // Each chunk inside, but more than the whole image in all.
        let mut many = profile(1, 0, 5000);
        many.files[0].chunks = vec![(0, 5000, 10, Digest::of(b"x")); 2];
        assert!(!within(&many, &sizes), "more than the image");
    }
}
