//! The per-read deadline's settings and its memory of recent timeouts (DESIGN.md §8); the
//! bounded reads themselves are in `deadline.rs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_formats::index::{Chunk, ChunkLoc};
use strata_oci::digest::Digest;

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
pub(crate) const REPEAT_WINDOW: Duration = Duration::from_secs(2);

/// The deadline of such a repeated read (at most a quarter of the deadline): long enough for
/// a registry that answers again, short enough that a stalled one costs one read little more.
pub(crate) const REPEAT_DEADLINE: Duration = Duration::from_secs(1);

/// Chunks whose read passed its deadline lately, with what the error said of them.
#[derive(Debug, Default)]
pub(crate) struct RecentTimeouts(Mutex<HashMap<Digest, (Instant, String)>>);

impl RecentTimeouts {
    pub(crate) fn note(&self, d: Digest, what: String, window: Duration) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (at, _)| at.elapsed() < window);
        m.insert(d, (Instant::now(), what));
    }

    /// What the error said of a chunk of `chunks` whose read passed its deadline within
    /// `window`, if `still_missing` says it is still missing.
    pub(crate) fn find(
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
