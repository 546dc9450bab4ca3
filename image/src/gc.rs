//! Removing images and collecting what no image references any more: layer records, TOCs,
//! configs and manifests in the store, committed blobs, chunks and assembled files in the cache.

use std::collections::HashSet;

use crate::image::{Context, ImageError};
use strata_formats::index::Kind;
use strata_oci::digest::Digest;
use strata_storage::store::ImageRecord;

/// What a collection freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    /// Files removed.
    pub files: u64,
    /// Bytes removed.
    pub bytes: u64,
}

impl Context {
    /// Deletes an image's record (its references must be gone already); layers and blobs that
    /// no other image uses go with the next [`Context::collect`].
    pub fn remove_image(&self, img: &ImageRecord) -> Result<(), ImageError> {
        self.store.remove_image(&img.manifest)?;
        Ok(())
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
        let layer_dir = self.root.join("store/layers");
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
                let local = self.root.join("cache/blobs").join(d.hex());
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
        for img in &images {
            let Ok(open) = self.open_layers(img) else {
                continue;
            };
            for l in open {
                blobs.extend(self.store.layer(&l.source.blob)?.and_then(|r| r.toc));
                for e in l.index.entries.iter().filter(|e| e.kind == Kind::Reg) {
                    chunks.extend(e.chunks.iter().filter_map(|c| c.digest));
                }
            }
        }
        for d in &layers {
            if let Some(toc) = self.store.layer(d)?.and_then(|r| r.toc) {
                blobs.insert(toc);
            }
        }
        let (n, b) = self.store.retain_blobs(|d| blobs.contains(d))?;
        freed.files += n;
        freed.bytes += b;
        let (n, b) = self.fetcher.cache().retain(|d| chunks.contains(d))?;
        freed.files += n;
        freed.bytes += b;
        // Assembled files are rebuilt on demand: drop them all.
        let files = self.root.join("cache/files");
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
}
