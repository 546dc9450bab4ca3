//! Removing images and collecting what no image references any more: layer records, TOCs,
//! configs and manifests in the store, committed blobs, chunks and assembled files in the cache.

use std::collections::HashSet;

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::error::ImageError;
use crate::layout::Layout;
use strata_formats::index::Kind;
use strata_oci::digest::Digest;
use strata_storage::cache::ChunkCache;
use strata_storage::store::Store;

/// What a collection freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    /// Files removed.
    pub files: u64,
    /// Bytes removed.
    pub bytes: u64,
}

/// Collects what no stored image references, in the store and the cache.
#[derive(Debug, Clone)]
pub struct Collector {
    store: Store,
    cache: Arc<ChunkCache>,
    layout: Layout,
}

impl Collector {
    /// A collector of `store`, `cache` and the local files under `layout`.
    pub fn new(store: Store, cache: Arc<ChunkCache>, layout: Layout) -> Self {
        Self {
            store,
            cache,
            layout,
        }
    }

    /// Removes everything no stored image references. Returns what was freed.
    pub fn collect(&self) -> Result<Freed, ImageError> {
        let images = self.store.images()?;
        let mut layers: HashSet<Digest> = HashSet::new();
        let mut blobs: HashSet<Digest> = HashSet::new();
        for img in &images {
            blobs.insert(img.manifest);
            blobs.insert(img.config);
            if let Some(i) = img.index {
                blobs.insert(i);
            }
            layers.extend(img.layers.iter().copied());
        }
        let mut freed = Freed::default();
        let layer_dir = self.layout.store().join("layers");
        for e in std::fs::read_dir(&layer_dir)
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let name = e
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string();
            if let Ok(d) = format!("sha256:{name}").parse::<Digest>()
                && !layers.contains(&d)
            {
                self.store.remove_layer(&d)?;
                self.store.remove_local_ztoc(&d)?;
                let local = self.layout.blob(&d);
                if let Ok(m) = std::fs::metadata(&local)
                    && std::fs::remove_file(&local).is_ok()
                {
                    freed.files += 1;
                    freed.bytes += m.len();
                }
            }
        }
        // Chunks still referenced by a kept layer.
        let mut chunks: HashSet<Digest> = HashSet::new();
        let catalog = Catalog::new(self.store.clone());
        for img in &images {
            let Ok(open) = catalog.open_layers(img) else {
                continue;
            };
            for l in open {
                blobs.extend(self.store.layer(&l.source.blob)?.and_then(|r| r.toc));
                for e in l.index.entries.iter().filter(|e| e.kind == Kind::Reg) {
                    chunks.extend(e.chunks.iter().filter_map(|c| c.digest));
                }
            }
        }
        self.keep_layer_indexes(&layers, &mut blobs, &mut chunks)?;
        let (n, b) = self.store.retain_blobs(|d| blobs.contains(d))?;
        freed.files += n;
        freed.bytes += b;
        let (n, b) = self.cache.retain(|d| chunks.contains(d))?;
        freed.files += n;
        freed.bytes += b;
        // Assembled files are rebuilt on demand: drop them all.
        let files = self.layout.files();
        for e in std::fs::read_dir(&files)
            .map(|d| d.flatten().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(e.path()).is_ok() {
                freed.files += 1;
                freed.bytes += len;
            }
        }
        Ok(freed)
    }

    /// Adds the TOC of each of `layers` to `blobs`, and its local ztoc (to `blobs`) with the
    /// spans read through it (to `chunks`).
    fn keep_layer_indexes(
        &self,
        layers: &HashSet<Digest>,
        blobs: &mut HashSet<Digest>,
        chunks: &mut HashSet<Digest>,
    ) -> Result<(), ImageError> {
        for d in layers {
            let Some(rec) = self.store.layer(d)? else {
                continue;
            };
            blobs.extend(rec.toc);
            if let Some((z, ztoc)) = crate::soci_local::local_ztoc(&self.store, d, rec.size) {
                blobs.insert(z);
                chunks.extend(ztoc.span_digests);
            }
        }
        Ok(())
    }
}
