//! containers/storage's additional layer store (podman, CRI-O) over the layer store:
//! `strata layer-store DIR` mounts, at `DIR`, the layout c/storage's overlay driver looks
//! layers up in when storage.conf says `additionallayerstores = ["DIR:ref"]`:
//!
//! ```text
//! DIR/<base64(image reference)>/<layer blob digest>/diff   a symlink to the layer's
//!                                                            <root>/layers/<chain>/diff
//! DIR/<base64(image reference)>/<layer blob digest>/info   c/storage's Layer JSON
//! DIR/<base64(image reference)>/<layer blob digest>/blob   the compressed blob (fetched
//!                                                            and checked when opened)
//! ```
//!
//! Nothing is listed: a lookup of a reference resolves it (the local image, or a lazy pull)
//! and adds the image to the layer store; its layers are then found by blob digest. c/storage
//! creates `use` in a layer directory when it starts using the layer and removes the
//! directory when it stops; both are answered `ENOENT`, which is how a store that keeps
//! every layer (this one: the layer store never drops a layer while it runs) says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_image::Images;
use strata_oci::manifest::Manifest;
use strata_oci::{Digest, Reference};
use strata_storage::store::ImageRecord;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::StorePaths;
use crate::client::Lease;
use crate::server::chain_names;

/// How images are resolved and added.
#[derive(Debug, Clone)]
pub struct AlsOptions {
    /// The platform chosen from a multi-platform image (`linux/amd64`).
    pub platform: String,
    /// What the layer store fetches ahead once an image is added (`auto`, `none`, ...).
    pub prefetch: String,
}

/// One layer of a resolved image, as the additional layer store shows it.
#[derive(Debug, Clone)]
pub struct LayerView {
    /// The compressed blob's digest (the directory's name).
    pub digest: Digest,
    /// The `info` file.
    pub info: Vec<u8>,
    /// The compressed blob's size.
    pub blob_size: u64,
    /// Where `diff` points: the layer's directory in the layer store.
    pub diff: PathBuf,
}

/// An image resolved from a reference and added to the layer store.
#[derive(Debug)]
pub struct ImageView {
    /// The image.
    pub image: ImageRecord,
    /// Its layers, bottom first.
    pub layers: Vec<LayerView>,
}

impl ImageView {
    /// The layer whose blob is `digest` (its topmost occurrence: c/storage asks by digest
    /// only, and a layer repeated above hides its lower occurrence).
    pub fn layer(&self, digest: &str) -> Option<usize> {
        self.layers
            .iter()
            .rposition(|l| l.digest.to_string() == digest)
    }
}

/// Resolves references to images served by the layer store, once per reference.
pub struct Resolver {
    images: Images,
    root: PathBuf,
    opts: AlsOptions,
    /// The connection that keeps the layer store up while this server runs.
    lease: Mutex<Option<Lease>>,
    views: Mutex<HashMap<String, Arc<OnceCell<Arc<ImageView>>>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("root", &self.root)
            .finish()
    }
}

impl Resolver {
    /// A resolver over the images of state root `root`, holding a lease on its layer store.
    ///
    /// Errors: the layer store cannot be started or reached.
    pub fn new(images: Images, root: &Path, opts: AlsOptions) -> Result<Self, crate::StoreError> {
        let lease = Lease::open(root)?;
        Ok(Self {
            images,
            root: root.to_path_buf(),
            opts,
            lease: Mutex::new(Some(lease)),
            views: Mutex::new(HashMap::new()),
        })
    }

    /// The image `reference` names, added to the layer store (resolved once; a failure is
    /// not kept, the next lookup tries again).
    pub async fn resolve(self: &Arc<Self>, reference: &str) -> Result<Arc<ImageView>, String> {
        let cell = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            views.entry(reference.to_string()).or_default().clone()
        };
        let me = self.clone();
        cell.get_or_try_init(|| async move { me.load(reference, false).await })
            .await
            .cloned()
    }

    /// `reference` pulled again (its tag may have moved since it was resolved, to an image
    /// with the layer asked for); replaces what was resolved.
    pub async fn refresh(self: &Arc<Self>, reference: &str) -> Result<Arc<ImageView>, String> {
        let view = self.load(reference, true).await?;
        let cell = Arc::new(OnceCell::new_with(Some(view.clone())));
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views.insert(reference.to_string(), cell);
        Ok(view)
    }

    async fn load(self: &Arc<Self>, reference: &str, pull: bool) -> Result<Arc<ImageView>, String> {
        let r: Reference = reference
            .parse()
            .map_err(|e| format!("reference {reference:?}: {e}"))?;
        let local = match pull {
            true => None,
            false => self.images.catalog().resolve(&r.to_string()).ok(),
        };
        let img = match local {
            Some((img, _)) => img,
            None => self
                .images
                .puller()
                .pull(&r, &self.opts.platform, false, &|_| {})
                .await
                .map_err(|e| format!("pulling {r}: {}", strata_oci::causes::with_causes(&e)))?,
        };
        let me = self.clone();
        let added = img.clone();
        tokio::task::spawn_blocking(move || me.add(&added))
            .await
            .map_err(|e| e.to_string())??;
        let view = self.view_of(img)?;
        info!(reference, manifest = %view.image.manifest, layers = view.layers.len(), "image resolved");
        Ok(Arc::new(view))
    }

    /// Adds `img` to the layer store through the lease, opening a new one if the store's
    /// server went away (a successor took the store over).
    fn add(&self, img: &ImageRecord) -> Result<(), String> {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = lease.as_mut() {
            match l.add(img, &self.opts.prefetch) {
                Ok(_) => return Ok(()),
                Err(crate::StoreError::Server(e)) => return Err(e),
                Err(e) => warn!(error = %e, "layer store lease lost; opening another"),
            }
        }
        *lease = None;
        let mut fresh = Lease::open(&self.root).map_err(|e| e.to_string())?;
        let added = fresh
            .add(img, &self.opts.prefetch)
            .map_err(|e| e.to_string());
        *lease = Some(fresh);
        added.map(|_| ())
    }

    /// Keeps the lease alive: checks it every `every`, opening another when it was lost (the
    /// store's server was replaced), so that the store does not end under podman's
    /// containers while this server runs.
    pub fn keep_lease(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(me) = me.upgrade() else { return };
                let mut lease = me.lease.lock().unwrap_or_else(|p| p.into_inner());
                if lease.as_mut().is_some_and(|l| l.status().is_ok()) {
                    continue;
                }
                *lease = None;
                match Lease::open(&me.root) {
                    Ok(l) => *lease = Some(l),
                    Err(e) => warn!(error = %e, "layer store lease lost and not renewed"),
                }
            }
        });
    }

    fn view_of(&self, image: ImageRecord) -> Result<ImageView, String> {
        let what = format!("image {}", image.manifest);
        let store = self.images.store();
        let bytes = store
            .get_blob(&image.manifest)
            .map_err(|e| format!("{what}: {e}"))?;
        let manifest =
            Manifest::from_slice(&bytes, &image.manifest.to_string()).map_err(|e| e.to_string())?;
        let config = self
            .images
            .catalog()
            .config(&image)
            .map_err(|e| format!("{what}: {e}"))?;
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if diff_ids.len() != image.layers.len() || manifest.layers.len() != image.layers.len() {
            return Err(format!(
                "{what}: {} layers but {} diff ids",
                image.layers.len(),
                diff_ids.len()
            ));
        }
        let mount = StorePaths::new(&self.root).mount;
        let layers = chain_names(&image)
            .into_iter()
            .zip(manifest.layers.iter().zip(&diff_ids))
            .map(|(chain, (desc, diff_id))| LayerView {
                digest: desc.digest,
                info: info_json(desc, diff_id),
                blob_size: desc.size,
                diff: mount.join(chain).join("diff"),
            })
            .collect();
        Ok(ImageView { image, layers })
    }

    /// A local file holding blob `digest` of `view`'s image, fetched and checked if needed.
    pub async fn blob_file(&self, view: &ImageView, digest: &Digest) -> Result<PathBuf, String> {
        self.images
            .archives()
            .local_blob(&view.image, digest)
            .await
            .map_err(|e| strata_oci::causes::with_causes(&e))
    }
}

/// The `info` file: c/storage's `Layer` JSON (`layers.go`), the fields an additional layer
/// provides: compressed digest and size, uncompressed digest (the config's diff id), the
/// uncompressed size when the descriptor says it (eStargz's annotation; c/storage counts an
/// absent one as unknown), and the compression as c/storage numbers it (`pkg/archive`).
pub fn info_json(desc: &strata_oci::manifest::Descriptor, diff_id: &Digest) -> Vec<u8> {
    let compression = match desc.media_type.as_str() {
        t if t.ends_with("gzip") => 2,
        t if t.ends_with("zstd") => 4,
        _ => 0,
    };
    let mut info = serde_json::json!({
        "compressed-diff-digest": desc.digest.to_string(),
        "compressed-size": desc.size,
        "diff-digest": diff_id.to_string(),
        "compression": compression,
    });
    let size = desc
        .annotations()
        .get("io.containers.estargz.uncompressed-size")
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(size) = size {
        info["diff-size"] = size.into();
    }
    info.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_oci::manifest::Descriptor;

    #[test]
    fn info_has_the_fields_c_storage_reads() {
        let blob = Digest::of(b"blob");
        let diff = Digest::of(b"tar");
        let desc = Descriptor::new("application/vnd.oci.image.layer.v1.tar+zstd", blob, 1234);
        let v: serde_json::Value = serde_json::from_slice(&info_json(&desc, &diff)).unwrap();
        assert_eq!(v["compressed-diff-digest"], blob.to_string());
        assert_eq!(v["compressed-size"], 1234);
        assert_eq!(v["diff-digest"], diff.to_string());
        assert_eq!(v["compression"], 4);
        assert!(v.get("diff-size").is_none());
        let gz = Descriptor::new("application/vnd.oci.image.layer.v1.tar+gzip", blob, 1)
            .with_annotations(
                [(
                    "io.containers.estargz.uncompressed-size".into(),
                    "99".into(),
                )]
                .into(),
            );
        let v: serde_json::Value = serde_json::from_slice(&info_json(&gz, &diff)).unwrap();
        assert_eq!(
            (v["compression"].clone(), v["diff-size"].clone()),
            (2.into(), 99.into())
        );
    }
}
