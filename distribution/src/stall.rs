//! The stall deadline (DESIGN.md §8, issue 17): a registry request that makes no progress —
//! no byte of its upload taken, no answer, no byte of its answer's body — for this long fails
//! with [`RegistryError::Stalled`] naming the registry and the request, instead of waiting on
//! a registry that accepted the connection and went quiet. It bounds every whole-blob transfer
//! (pull, convert, push, save) the way the read deadline bounds a lazy read; a transfer that
//! keeps moving, however slowly, is never cut. A stalled request is not retried: a retry would
//! wait as long again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::{Method, Response};

use crate::{RegistryClient, RegistryError};

/// The deadline when neither `--stall-timeout` nor `STRATA_STALL_TIMEOUT_SECS` sets one: long
/// enough for a registry that checks a large upload before it answers its closing PUT.
pub const DEFAULT_STALL_SECS: u64 = 60;

/// The environment variable that sets the deadline (whole seconds, at least 1).
pub const STALL_TIMEOUT_ENV: &str = "STRATA_STALL_TIMEOUT_SECS";

/// Pieces an upload held in memory is sent in, each taken marking progress.
const UPLOAD_PIECE: usize = 256 << 10;

/// When a request last made progress: shared by the request's upload body, which marks each
/// piece taken, and the watch that fails the request once it has been quiet too long.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last progress.
    last_ms: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Progress {
    /// Notes progress now.
    pub(crate) fn mark(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Returns once no progress has been marked for `limit`.
    pub(crate) async fn stalled(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let until = last + limit;
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }

    /// An upload body sending `data` in pieces, marking progress as each is taken.
    pub(crate) fn body_of_bytes(&self, data: Bytes) -> reqwest::Body {
        self.body_of_stream(futures_util::stream::iter(
            pieces(data).into_iter().map(Ok::<_, std::io::Error>),
        ))
    }

    /// An upload body taking `stream`'s pieces, marking progress as each is taken.
    pub(crate) fn body_of_stream<S>(&self, stream: S) -> reqwest::Body
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static,
    {
        let progress = self.clone();
        reqwest::Body::wrap_stream(stream.inspect(move |_| progress.mark()))
    }
}

/// `data` in pieces of at most [`UPLOAD_PIECE`] bytes.
fn pieces(data: Bytes) -> Vec<Bytes> {
    (0..data.len())
        .step_by(UPLOAD_PIECE)
        .map(|at| data.slice(at..(at + UPLOAD_PIECE).min(data.len())))
        .collect()
}

/// A request that made no progress (no answer, no byte of its answer's body, no byte of its
/// upload taken) within the stall deadline.
#[derive(Debug, thiserror::Error)]
#[error(
    "registry {registry}: no progress within {secs}s on {method} {url}{} (--stall-timeout)",
    .blob.map(|d| format!(" (blob {d})")).unwrap_or_default()
)]
pub struct Stalled {
    /// The registry (or, for a plain URL, its host).
    pub registry: String,
    /// Request method.
    pub method: String,
    /// Request URL, without its query.
    pub url: String,
    /// The deadline, in seconds.
    pub secs: u64,
    /// The blob the request was about, when its URL does not say.
    pub blob: Option<strata_oci::digest::Digest>,
}

/// What a stalled request was, for its error.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) registry: String,
    pub(crate) method: String,
    pub(crate) url: String,
    pub(crate) limit: Duration,
}

impl Request {
    /// The error of this request stalled: its URL without the query (an upload's is long and
    /// says nothing to a reader), the blob an upload's `digest=` names.
    pub(crate) fn stalled(&self) -> RegistryError {
        let (path, query) = self.url.split_once('?').unwrap_or((&self.url, ""));
        let blob = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("digest="))
            .and_then(|d| d.parse().ok());
        RegistryError::Stalled(Box::new(Stalled {
            registry: self.registry.clone(),
            method: self.method.clone(),
            url: path.to_string(),
            secs: self.limit.as_secs(),
            blob,
        }))
    }

    fn transport(&self, source: reqwest::Error) -> RegistryError {
        RegistryError::Transport {
            method: self.method.clone(),
            url: self.url.clone(),
            source,
        }
    }

    /// The next piece of `resp`'s body, within the deadline.
    async fn next(&self, resp: &mut Response) -> Result<Option<Bytes>, RegistryError> {
        match tokio::time::timeout(self.limit, resp.chunk()).await {
            Ok(r) => r.map_err(|e| self.transport(e)),
            Err(_) => {
                tracing::debug!(url = %self.url, "answer's body stalled");
                Err(self.stalled())
            }
        }
    }

    /// `resp`'s whole body, each piece within the deadline; an error past `limit` bytes.
    pub(crate) async fn read_all(
        &self,
        mut resp: Response,
        limit: Option<usize>,
    ) -> Result<Bytes, RegistryError> {
        let mut out = bytes::BytesMut::new();
        while let Some(piece) = self.next(&mut resp).await? {
            out.extend_from_slice(&piece);
            if let Some(limit) = limit
                && out.len() > limit
            {
                return Err(RegistryError::Protocol {
                    registry: self.url.clone(),
                    reason: format!("manifest larger than {limit} bytes"),
                });
            }
        }
        Ok(out.freeze())
    }

    /// `resp`'s body as a stream, each piece within the deadline.
    pub(crate) fn stream(
        self,
        resp: Response,
    ) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send + use<> {
        futures_util::stream::unfold(Some((self, resp)), |state| async move {
            let (req, mut resp) = state?;
            match req.next(&mut resp).await {
                Ok(Some(piece)) => Some((Ok(piece), Some((req, resp)))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

impl RegistryClient {
    /// `method url` on `registry`, for reading its answer within the stall deadline.
    pub(crate) fn request(&self, registry: &str, method: &Method, url: &str) -> Request {
        Request {
            registry: registry.to_string(),
            method: method.to_string(),
            url: url.to_string(),
            limit: Duration::from_secs(self.opts.stall_timeout_secs.clamp(1, 86_400)),
        }
    }

    /// A GET of a plain URL (no registry auth, no retries), answered within the stall
    /// deadline; the request, for reading the body within it too.
    pub(crate) async fn get_plain(&self, url: &str) -> Result<(Response, Request), RegistryError> {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| {
                let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                Some(format!("{}{port}", u.host_str()?))
            })
            .unwrap_or_default();
        let request = self.request(&host, &Method::GET, url);
        let progress = Progress::default();
        let resp = tokio::select! {
            result = self.http.get(url).send() => result.map_err(|source| {
                RegistryError::Transport {
                    method: "GET".into(),
                    url: url.to_string(),
                    source,
                }
            })?,
            () = progress.stalled(request.limit) => return Err(request.stalled()),
        };
        Ok((resp, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_puts_the_stall_off() {
        let p = Progress::default();
        let limit = Duration::from_millis(400);
        let watch = tokio::spawn({
            let p = p.clone();
            async move { p.stalled(limit).await }
        });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!watch.is_finished(), "a request making progress stalled");
            p.mark();
        }
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("a quiet request did not stall")
            .unwrap();
    }

    #[test]
    fn uploads_in_memory_go_in_pieces() {
        let data = Bytes::from(
            (0..UPLOAD_PIECE * 2 + 5)
                .map(|i| u8::try_from(i % 251).unwrap())
                .collect::<Vec<_>>(),
        );
        let pieces = pieces(data.clone());
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.len() <= UPLOAD_PIECE));
        assert_eq!(pieces.concat(), data);
        assert!(super::pieces(Bytes::new()).is_empty());
    }
}
