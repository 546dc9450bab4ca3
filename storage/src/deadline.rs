//! The per-read deadline (DESIGN.md §8): a read that waits for the network longer than this
//! fails (EIO for a FUSE reader) naming the layer, the chunk and the registry, instead of
//! hanging on a stalled registry. Retries of the request, waits for another reader's fetch of
//! the same chunk and refetches of evicted chunks all run inside it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_formats::index::{Chunk, ChunkLoc};
use strata_oci::digest::Digest;

use crate::lazy::{ChunkFetcher, FetchError, LayerSource};
use crate::source::{RangeReply, SourceError};

/// The deadline when `STRATA_READ_TIMEOUT_SECS` does not set one.
pub const DEFAULT_READ_DEADLINE: Duration = Duration::from_secs(30);

/// The environment variable that sets the deadline (whole seconds, at least 1).
pub const READ_TIMEOUT_ENV: &str = "STRATA_READ_TIMEOUT_SECS";

/// The deadline of one read: `STRATA_READ_TIMEOUT_SECS` (read once per process), else
/// [`DEFAULT_READ_DEADLINE`]. A value that is not a whole number of seconds of at least 1 is
/// ignored with a warning.
pub fn read_deadline() -> Duration {
    static DEADLINE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *DEADLINE.get_or_init(|| match std::env::var(READ_TIMEOUT_ENV) {
        Err(_) => DEFAULT_READ_DEADLINE,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs >= 1 => Duration::from_secs(secs),
            _ => {
                tracing::warn!(
                    "{READ_TIMEOUT_ENV}={v:?} is not a number of seconds (at least 1); using {}s",
                    DEFAULT_READ_DEADLINE.as_secs()
                );
                DEFAULT_READ_DEADLINE
            }
        },
    })
}

/// Where a chunk lies in its layer blob, for messages: `blob bytes START-END`, or the file
/// range it covers when it has no place of its own in the blob.
pub(crate) fn describe(c: &Chunk) -> String {
    let digest = c.digest.map(|d| d.to_string()).unwrap_or_default();
    match c.loc {
        ChunkLoc::Zstd { start, end }
        | ChunkLoc::Gzip { start, end, .. }
        | ChunkLoc::Zran { start, end, .. } => {
            format!(
                "chunk {digest} (blob bytes {start}-{})",
                end.saturating_sub(1)
            )
        }
        _ => format!(
            "chunk {digest} (file bytes {}-{})",
            c.file_offset,
            (c.file_offset + c.len).saturating_sub(1)
        ),
    }
}

/// How long (at most the deadline) after a read of a chunk passed its deadline another read
/// of it waits only [`REPEAT_DEADLINE`]: the kernel asks again at once for the page a failed
/// readahead left (a second wait as long as the first, for one read of the program's), and a
/// program may retry at once.
const REPEAT_WINDOW: Duration = Duration::from_secs(2);

/// The deadline of such a repeated read (at most a quarter of the deadline): long enough for
/// a registry that answers again, short enough that a stalled one costs one read little more.
const REPEAT_DEADLINE: Duration = Duration::from_secs(1);

/// Chunks whose read passed its deadline lately, with what the error said of them.
#[derive(Debug, Default)]
pub(crate) struct RecentTimeouts(Mutex<HashMap<Digest, (Instant, String)>>);

impl RecentTimeouts {
    fn note(&self, d: Digest, what: String, window: Duration) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (at, _)| at.elapsed() < window);
        m.insert(d, (Instant::now(), what));
    }

    /// What the error said of a chunk of `chunks` whose read passed its deadline within
    /// `window`, if `still_missing` says it is still missing.
    fn find(
        &self,
        chunks: &[Chunk],
        window: Duration,
        still_missing: impl Fn(&Digest) -> bool,
    ) -> Option<String> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return None;
        }
        chunks.iter().filter_map(|c| c.digest).find_map(|d| {
            m.get(&d)
                .filter(|(at, _)| at.elapsed() < window && still_missing(&d))
                .map(|(_, what)| what.clone())
        })
    }
}

impl ChunkFetcher {
    /// Runs `work` (a read of `offset..offset+len` over `chunks`) within the read deadline;
    /// past it, a [`FetchError::TimedOut`] naming the first chunk still missing. A read of a
    /// chunk whose read passed the deadline within [`REPEAT_WINDOW`] gets [`REPEAT_DEADLINE`]
    /// only, and its error is marked `repeated` (for the caller not to say it twice).
    pub(crate) async fn within_deadline<T>(
        &self,
        layer: &LayerSource,
        chunks: &[Chunk],
        (offset, len): (u64, u64),
        work: impl Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        let touched = Self::touching(chunks, offset, len);
        let window = REPEAT_WINDOW.min(self.read_deadline);
        let repeated = self
            .recent_timeouts
            .find(touched, window, |d| !self.cache().contains(d))
            .is_some();
        let limit = match repeated {
            true => REPEAT_DEADLINE.min(self.read_deadline / 4),
            false => self.read_deadline,
        };
        let (mut e, passed) = match tokio::time::timeout(limit, work).await {
            Ok(Err(e @ FetchError::TimedOut { .. })) => (e, false),
            Ok(r) => return r,
            Err(_) => (self.timed_out(layer, None), true),
        };
        // Past the read's deadline, or one of its requests': note the first chunk still
        // missing, and name it.
        let missing = self.missing(touched);
        if let Some(chunk) = missing.first().or(touched.first()) {
            if let FetchError::TimedOut { what, .. } = &mut e
                && passed
            {
                *what = describe(chunk);
            }
            if let Some(d) = chunk.digest {
                self.recent_timeouts.note(d, describe(chunk), window);
            }
        }
        if let FetchError::TimedOut { repeated: r, .. } = &mut e {
            *r = repeated;
        }
        Err(e)
    }

    /// [`Self::traced_range`] within the read deadline: a request (a prefetch's too) holds its
    /// chunks' claim, and so other readers, no longer than a read may wait.
    pub(crate) async fn bounded_range(
        &self,
        layer: &LayerSource,
        range: std::ops::Range<u64>,
        items: &[crate::ranges::Located],
    ) -> Result<Result<RangeReply, SourceError>, FetchError> {
        let bytes = format!("blob bytes {}-{}", range.start, range.end.saturating_sub(1));
        let mut digests = items.iter().filter_map(|l| l.chunk.digest);
        let what = match (digests.next(), digests.count()) {
            (Some(d), 0) => format!("chunk {d} ({bytes})"),
            (Some(d), more) => format!("chunks {d} and {more} more ({bytes})"),
            (None, _) => bytes,
        };
        tokio::time::timeout(self.read_deadline, self.traced_range(layer, range, items))
            .await
            .map_err(|_| self.timed_out(layer, Some(what)))
    }

    /// The error of a wait on `layer` past the deadline, about `what` (a chunk, or a range).
    pub(crate) fn timed_out(&self, layer: &LayerSource, what: Option<String>) -> FetchError {
        FetchError::TimedOut {
            blob: layer.blob,
            what: what.unwrap_or_else(|| "its content".into()),
            registry: layer.repo.registry.clone(),
            secs: self.read_deadline.as_secs_f64(),
            repeated: false,
        }
    }
}

impl FetchError {
    /// Whether this error repeats one already returned (and said) moments ago for the same
    /// chunk: a caller that logs errors logs this one at debug level only.
    pub fn is_repeat(&self) -> bool {
        matches!(self, Self::TimedOut { repeated: true, .. })
    }
}
