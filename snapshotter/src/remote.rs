//! Remote snapshots: a layer named by containerd's labels, resolved through strata's lazy
//! pull (manifest, config, tables of contents) and served by the layer store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use strata_image::Images;
use strata_layerstore::StoreError;
use strata_layerstore::client::Lease;
use strata_oci::{Digest, Reference};
use strata_storage::store::ImageRecord;
use tracing::{debug, info, warn};

use crate::error::SnapError;
use crate::meta::Remote;

/// The name containerd commits the layer under (its chain ID).
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// The image reference (the CRI plugin's label; `ctr-remote rpull --use-containerd-labels`).
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The layer's blob digest.
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The digest of the (platform) manifest the layer is in.
pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
/// Set on the snapshots this snapshotter serves from the store (as stargz-snapshotter marks
/// its remote snapshots).
pub const REMOTE_LABEL: &str = "containerd.io/snapshot/remote";

/// A layer containerd asks for by labels.
#[derive(Debug, Clone)]
pub struct Target {
    /// `containerd.io/snapshot.ref`: the name to commit under.
    pub name: String,
    /// The image reference.
    pub image: String,
    /// The layer's digest.
    pub layer: String,
    /// The manifest's digest, when given.
    pub manifest: Option<String>,
}

/// stargz-snapshotter's own labels for the same (what `ctr-remote image rpull` sends without
/// `--use-containerd-labels`): no manifest digest among them.
const STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";

/// The remote layer `labels` name, if they name one (the CRI labels, else stargz's).
pub fn target(labels: &HashMap<String, String>) -> Option<Target> {
    // An empty name would commit a snapshot nobody can name: prepare it as an ordinary one.
    let name = labels.get(SNAPSHOT_REF).filter(|n| !n.is_empty())?.clone();
    let (image, layer, manifest) = match (labels.get(IMAGE_REF), labels.get(LAYER_DIGEST)) {
        (Some(i), Some(l)) => (i, l, labels.get(MANIFEST_DIGEST).cloned()),
        _ => (labels.get(STARGZ_REF)?, labels.get(STARGZ_DIGEST)?, None),
    };
    Some(Target {
        name,
        image: image.clone(),
        layer: layer.clone(),
        manifest,
    })
}

/// The layer store as the snapshotter uses it: one lease for the process, and the images
/// added on it.
#[derive(Debug)]
pub struct LayerSource {
    images: Images,
    lease: Arc<Mutex<Option<Lease>>>,
    added: Mutex<HashSet<Digest>>,
}

impl LayerSource {
    /// The store of `images`' state root (connected on first use).
    pub fn new(images: Images) -> Self {
        Self {
            images,
            lease: Arc::new(Mutex::new(None)),
            added: Mutex::new(HashSet::new()),
        }
    }

    /// Connects to the store now (starting it if need be): the lease keeps it up while the
    /// snapshotter runs.
    ///
    /// Errors: the store cannot be reached or started.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let (lease, root) = (
            self.lease.clone(),
            self.images.layout().root().to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            let mut held = lease.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_none() {
                *held = Some(Lease::open(&root)?);
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Protocol(e.to_string()))?
    }

    /// Resolves `t` through a lazy pull and has the store serve its image: the layer's
    /// directory and image.
    ///
    /// Errors: the reference or digests are malformed, the pull fails, the image has no such
    /// layer, or the store refuses the image.
    pub async fn resolve(&self, t: &Target) -> Result<Remote, SnapError> {
        let fail = |cause: String| SnapError::Remote {
            image: t.image.clone(),
            layer: t.layer.clone(),
            cause,
        };
        let layer: Digest = t.layer.parse().map_err(|e| fail(format!("{e}")))?;
        let image = self.pull(t).await.map_err(fail)?;
        let Some(at) = image.layers.iter().position(|d| *d == layer) else {
            return Err(fail(format!("image {} has no such layer", image.manifest)));
        };
        self.ensure(&image).await.map_err(|e| fail(e.to_string()))?;
        let chain = &strata_layerstore::server::chain_names(&image)[at];
        let dir = self
            .images
            .layout()
            .root()
            .join("layers")
            .join(chain)
            .join("diff");
        if !dir.is_dir() {
            return Err(fail(format!("the store shows no {}", dir.display())));
        }
        info!(image = %t.image, layer = %t.layer, dir = %dir.display(), "remote layer served by the store");
        Ok(Remote { dir, image })
    }

    /// The image `t` names, from strata's store or lazily pulled (by the manifest digest
    /// when containerd gave one).
    async fn pull(&self, t: &Target) -> Result<ImageRecord, String> {
        let mut r: Reference = t.image.parse().map_err(|e| format!("{e}"))?;
        if let Some(m) = &t.manifest {
            r.digest = Some(m.parse().map_err(|e| format!("{e}"))?);
            r.tag = None;
        }
        let name = r.to_string();
        if let Ok((img, _)) = self.images.catalog().resolve(&name)
            && r.digest.is_none_or(|d| d == img.manifest)
        {
            return Ok(img);
        }
        debug!(%name, "pulling lazily");
        self.images
            .puller()
            .pull(&r, "linux/amd64", false, &|_| {})
            .await
            .map_err(|e| format!("pulling {name}: {}", strata_oci::causes::with_causes(&e)))
    }

    /// Has the store serve `img`'s layers, once per image and process (again after a
    /// restart, when the store may have ended meanwhile). A lease broken by the store's
    /// restart is opened again, once.
    ///
    /// Errors: the store's.
    pub async fn ensure(&self, img: &ImageRecord) -> Result<(), StoreError> {
        if self.added_already(&img.manifest) {
            return Ok(());
        }
        let (lease, root, image) = (
            self.lease.clone(),
            self.images.layout().root().to_path_buf(),
            img.clone(),
        );
        let prefetch = self.images.prefetch.to_string();
        tokio::task::spawn_blocking(move || {
            let mut held = lease.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = held.as_mut() {
                match l.add(&image, &prefetch) {
                    Err(StoreError::Server(e)) => return Err(StoreError::Server(e)),
                    Err(e) => warn!(error = %e, "layer store lease lost; connecting again"),
                    Ok(_) => return Ok(()),
                }
            }
            let mut fresh = Lease::open(&root)?;
            fresh.add(&image, &prefetch)?;
            *held = Some(fresh);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Protocol(e.to_string()))??;
        self.added
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(img.manifest);
        Ok(())
    }

    fn added_already(&self, manifest: &Digest) -> bool {
        self.added
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(manifest)
    }

    /// The store's mount point.
    pub fn mount(&self) -> PathBuf {
        self.images.layout().root().join("layers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_cri_labels_or_stargz_labels_name_a_remote_layer() {
        let cri = labels(&[
            (SNAPSHOT_REF, "sha256:c"),
            (IMAGE_REF, "r/i:1"),
            (LAYER_DIGEST, "sha256:l"),
            (MANIFEST_DIGEST, "sha256:m"),
        ]);
        let t = target(&cri).unwrap();
        assert_eq!(
            (t.name.as_str(), t.image.as_str(), t.layer.as_str()),
            ("sha256:c", "r/i:1", "sha256:l")
        );
        assert_eq!(t.manifest.as_deref(), Some("sha256:m"));
        let stargz = labels(&[
            (SNAPSHOT_REF, "sha256:c"),
            (STARGZ_REF, "r/i:2"),
            (STARGZ_DIGEST, "sha256:k"),
        ]);
        let t = target(&stargz).unwrap();
        assert_eq!((t.image.as_str(), t.layer.as_str()), ("r/i:2", "sha256:k"));
        assert!(t.manifest.is_none());
        // containerd's own unpack sends only the chain ID: an ordinary snapshot.
        assert!(target(&labels(&[(SNAPSHOT_REF, "sha256:c")])).is_none());
        assert!(target(&labels(&[(IMAGE_REF, "r/i:1"), (LAYER_DIGEST, "sha256:l")])).is_none());
    }
}
