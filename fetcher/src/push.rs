//! `push`: uploads what the registry lacks — HEAD first for every blob; a blob strata made
//! (a committed layer, kept in the cache's blob directory) is uploaded from disk; a base layer
//! never downloaded is mounted from its source repository when that is on the same registry,
//! else streamed from the source to the target — then the config, and the manifest last.

use bytes::Bytes;

use crate::convert::{Copied, copy_blob};
use crate::digest::Digest;
use crate::image::{Context, ImageError, Progress, ProgressFn};
use crate::reference::Reference;
use crate::store::ImageRecord;

/// Pushes `img` as `target`; returns the manifest digest.
pub async fn push(
    ctx: &Context,
    img: &ImageRecord,
    target: &Reference,
    progress: ProgressFn<'_>,
) -> Result<Digest, ImageError> {
    progress(Progress::Resolved {
        manifest: img.manifest,
        layers: img.layers.len(),
    });
    let source = ctx.source_ref(img).ok();
    let tmp = ctx.root.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| ImageError::Layer {
        layer: img.manifest,
        reason: e.to_string(),
    })?;
    for d in &img.layers {
        if ctx.client.blob_exists(target, d).await?.is_some() {
            progress(Progress::LayerDone {
                layer: *d,
                what: "Layer already exists",
            });
            continue;
        }
        let local = ctx.root.join("cache/blobs").join(d.hex());
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
            let src = source.as_ref().ok_or_else(|| ImageError::Layer {
                layer: *d,
                reason: "layer is neither local nor in a known repository".into(),
            })?;
            progress(Progress::LayerStart {
                layer: *d,
                size: 0,
                what: "Copying from the source repository",
            });
            let how = copy_blob(
                ctx,
                src,
                target,
                d,
                &crate::atomic::temp_path(&tmp.join(d.hex())),
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
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let digest = ctx
        .client
        .put_manifest(target, Bytes::from(manifest), &media_type)
        .await?;
    Ok(digest)
}
