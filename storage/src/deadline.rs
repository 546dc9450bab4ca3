//! The per-read deadline (DESIGN.md §8): a read that waits for the network longer than this
//! fails (EIO for a FUSE reader) naming the layer, the chunk and the registry, instead of
//! hanging on a stalled registry. Retries of the request, waits for another reader's fetch of
//! the same chunk and refetches of evicted chunks all run inside it.

use std::future::Future;

use strata_formats::index::Chunk;

use crate::lazy::{ChunkFetcher, FetchError, LayerSource};
pub use crate::read_deadline::{DEFAULT_READ_DEADLINE, READ_TIMEOUT_ENV, read_deadline};
use crate::read_deadline::{REPEAT_DEADLINE, REPEAT_WINDOW, describe};
use crate::source::{RangeReply, SourceError};

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
