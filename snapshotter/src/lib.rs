//! `strata snapshotter`: containerd's snapshots API (gRPC on a unix socket, loaded by
//! containerd as a proxy plugin) over strata's layer store.
//!
//! A layer whose `Prepare` carries the remote-snapshot labels (`containerd.io/snapshot.ref`
//! and the CRI plugin's `containerd.io/snapshot/cri.image-ref` / `cri.layer-digest`, which
//! `ctr-remote rpull --use-containerd-labels` sends too) is resolved through strata's lazy
//! pull, served by the layer store, committed under its chain ID and answered "already
//! exists": containerd never downloads its blob. Any other snapshot is an ordinary overlay
//! snapshot under the snapshotter's directory (`snapshots/<id>/fs`, `work`), which
//! containerd unpacks into. Active snapshots mount as overlayfs over their parents' dirs.

mod meta;
mod mounts;
mod remote;
mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_image::Images;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

pub use service::StrataSnapshotter;

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

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The snapshotter's state could not be opened.
    #[error(transparent)]
    Open(#[from] SnapError),
    /// The socket could not be bound.
    #[error("listening on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving on {path}: {source}")]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Serves the snapshots API on the unix socket `address` until `shutdown` completes: the
/// snapshots' metadata and directories live in `<state root>/snapshotter`; remote layers
/// come from the state root's layer store, on a lease held while this runs.
///
/// Errors: the state cannot be opened, the socket bound, or the server fails.
pub async fn serve(
    images: Images,
    address: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let sn = Arc::new(StrataSnapshotter::open(images)?);
    sn.connect().await;
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Listen {
            path: address.to_path_buf(),
            source,
        })?;
    }
    // A socket left by a predecessor (killed, restarted): nobody answers on it any more.
    if std::os::unix::net::UnixStream::connect(address).is_err() {
        let _ = std::fs::remove_file(address);
    }
    let listener =
        tokio::net::UnixListener::bind(address).map_err(|source| ServeError::Listen {
            path: address.to_path_buf(),
            source,
        })?;
    info!(address = %address.display(), "snapshotter listening");
    tonic::transport::Server::builder()
        .add_service(containerd_snapshots::server(sn))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|source| ServeError::Serve {
            path: address.to_path_buf(),
            source,
        })?;
    let _ = std::fs::remove_file(address);
    Ok(())
}
