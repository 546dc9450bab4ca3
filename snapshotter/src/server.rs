//! The gRPC server on a unix socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_image::Images;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::error::SnapError;
use crate::service::StrataSnapshotter;

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
    // Listening first: a socket that cannot be bound starts no store.
    sn.connect().await;
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
