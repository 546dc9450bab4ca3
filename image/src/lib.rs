//! Image services over the registry client, the formats and the store: pull, open, convert,
//! commit, push, profile, save/load and gc.
//!
//! Each service holds only what its job needs (the store, the registry client, the chunk
//! cache, the state root's directories). [`Images`] opens a state root once and hands them
//! out:
//!
//! | service | job |
//! |---|---|
//! | [`Catalog`] | find images by name, id or digest; tags; configs; open layers for mounting |
//! | [`Puller`] | lazy pull; stream layers without a TOC |
//! | [`Prefetcher`] | fetch ahead: a profile's chunks, the rest of an image, all of it |
//! | [`Profiles`] | the prefetch profile kept in an image's manifest |
//! | [`Committer`] | write a new layer; store an image on top of another |
//! | [`Pusher`] | upload an image |
//! | [`Converter`] | rewrite an image into a lazy format, registry to registry |
//! | [`Archives`] | `save` and `load` |
//! | [`Collector`] | remove what no image references |

pub mod archive;
pub mod archive_docker;
pub mod blobs;
pub mod catalog;
pub mod commit;
pub mod convert;
pub mod error;
pub mod gc;
mod index;
pub mod layout;
pub mod learned;
pub mod prefetch;
pub mod profile;
pub mod pull;
pub mod push;
pub mod soci;
mod soci_local;
pub mod soci_write;

use std::path::Path;
use std::sync::Arc;

use strata_distribution::{ClientOptions, RegistryClient};
use strata_formats::profile::Prefetch;
use strata_storage::cache::ChunkCache;
use strata_storage::lazy::ChunkFetcher;
use strata_storage::store::Store;

pub use crate::archive::{Archives, Loaded};
pub use crate::catalog::{Catalog, LOCAL_SOURCE, OpenLayer, source_ref};
pub use crate::commit::{CommitMeta, Committer, NewLayer};
pub use crate::convert::{Converter, Format};
pub use crate::error::{ImageError, Progress, ProgressFn};
pub use crate::gc::{Collector, Freed};
pub use crate::layout::Layout;
pub use crate::prefetch::Prefetcher;
pub use crate::profile::Profiles;
pub use crate::pull::Puller;
pub use crate::push::Pusher;

use crate::index::LayerIndexer;

/// The image services of one state root: the shared handles (store, registry client, chunk
/// fetcher and its cache) opened once, and each service made from the ones it needs.
#[derive(Debug, Clone)]
pub struct Images {
    layout: Layout,
    store: Store,
    client: Arc<RegistryClient>,
    fetcher: Arc<ChunkFetcher>,
    /// What a cold start fetches ahead (`None` unless a command that starts containers or
    /// mounts images asks for more: a `pull` alone ends before a prefetch could finish).
    pub prefetch: Prefetch,
}

impl Images {
    /// Opens the store, the cache (at most `cache_bytes`) and a registry client under `root`.
    pub fn open(root: &Path, opts: ClientOptions, cache_bytes: u64) -> Result<Self, ImageError> {
        let layout = Layout::new(root);
        let store = Store::open(&layout.store())?;
        let cache = Arc::new(ChunkCache::open(&layout.cache(), cache_bytes)?);
        let client = Arc::new(RegistryClient::new(opts)?);
        let fetcher = Arc::new(ChunkFetcher::new(
            Arc::new(crate::blobs::RegistryBlobs(client.clone())),
            cache,
            layout.blobs(),
        ));
        Ok(Self {
            layout,
            store,
            client,
            fetcher,
            prefetch: Prefetch::None,
        })
    }

    /// The directories of the state root.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The image store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The registry client.
    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }

    /// The chunk fetcher (and through it the cache), which lazy filesystems read through.
    pub fn fetcher(&self) -> &Arc<ChunkFetcher> {
        &self.fetcher
    }

    fn indexer(&self) -> LayerIndexer {
        LayerIndexer {
            store: self.store.clone(),
            cache: self.fetcher.cache().clone(),
        }
    }

    /// Finding, naming and opening stored images.
    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.store.clone()).with_fetcher(self.fetcher.clone())
    }

    /// Lazy pull; it starts a profile's prefetch when [`Images::prefetch`] asks for one.
    pub fn puller(&self) -> Puller {
        Puller::new(
            self.store.clone(),
            self.client.clone(),
            self.indexer(),
            self.layout.clone(),
            self.prefetcher(),
            self.prefetch,
        )
    }

    /// Fetching ahead into the cache.
    pub fn prefetcher(&self) -> Prefetcher {
        Prefetcher::new(self.fetcher.clone())
    }

    /// Prefetch profiles kept in manifests.
    pub fn profiles(&self) -> Profiles {
        Profiles::new(self.store.clone())
    }

    /// New layers and images.
    pub fn committer(&self) -> Committer {
        Committer::new(self.store.clone(), self.layout.clone())
    }

    /// Uploads.
    pub fn pusher(&self) -> Pusher {
        Pusher::new(self.store.clone(), self.client.clone(), self.layout.clone())
    }

    /// SOCI indexes of gzip images, built and pushed (`strata index`).
    pub fn soci_writer(&self) -> soci_write::SociWriter {
        soci_write::SociWriter::new(self.client.clone(), self.store.clone())
    }

    /// Registry-to-registry conversion.
    pub fn converter(&self) -> Converter {
        Converter::new(self.client.clone(), self.layout.clone())
    }

    /// `save` and `load`.
    pub fn archives(&self) -> Archives {
        Archives::new(
            self.store.clone(),
            self.client.clone(),
            self.indexer(),
            self.layout.clone(),
        )
    }

    /// Garbage collection.
    pub fn collector(&self) -> Collector {
        Collector::new(
            self.store.clone(),
            self.fetcher.cache().clone(),
            self.layout.clone(),
        )
    }
}
