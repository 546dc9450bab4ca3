//! Errors talking to a registry.

use reqwest::StatusCode;
use strata_oci::digest::DigestError;

use crate::RateLimited;

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered with an error status.
    #[error("{method} {url}: {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The registry's own error message, if any.
        message: String,
    },
    /// The request could not be sent or its body not read.
    #[error("{method} {url}: {source}")]
    Transport {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// Content did not match its digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The registry kept answering 429/503 with `Retry-After` past the allowed total wait.
    #[error(transparent)]
    RateLimited(Box<RateLimited>),
    /// A local file to upload or download into could not be read or written.
    #[error("{}", .path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry broke the protocol (`reason` says how; there is no underlying error).
    #[error("registry {registry}: {reason}")]
    Protocol {
        /// The registry.
        registry: String,
        /// What went wrong.
        reason: String,
    },
}

impl RegistryError {
    /// The HTTP status, when the registry answered with one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
