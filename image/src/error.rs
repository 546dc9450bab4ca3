//! What image services report: their error type and the progress of long operations.

use oci_spec::image::Descriptor;
use strata_distribution::RegistryError;
use strata_formats::index::IndexError;
use strata_formats::toc::TocError;
use strata_oci::digest::Digest;
use strata_storage::cache::CacheError;
use strata_storage::lazy::{FeedError, FetchError};
use strata_storage::store::StoreError;

/// Errors of image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A TOC or footer is malformed.
    #[error("layer {layer}: {source}")]
    Toc {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        source: TocError,
    },
    /// A TOC entry is malformed or escapes the image.
    #[error("layer {layer}: {source}")]
    Index {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        source: IndexError,
    },
    /// A manifest or index is malformed or unsupported.
    #[error("manifest {what}: {reason}")]
    Manifest {
        /// Which manifest.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// An image config is malformed.
    #[error(transparent)]
    Config(#[from] strata_oci::config::ConfigError),
    /// A manifest or index strata reads back is malformed.
    #[error(transparent)]
    ManifestJson(#[from] strata_oci::manifest::ManifestError),
    /// No manifest of an index fits the wanted platform.
    #[error("{what}: {source}")]
    Platform {
        /// The reference.
        what: String,
        /// The cause.
        source: strata_oci::platform::PlatformError,
    },
    /// Fetching content failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A layer stream failed.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// The layer blob.
        layer: Digest,
        /// What went wrong.
        reason: String,
    },
}

impl ImageError {
    /// Whether this error only says a layer's TOC cannot be trusted or read (so the layer can
    /// still be streamed like any `tar+gzip`/`tar+zstd`), rather than that storage failed.
    pub fn toc_untrusted(&self) -> bool {
        match self {
            Self::Toc { .. } | Self::Index { .. } | Self::Layer { .. } => true,
            Self::Store(StoreError::Digest(_)) => true,
            Self::Registry(e) => e.status().is_some_and(|s| s.as_u16() == 416),
            _ => false,
        }
    }
}

/// Progress of long operations, for the CLI to show.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The manifest was resolved.
    Resolved {
        /// Its digest.
        manifest: Digest,
        /// Number of layers.
        layers: usize,
    },
    /// A layer started: `what` says what is being done.
    LayerStart {
        /// The blob.
        layer: Digest,
        /// Size of the blob.
        size: u64,
        /// e.g. "Fetching TOC", "Streaming (no TOC)".
        what: &'static str,
    },
    /// Bytes of a layer processed.
    LayerBytes {
        /// The blob.
        layer: Digest,
        /// Bytes so far.
        done: u64,
    },
    /// A layer is done.
    LayerDone {
        /// The blob.
        layer: Digest,
        /// e.g. "Pull complete", "Already exists".
        what: &'static str,
    },
    /// A layer the registry mounted from another repository instead of an upload.
    Mounted {
        /// The blob.
        layer: Digest,
        /// The repository it came from (path on the same registry).
        from: String,
    },
}

/// A progress callback.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// Maps a failed [`strata_storage::lazy::feed_blocking`] of `layer` to an image error.
pub(crate) fn feed_error(layer: Digest) -> impl FnOnce(FeedError) -> ImageError {
    move |e| match e {
        FeedError::Registry(r) => ImageError::Registry(r),
        other => ImageError::Layer {
            layer,
            reason: other.to_string(),
        },
    }
}

/// Our digest of a descriptor.
pub fn digest_of(desc: &Descriptor) -> Result<Digest, ImageError> {
    desc.digest()
        .to_string()
        .parse()
        .map_err(|e: strata_oci::digest::DigestError| ImageError::Manifest {
            what: desc.digest().to_string(),
            reason: e.to_string(),
        })
}
