//! `convert`: rewrites any image into the native lazy format, registry to registry. Each layer is
//! streamed from the source, checked against its digest, decompressed and rewritten as
//! zstd:chunked; the uncompressed tar is byte-identical, so the config and its diff_ids carry
//! over unchanged. Layers that are already zstd:chunked are copied as they are.
//! With [`Format::Estargz`] layers become eStargz instead; its tar gains a landmark and the TOC
//! entry, so the config is rewritten with the new diff_ids.

use bytes::Bytes;
use futures_util::TryStreamExt;

use std::sync::Arc;

use strata_distribution::RegistryClient;

use crate::error::{ImageError, Progress, ProgressFn, digest_of, feed_error};
use crate::layout::Layout;
use crate::pull::resolve_manifest;
use std::collections::BTreeMap;
use strata_formats::chunked::write_chunked;
use strata_formats::estargz_write::write_estargz;
use strata_formats::toc::TocAnnotations;

use strata_oci::config::ImageConfig;
use strata_oci::digest::Digest;
use strata_oci::manifest::{CONFIG_MEDIA_TYPE, Descriptor, MANIFEST_MEDIA_TYPE, Manifest};
use strata_oci::reference::Reference;
use strata_storage::lazy::feed_blocking;
use strata_storage::plain::{HashingReader, decompress, sniff};
use strata_storage::store::Compression;

/// Media type of native lazy layers (an ordinary zstd layer to every other client).
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Media type of eStargz layers (an ordinary gzip layer to every other client).
pub const ESTARGZ_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The lazy format `convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// containers/storage's zstd:chunked (strata's native format).
    #[default]
    ZstdChunked,
    /// stargz-snapshotter's eStargz.
    Estargz,
}

/// A layer as rewritten.
struct Rewritten {
    digest: Digest,
    size: u64,
    annotations: BTreeMap<String, String>,
    /// The new diff_id, when the uncompressed tar changed (eStargz).
    diff_id: Option<Digest>,
}

/// Rewrites images registry to registry into a lazy format.
#[derive(Debug, Clone)]
pub struct Converter {
    client: Arc<RegistryClient>,
    layout: Layout,
}

impl Converter {
    /// A converter talking to registries through `client`, with scratch space in `layout`.
    pub fn new(client: Arc<RegistryClient>, layout: Layout) -> Self {
        Self { client, layout }
    }

    /// Converts `src` into `dst`; returns the new manifest's digest.
    pub async fn convert(
        &self,
        src: &Reference,
        dst: &Reference,
        platform: &str,
        format: Format,
        progress: ProgressFn<'_>,
    ) -> Result<Digest, ImageError> {
        convert(
            &self.client,
            &self.layout,
            src,
            dst,
            platform,
            format,
            progress,
        )
        .await
    }
}

/// One conversion under way: where from, where to, into what, and its scratch directory.
struct Job<'a> {
    client: &'a RegistryClient,
    src: &'a Reference,
    dst: &'a Reference,
    format: Format,
    tmp: std::path::PathBuf,
    progress: ProgressFn<'a>,
}

async fn convert(
    client: &RegistryClient,
    layout: &Layout,
    src: &Reference,
    dst: &Reference,
    platform: &str,
    format: Format,
    progress: ProgressFn<'_>,
) -> Result<Digest, ImageError> {
    let (manifest, mdigest, _, _) = resolve_manifest(client, src, platform).await?;
    progress(Progress::Resolved {
        manifest: mdigest,
        layers: manifest.layers().len(),
    });
    let tmp = tempdir_in(&layout.tmp()).map_err(ImageError::io(layout.tmp()))?;
    let job = Job {
        client,
        src,
        dst,
        format,
        tmp,
        progress,
    };
    let mut layers = Vec::new();
    let mut new_diff_ids: Vec<Option<Digest>> = Vec::new();
    for desc in manifest.layers() {
        let (layer, diff_id) = job.layer(desc).await?;
        layers.push(layer);
        new_diff_ids.push(diff_id);
    }
    let mut config = digest_of(manifest.config())?;
    let mut config_bytes = client.get_blob(src, &config).await?;
    if new_diff_ids.iter().any(Option::is_some) {
        let mut parsed = ImageConfig::from_slice(&config_bytes, &config.to_string())?;
        parsed.replace_diff_ids(&new_diff_ids)?;
        config_bytes = Bytes::from(parsed.to_vec());
        config = Digest::of(&config_bytes);
    }
    client.put_blob(dst, &config, config_bytes.clone()).await?;
    let config_desc = Descriptor::new(CONFIG_MEDIA_TYPE, config, config_bytes.len() as u64);
    let bytes = Bytes::from(Manifest::new(config_desc, layers).to_vec());
    let digest = client.put_manifest(dst, bytes, MANIFEST_MEDIA_TYPE).await?;
    let _ = std::fs::remove_dir_all(&job.tmp);
    Ok(digest)
}

impl Job<'_> {
    /// Copies or rewrites one layer into the target; returns its new descriptor and, when
    /// its uncompressed tar changed (eStargz), its new diff_id.
    async fn layer(
        &self,
        desc: &oci_spec::image::Descriptor,
    ) -> Result<(Descriptor, Option<Digest>), ImageError> {
        let (client, progress) = (self.client, self.progress);
        let d = digest_of(desc)?;
        let ann: BTreeMap<String, String> = desc
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let native = match self.format {
            Format::ZstdChunked => {
                matches!(TocAnnotations::parse(&ann), Ok(Some(t)) if t.toc_digest.is_some())
            }
            Format::Estargz => ann.contains_key(strata_formats::estargz::TOC_DIGEST_ANNOTATION),
        };
        if native {
            let tmp = self.tmp.join(d.hex());
            copy_blob(client, self.src, self.dst, &d, &tmp, progress).await?;
            progress(Progress::LayerDone {
                layer: d,
                what: "Already native",
            });
            let mut out = Descriptor::new(desc.media_type().as_ref(), d, desc.size());
            out.annotations = Some(ann);
            return Ok((out, None));
        }
        progress(Progress::LayerStart {
            layer: d,
            size: desc.size(),
            what: "Converting",
        });
        let mt = desc.media_type().to_string();
        let compression = if mt.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if mt.ends_with("zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        };
        let out_path = self.tmp.join(format!("{}.zst", d.hex()));
        let written = rewrite_layer(
            client,
            self.src,
            d,
            compression,
            self.format,
            &out_path,
            progress,
        )
        .await?;
        client
            .put_blob_file(self.dst, &written.digest, &out_path, &|done| {
                progress(Progress::LayerBytes { layer: d, done })
            })
            .await?;
        let _ = std::fs::remove_file(&out_path);
        progress(Progress::LayerDone {
            layer: d,
            what: "Converted",
        });
        let media_type = match self.format {
            Format::Estargz => ESTARGZ_MEDIA_TYPE,
            Format::ZstdChunked => LAYER_MEDIA_TYPE,
        };
        let mut out = Descriptor::new(media_type, written.digest, written.size);
        out.annotations = Some(written.annotations);
        Ok((out, written.diff_id))
    }
}

fn tempdir_in(parent: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(parent)?;
    let p = strata_storage::atomic::temp_path(&parent.join("convert"));
    std::fs::create_dir(&p)?;
    Ok(p)
}

pub(crate) async fn copy_blob(
    client: &RegistryClient,
    src: &Reference,
    dst: &Reference,
    d: &Digest,
    tmp: &std::path::Path,
    progress: ProgressFn<'_>,
) -> Result<Copied, ImageError> {
    if client.blob_exists(dst, d).await?.is_some() {
        return Ok(Copied::Present);
    }
    if src.registry == dst.registry && client.mount_blob(dst, d, &src.repository).await? {
        return Ok(Copied::Mounted);
    }
    let mut body = Box::pin(client.blob_stream(src, d).await?);
    let mut file = std::fs::File::create(tmp).map_err(|e| io_fail(*d, e))?;
    let mut hasher = strata_oci::digest::Hasher::default();
    let mut done = 0u64;
    while let Some(chunk) = body.try_next().await? {
        hasher.update(&chunk);
        std::io::Write::write_all(&mut file, &chunk).map_err(|e| io_fail(*d, e))?;
        done += chunk.len() as u64;
        progress(Progress::LayerBytes { layer: *d, done });
    }
    let actual = hasher.finish();
    if actual != *d {
        return Err(ImageError::Mismatch { layer: *d, actual });
    }
    client.put_blob_file(dst, d, tmp, &|_| {}).await?;
    let _ = std::fs::remove_file(tmp);
    Ok(Copied::Uploaded)
}

/// How [`copy_blob`] got a blob into the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Copied {
    /// It was there already.
    Present,
    /// The registry mounted it from the source repository.
    Mounted,
    /// Its bytes were streamed from the source and uploaded.
    Uploaded,
}

fn io_fail(layer: Digest, source: std::io::Error) -> ImageError {
    ImageError::LayerIo { layer, source }
}

async fn rewrite_layer(
    client: &RegistryClient,
    src: &Reference,
    d: Digest,
    compression: Option<Compression>,
    format: Format,
    out_path: &std::path::Path,
    progress: ProgressFn<'_>,
) -> Result<Rewritten, ImageError> {
    let body = client.blob_stream(src, &d).await?;
    let out = std::fs::File::create(out_path).map_err(ImageError::io(out_path))?;
    let mut done = 0u64;
    feed_blocking(
        body,
        |n| {
            done += n;
            progress(Progress::LayerBytes { layer: d, done });
        },
        move |reader| rewrite(reader, d, compression, format, out),
    )
    .await
    .map_err(feed_error(d))?
}

/// Reads layer `d` from `reader` (checking its digest), decompresses it (`compression`, or
/// told from its first bytes) and writes it to `out` in `format`.
fn rewrite(
    reader: impl std::io::Read,
    d: Digest,
    compression: Option<Compression>,
    format: Format,
    out: std::fs::File,
) -> Result<Rewritten, ImageError> {
    let io = |source| ImageError::LayerIo { layer: d, source };
    let walk = |source| ImageError::Walk { layer: d, source };
    let mut hashed = HashingReader::new(reader);
    // Unknown media type: tell the compression from the first bytes.
    let mut head = [0u8; 4];
    let mut n = 0;
    if compression.is_none() {
        while n < head.len() {
            let k = std::io::Read::read(&mut hashed, &mut head[n..]).map_err(io)?;
            if k == 0 {
                break;
            }
            n += k;
        }
    }
    let c = compression.unwrap_or_else(|| sniff(&head[..n]));
    let written = {
        let input = std::io::Read::chain(&head[..n], &mut hashed);
        let tar = decompress(input, c).map_err(io)?;
        let out = std::io::BufWriter::new(out);
        match format {
            Format::ZstdChunked => {
                let w = write_chunked(tar, out, 3).map_err(walk)?;
                Rewritten {
                    digest: w.digest,
                    size: w.size,
                    annotations: w.annotations,
                    diff_id: None,
                }
            }
            Format::Estargz => {
                let w = write_estargz(tar, out, 6).map_err(walk)?;
                Rewritten {
                    digest: w.digest,
                    size: w.size,
                    annotations: w.annotations,
                    diff_id: Some(w.diff_id),
                }
            }
        }
    };
    let (actual, _) = hashed.finish().map_err(io)?;
    if actual != d {
        return Err(ImageError::Mismatch { layer: d, actual });
    }
    Ok(written)
}
