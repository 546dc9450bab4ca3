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
    /// An image config is malformed.
    #[error(transparent)]
    Config(#[from] strata_oci::config::ConfigError),
    /// A manifest or index strata reads back is malformed.
    #[error(transparent)]
    ManifestJson(#[from] strata_oci::manifest::ManifestError),
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
    /// A SOCI index or ztoc is malformed or does not fit the image.
    #[error("soci {what} {digest}: {reason}")]
    Soci {
        /// `index` or `ztoc`.
        what: &'static str,
        /// The document at fault.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// A manifest or index is unsupported or inconsistent.
    #[error("manifest {what}: {problem}")]
    Manifest {
        /// Which manifest.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A registry's manifest or index does not parse.
    #[error("manifest {what}")]
    ManifestParse {
        /// Which manifest.
        what: String,
        /// The cause.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// A digest in a manifest, index or record does not parse.
    #[error("digest in {what}")]
    BadDigest {
        /// Where it was.
        what: String,
        /// The cause.
        #[source]
        source: strata_oci::digest::DigestError,
    },
    /// A name does not parse as a reference.
    #[error("name {what}")]
    BadReference {
        /// The name.
        what: String,
        /// The cause.
        #[source]
        source: strata_oci::reference::ReferenceError,
    },
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
    /// A layer's bytes do not hash to its digest.
    #[error("layer {layer}: content hashes to {actual}")]
    Mismatch {
        /// The layer blob.
        layer: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The registry answered a range with fewer bytes than asked for.
    #[error("layer {layer}: range {start}-{end} past the blob's {len} bytes")]
    RangePastEnd {
        /// The layer blob.
        layer: Digest,
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
        /// Bytes the registry sent.
        len: usize,
    },
    /// Streaming a layer from the registry into its reader failed.
    #[error("layer {layer}: streaming it")]
    Stream {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        #[source]
        source: FeedError<strata_distribution::RegistryError>,
    },
    /// A layer's tar could not be read or rewritten.
    #[error("layer {layer}: reading its tar")]
    Walk {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        #[source]
        source: strata_formats::tarwalk::WalkError,
    },
    /// A layer's bytes could not be read or written.
    #[error("layer {layer}")]
    LayerIo {
        /// The layer blob.
        layer: Digest,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A foreign layer: none of its URLs served it.
    #[error("layer {layer}: foreign layer: none of its URLs served it ({failures})")]
    Foreign {
        /// The layer blob.
        layer: Digest,
        /// Each URL's failure.
        failures: String,
    },
    /// A layer to push is neither local nor in a known repository.
    #[error("layer {layer}: layer is neither local nor in a known repository")]
    NoSource {
        /// The layer blob.
        layer: Digest,
    },
    /// A layer is not indexed yet.
    #[error("layer {layer}: layer has no TOC yet (it is streamed on first mount)")]
    NotIndexed {
        /// The layer blob.
        layer: Digest,
    },
    /// A new layer could not be written.
    #[error("writing a new layer")]
    WriteLayer {
        /// The cause.
        #[source]
        source: strata_formats::tarwalk::WalkError,
    },
    /// A local file or directory could not be read or written.
    #[error("{}", .path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An archive (`save`/`load`) is malformed.
    #[error("archive {what}: {problem}")]
    Archive {
        /// The part of the archive.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Reading or writing an archive failed.
    #[error("archive {what}")]
    ArchiveIo {
        /// The part of the archive.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An archive names a path that would land outside it.
    #[error("archive manifest.json: path {path:?}")]
    ArchivePath {
        /// The path as named.
        path: String,
        /// The cause.
        #[source]
        source: IndexError,
    },
    /// An archive's JSON file does not parse.
    #[error("archive {what}")]
    ArchiveJson {
        /// The file.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl ImageError {
    /// Whether this error only says a layer's TOC cannot be trusted or read (so the layer can
    /// still be streamed like any `tar+gzip`/`tar+zstd`), rather than that storage failed.
    pub fn toc_untrusted(&self) -> bool {
        match self {
            Self::Toc { .. } | Self::Index { .. } | Self::RangePastEnd { .. } => true,
            Self::Store(StoreError::Digest(_)) => true,
            Self::Registry(e) => e.status().is_some_and(|s| s.as_u16() == 416),
            _ => false,
        }
    }

    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
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
pub(crate) fn feed_error(
    layer: Digest,
) -> impl FnOnce(FeedError<strata_distribution::RegistryError>) -> ImageError {
    move |e| match e {
        FeedError::Source(r) => ImageError::Registry(r),
        source => ImageError::Stream { layer, source },
    }
}

/// Our digest of a descriptor.
pub fn digest_of(desc: &Descriptor) -> Result<Digest, ImageError> {
    desc.digest()
        .to_string()
        .parse()
        .map_err(|source| ImageError::BadDigest {
            what: format!("descriptor {}", desc.digest()),
            source,
        })
}
