//! The snapshotter's errors and the gRPC codes containerd expects for them.

use std::path::{Path, PathBuf};

/// Errors of the snapshotter, each answered to containerd with the gRPC code it expects.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    /// No snapshot of that name.
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    /// A snapshot of that name exists (also the answer to a remote layer now served).
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    /// The operation does not apply to the snapshot as it is.
    #[error("snapshot {key}: {cause}")]
    Precondition {
        /// The snapshot.
        key: String,
        /// Why.
        cause: String,
    },
    /// A file or directory of the snapshotter could not be used.
    #[error("snapshotter {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata file cannot be read or written.
    #[error("snapshotter metadata {path}: {cause}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// A remote layer could not be served by the layer store.
    #[error("layer {layer} of {image}: {cause}")]
    Remote {
        /// The image reference.
        image: String,
        /// The layer digest.
        layer: String,
        /// Why.
        cause: String,
    },
}

impl SnapError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<SnapError> for tonic::Status {
    fn from(e: SnapError) -> Self {
        let text = e.to_string();
        match e {
            SnapError::NotFound(_) => tonic::Status::not_found(text),
            SnapError::AlreadyExists(_) => tonic::Status::already_exists(text),
            SnapError::Precondition { .. } => tonic::Status::failed_precondition(text),
            _ => tonic::Status::internal(text),
        }
    }
}
