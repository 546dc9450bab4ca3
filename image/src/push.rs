//! `push`: uploads what the registry lacks — HEAD first for every blob; a blob strata made
//! (a committed layer, kept in the cache's blob directory) is uploaded from disk; a base layer
//! never downloaded is mounted from its source repository when that is on the same registry,
//! else streamed from the source to the target — then the config, and the manifest last.

use bytes::Bytes;

use crate::convert::{Copied, copy_blob};
use std::sync::Arc;

use strata_distribution::RegistryClient;
use strata_storage::store::Store;

use crate::catalog::source_ref;
use crate::error::{ImageError, Progress, ProgressFn};
use crate::layout::Layout;
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::store::ImageRecord;

/// Uploads stored images to registries.
#[derive(Debug, Clone)]
pub struct Pusher {
    store: Store,
    client: Arc<RegistryClient>,
    layout: Layout,
}

impl Pusher {
    /// A pusher of the images in `store` (and local blobs in `layout`) through `client`.
    pub fn new(store: Store, client: Arc<RegistryClient>, layout: Layout) -> Self {
        Self {
            store,
            client,
            layout,
        }
    }

    /// Pushes `img` as `target`; returns the manifest digest.
    pub async fn push(
        &self,
        img: &ImageRecord,
        target: &Reference,
        progress: ProgressFn<'_>,
    ) -> Result<Digest, ImageError> {
        push(self, img, target, progress).await
    }
}

async fn push(
    ctx: &Pusher,
    img: &ImageRecord,
    target: &Reference,
    progress: ProgressFn<'_>,
) -> Result<Digest, ImageError> {
    progress(Progress::Resolved {
        manifest: img.manifest,
        layers: img.layers.len(),
    });
    let source = source_ref(img).ok();
    let tmp = ctx.layout.tmp();
    std::fs::create_dir_all(&tmp).map_err(ImageError::io(&tmp))?;
    for d in &img.layers {
        if ctx.client.blob_exists(target, d).await?.is_some() {
            progress(Progress::LayerDone {
                layer: *d,
                what: "Layer already exists",
            });
            continue;
        }
        let local = ctx.layout.blob(d);
        if local.exists() {
            let size = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
            progress(Progress::LayerStart {
                layer: *d,
                size,
                what: "Pushing",
            });
            ctx.client
                .put_blob_file(target, d, &local, &|done| {
                    progress(Progress::LayerBytes { layer: *d, done })
                })
                .await?;
        } else {
            let src = source.as_ref().ok_or(ImageError::NoSource { layer: *d })?;
            progress(Progress::LayerStart {
                layer: *d,
                size: 0,
                what: "Copying from the source repository",
            });
            let how = copy_blob(
                &ctx.client,
                src,
                target,
                d,
                &strata_storage::atomic::temp_path(&tmp.join(d.hex())),
                progress,
            )
            .await?;
            if how == Copied::Mounted {
                progress(Progress::Mounted {
                    layer: *d,
                    from: src.repository.clone(),
                });
                continue;
            }
        }
        progress(Progress::LayerDone {
            layer: *d,
            what: "Pushed",
        });
    }
    let config = ctx.store.get_blob(&img.config)?;
    ctx.client
        .put_blob(target, &img.config, Bytes::from(config))
        .await?;
    let manifest = ctx.store.get_blob(&img.manifest)?;
    let media_type = strata_oci::manifest::media_type_of(&manifest);
    let digest = ctx
        .client
        .put_manifest(target, Bytes::from(manifest), &media_type)
        .await?;
    Ok(digest)
}
