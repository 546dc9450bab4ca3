//! Reads of SOCI layers' chunks. A SOCI chunk (`ChunkLoc::Zran`) is a piece of a span; what the
//! cache holds is the span's *compressed* bytes, named by the span digest of the ztoc, so the
//! cache verifies them like any chunk (on the way in and on the first read of each process).
//! A read inflates the span from its checkpoint (window and bit offset from the ztoc) and keeps
//! the last few inflated spans in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use strata_formats::index::{Chunk, ChunkLoc};
use strata_formats::zran;
use strata_formats::ztoc::Ztoc;
use strata_oci::digest::Digest;

use crate::cache::{CacheError, ChunkCache};

/// Inflated spans kept in memory (SOCI's spans are 4 MiB of output by default).
const KEPT_SPANS: usize = 8;
/// A span with more output than this (a gzip writer that made few deflate blocks, or a ztoc
/// that claims so) is never inflated whole: each read inflates up to what it needs, into a
/// buffer of its own size.
#[cfg(not(test))]
const KEPT_SPAN_BYTES: u64 = 8 << 20;
/// Small in tests, so that both ways are taken.
#[cfg(test)]
const KEPT_SPAN_BYTES: u64 = 1 << 20;

/// Inflated output of a span, and where in the span's output it starts.
type Inflated = (Arc<Vec<u8>>, u64);

/// Where a span's checkpoint is: its ztoc and its index there.
#[derive(Debug, Clone)]
struct SpanPoint {
    ztoc: Arc<Ztoc>,
    span: usize,
}

/// The checkpoints of the SOCI layers this process reads, by span digest, and the inflated
/// spans most recently read.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    points: Mutex<HashMap<Digest, SpanPoint>>,
    inflated: Mutex<VecDeque<(Digest, Arc<Vec<u8>>)>>,
}

impl Spans {
    /// Makes the spans of `ztoc` readable.
    pub(crate) fn register(&self, ztoc: &Arc<Ztoc>) {
        let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        for (span, d) in ztoc.span_digests.iter().enumerate() {
            points.entry(*d).or_insert_with(|| SpanPoint {
                ztoc: ztoc.clone(),
                span,
            });
        }
    }

    fn kept(&self, d: &Digest) -> Option<Arc<Vec<u8>>> {
        let kept = self.inflated.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().find(|(k, _)| k == d).map(|(_, v)| v.clone())
    }

    /// Output of the span with digest `d`, from its cached compressed bytes, and where in the
    /// span's output it starts: the whole span (kept for the next reads) when it is small
    /// enough, else only `want`; `None` if the span is not cached.
    fn output(
        &self,
        cache: &ChunkCache,
        c: &Chunk,
        d: &Digest,
        want: std::ops::Range<u64>,
    ) -> Result<Option<Inflated>, CacheError> {
        if let Some(out) = self.kept(d) {
            return Ok(Some((out, 0)));
        }
        let ChunkLoc::Zran { start, end, .. } = c.loc else {
            return Ok(None);
        };
        let point = {
            let points = self.points.lock().unwrap_or_else(|p| p.into_inner());
            points.get(d).cloned()
        };
        let Some(SpanPoint { ztoc, span }) = point else {
            return Err(CacheError::Span {
                digest: *d,
                reason: "no ztoc of this process names the span".into(),
            });
        };
        let Some(data) = cache.read_at(d, 0, strata_oci::usize_of(end - start))? else {
            return Ok(None);
        };
        let output = ztoc.zinfo.span_output(span, ztoc.uncompressed_size);
        let checkpoint = &ztoc.zinfo.checkpoints[span];
        let whole = output.end - output.start <= KEPT_SPAN_BYTES;
        let part = if whole {
            0..output.end - output.start
        } else {
            want
        };
        let len = strata_oci::usize_of(part.end - part.start);
        let out =
            zran::extract(&data, checkpoint, output.start + part.start, len).map_err(|e| {
                CacheError::Span {
                    digest: *d,
                    reason: e.to_string(),
                }
            })?;
        let out = Arc::new(out);
        if !whole {
            return Ok(Some((out, part.start)));
        }
        let mut kept = self.inflated.lock().unwrap_or_else(|p| p.into_inner());
        kept.push_back((*d, out.clone()));
        if kept.len() > KEPT_SPANS {
            kept.pop_front();
        }
        Ok(Some((out, 0)))
    }

    /// Fills `out` with the chunk's bytes from `offset` into it; false if its span is not
    /// cached.
    pub(crate) fn read_into(
        &self,
        cache: &ChunkCache,
        c: &Chunk,
        offset: u64,
        out: &mut [u8],
    ) -> Result<bool, CacheError> {
        let (Some(d), ChunkLoc::Zran { inner, .. }) = (c.digest, c.loc) else {
            return Ok(false);
        };
        let want = inner + offset..inner + offset + out.len() as u64;
        let Some((span, base)) = self.output(cache, c, &d, want.clone())? else {
            return Ok(false);
        };
        let from = strata_oci::usize_of(want.start - base);
        let Some(src) = span.get(from..from + out.len()) else {
            return Err(CacheError::Span {
                digest: d,
                reason: format!("the span's output ends before byte {}", from + out.len()),
            });
        };
        out.copy_from_slice(src);
        Ok(true)
    }
}
