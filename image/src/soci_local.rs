//! Local ztocs: a gzip layer with no TOC and no SOCI index is streamed once, as always, and
//! strata builds its ztoc in the same pass ([`index_gzip_with_ztoc`]). The ztoc is kept in the
//! store by layer digest, so that later mounts on this machine refill what the cache lost by
//! range through verified spans instead of streaming the layer again, and `strata index` can
//! push it without reading the layer.

use std::sync::Arc;

use tracing::{debug, warn};

use strata_distribution::RegistryClient;
use strata_formats::soci::DEFAULT_SPAN_SIZE;
use strata_formats::soci_local::locate_chunks;
use strata_formats::toc::Toc;
use strata_formats::ztoc::Ztoc;
use strata_oci::digest::Digest;
use strata_oci::reference::Reference;
use strata_storage::cache::ChunkCache;
use strata_storage::lazy::{ChunkFetcher, feed_blocking};
use strata_storage::plain::index_plain;
use strata_storage::plain_ztoc::index_gzip_with_ztoc;
use strata_storage::store::{Compression, LayerRecord, Store};

use crate::error::{ImageError, Progress, ProgressFn, feed_error};

/// Streams layer `d` (compressed with `c`) from `r`'s repository, caching every chunk in
/// `cache`: returns its local TOC and, for a gzip layer, its ztoc. The stream must hash to `d`.
pub(crate) async fn stream_index(
    (client, cache): (&RegistryClient, &Arc<ChunkCache>),
    r: &Reference,
    d: Digest,
    c: Compression,
    progress: ProgressFn<'_>,
) -> Result<(Toc, Option<Ztoc>), ImageError> {
    let body = client.blob_stream(r, &d).await?;
    let cache = cache.clone();
    let mut done = 0u64;
    let (indexed, ztoc) = feed_blocking(
        body,
        |n| {
            done += n;
            progress(Progress::LayerBytes { layer: d, done });
        },
        move |reader| match c {
            Compression::Gzip => index_gzip_with_ztoc(reader, &cache, DEFAULT_SPAN_SIZE),
            _ => index_plain(reader, c, &cache).map(|i| (i, None)),
        },
    )
    .await
    .map_err(feed_error(d))?
    .map_err(|source| ImageError::Walk { layer: d, source })?;
    if indexed.blob_digest != d {
        return Err(ImageError::Mismatch {
            layer: d,
            actual: indexed.blob_digest,
        });
    }
    Ok((indexed.toc, ztoc))
}

/// Keeps `ztoc`, built while streaming layer `rec`, in the store. It is only an aid: a ztoc
/// that cannot be kept is said and left out.
pub(crate) fn keep_local_ztoc(store: &Store, rec: &LayerRecord, ztoc: &Ztoc) {
    if let Err(e) = ztoc.check_layer(&rec.digest, rec.size) {
        warn!(layer = %rec.digest, error = %e, "local ztoc not kept");
        return;
    }
    match store.put_local_ztoc(&rec.digest, &ztoc.to_bytes()) {
        Ok(z) => debug!(layer = %rec.digest, ztoc = %z, "local ztoc kept"),
        Err(e) => warn!(layer = %rec.digest, error = %e, "local ztoc not kept"),
    }
}

/// The local ztoc of layer `d` (`size` bytes), parsed and checked against the layer, if there
/// is a sound one.
pub(crate) fn local_ztoc(store: &Store, d: &Digest, size: u64) -> Option<(Digest, Ztoc)> {
    let (zd, bytes) = match store.local_ztoc(d) {
        Ok(found) => found?,
        Err(e) => {
            warn!(layer = %d, error = %e, "local ztoc unreadable; the layer streams instead");
            return None;
        }
    };
    match crate::soci::open_ztoc(*d, size, zd, &bytes) {
        Ok((ztoc, _)) => Some((zd, ztoc)),
        Err(e) => {
            warn!(layer = %d, error = %e, "local ztoc unusable; the layer streams instead");
            None
        }
    }
}

/// Makes `fetcher` read the chunks of streamed layer `d` (local TOC `toc`) that the cache
/// lost through the layer's local ztoc, if it has a sound one.
pub(crate) fn register_local_ztoc(
    store: &Store,
    fetcher: &ChunkFetcher,
    (d, size): (Digest, u64),
    toc: &Toc,
) {
    let Some((_, ztoc)) = local_ztoc(store, &d, size) else {
        return;
    };
    match locate_chunks(toc, &ztoc) {
        Ok(chunks) => fetcher.register_local_ztoc(d, &Arc::new(ztoc), chunks),
        Err(e) => warn!(layer = %d, error = %e, "local ztoc unusable; the layer streams instead"),
    }
}
