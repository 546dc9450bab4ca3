//! Errors talking to a registry.

use reqwest::StatusCode;
use strata_oci::digest::DigestError;

use crate::RateLimited;
use crate::stall::Stalled;

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
    /// The registry made no progress on a request within the stall deadline.
    #[error(transparent)]
    Stalled(Box<Stalled>),
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

    /// Whether the registry made no progress within the stall deadline.
    pub fn is_stalled(&self) -> bool {
        matches!(self, Self::Stalled { .. })
    }

    /// This error, a stall naming blob `d` if its URL does not.
    pub(crate) fn about_blob(mut self, d: &strata_oci::digest::Digest) -> Self {
        if let Self::Stalled(s) = &mut self
            && s.blob.is_none()
            && !s.url.contains(&d.to_string())
        {
            s.blob = Some(*d);
        }
        self
    }
}
