//! A trace of lazy reads, for finding where a cold start waits. With `STRATA_TRACE=FILE` in
//! the environment of the process that serves reads, every read that misses the chunk cache
//! appends one JSON line to FILE, and so does every request to the blob source:
//!
//! ```text
//! {"kind":"request","t_ms":12.5,"layer":"sha256:…","start":0,"end":65536,"ms":3.1}
//! {"kind":"miss","t_ms":12.4,"layer":"sha256:…","path":"usr/bin/x","offset":0,"len":4096,
//!  "waited_ms":3.3,"requests":[[0,65536]]}
//! {"kind":"prefetch","t_ms":12.9,"layer":"sha256:…","path":"lib/libc.so.6","why":"…"}
//! ```
//!
//! `t_ms` counts from the first traced event of the process (for a request: when it was
//! sent; for a miss: when the read began). A miss names the requests that brought the chunks
//! it was missing, its own or another reader's. Off (no variable), tracing costs one branch.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use strata_oci::digest::Digest;
use tracing::warn;

/// The environment variable naming the trace file.
pub const TRACE_ENV: &str = "STRATA_TRACE";

/// An open trace: where lines go, when it began, which request brought which chunk.
#[derive(Debug)]
pub struct Trace {
    path: PathBuf,
    file: Mutex<File>,
    epoch: OnceLock<Instant>,
    served_by: Mutex<HashMap<Digest, (u64, u64)>>,
}

/// One line of the trace.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line<'a> {
    Request {
        t_ms: f64,
        layer: String,
        start: u64,
        end: u64,
        ms: f64,
    },
    Miss {
        t_ms: f64,
        layer: String,
        path: &'a str,
        offset: u64,
        len: u64,
        waited_ms: f64,
        requests: Vec<(u64, u64)>,
    },
    Prefetch {
        t_ms: f64,
        layer: String,
        path: &'a str,
        why: &'a str,
    },
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The process's trace, if `STRATA_TRACE` names a file that could be opened.
pub fn get() -> Option<&'static Trace> {
    static TRACE: OnceLock<Option<Trace>> = OnceLock::new();
    TRACE
        .get_or_init(|| {
            let path = std::env::var_os(TRACE_ENV).filter(|p| !p.is_empty())?;
            Trace::open(Path::new(&path))
                .map_err(|e| warn!(path = ?path, error = %e, "cannot open the trace"))
                .ok()
        })
        .as_ref()
}

impl Trace {
    /// A trace appending to `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            epoch: OnceLock::new(),
            served_by: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the clock at `at` if no event has yet: called when an event begins, so that one
    /// that ends late still counts from its beginning.
    pub fn mark(&self, at: Instant) {
        self.epoch.get_or_init(|| at);
    }

    fn since_epoch(&self, at: Instant) -> f64 {
        let epoch = *self.epoch.get_or_init(|| at);
        ms(at.saturating_duration_since(epoch))
    }

    fn write(&self, line: &Line<'_>) {
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write per line on an O_APPEND file: lines of several processes never interleave.
        if let Err(e) = f.write_all(&text) {
            warn!(path = %self.path.display(), error = %e, "writing the trace");
        }
    }

    /// Notes a request for bytes `start..end` of `layer`, sent at `sent` and answered at
    /// `done`, that brought the chunks `chunks`.
    pub fn request(
        &self,
        layer: &Digest,
        (start, end): (u64, u64),
        sent: Instant,
        done: Instant,
        chunks: impl IntoIterator<Item = Digest>,
    ) {
        {
            let mut m = self.served_by.lock().unwrap_or_else(|p| p.into_inner());
            for d in chunks {
                m.insert(d, (start, end));
            }
        }
        self.write(&Line::Request {
            t_ms: self.since_epoch(sent),
            layer: layer.to_string(),
            start,
            end,
            ms: ms(done.saturating_duration_since(sent)),
        });
    }

    /// The requests that brought `chunks` (each range once, in order).
    pub fn served(&self, chunks: &[Digest]) -> Vec<(u64, u64)> {
        let m = self.served_by.lock().unwrap_or_else(|p| p.into_inner());
        let mut ranges: Vec<(u64, u64)> = chunks.iter().filter_map(|d| m.get(d)).copied().collect();
        ranges.sort_unstable();
        ranges.dedup();
        ranges
    }

    /// Notes a read of `len` bytes at `offset` of file `path` in `layer` that began at `began`
    /// and missed the chunks `missing`, now cached.
    pub fn miss(
        &self,
        layer: &Digest,
        path: &str,
        (offset, len): (u64, u64),
        began: Instant,
        missing: &[Digest],
    ) {
        self.write(&Line::Miss {
            t_ms: self.since_epoch(began),
            layer: layer.to_string(),
            path,
            offset,
            len,
            waited_ms: ms(began.elapsed()),
            requests: self.served(missing),
        });
    }

    /// Notes that file `path` of `layer` is being prefetched, and why.
    pub fn prefetch(&self, layer: &Digest, path: &str, why: &str) {
        self.write(&Line::Prefetch {
            t_ms: self.since_epoch(Instant::now()),
            layer: layer.to_string(),
            path,
            why,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> Digest {
        Digest::of(b)
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_miss_names_the_requests_that_brought_its_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        let t = Trace::open(&path).unwrap();
        let (layer, a, b, c) = (digest(b"l"), digest(b"a"), digest(b"b"), digest(b"c"));
        let began = Instant::now();
        t.request(&layer, (100, 300), began, began, [a, b]);
        t.request(&layer, (0, 100), began, began, [c]);
        t.miss(&layer, "usr/lib/x.so", (4096, 8192), began, &[b, a, c]);
        t.miss(&layer, "etc/other", (0, 1), began, &[digest(b"unknown")]);
        let l = lines(&path);
        assert_eq!(l.len(), 4);
        assert_eq!(l[0]["kind"], "request");
        assert_eq!(
            (l[0]["start"].as_u64(), l[0]["end"].as_u64()),
            (Some(100), Some(300))
        );
        assert_eq!(l[0]["layer"], layer.to_string());
        assert_eq!(l[2]["kind"], "miss");
        assert_eq!(l[2]["path"], "usr/lib/x.so");
        assert_eq!(
            (l[2]["offset"].as_u64(), l[2]["len"].as_u64()),
            (Some(4096), Some(8192))
        );
        assert_eq!(l[2]["requests"], serde_json::json!([[0, 100], [100, 300]]));
        assert!(l[2]["waited_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(l[3]["requests"], serde_json::json!([]));
    }

    #[test]
    fn time_counts_from_the_first_event_and_appends_to_existing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        std::fs::write(&path, "{\"kind\":\"earlier\"}\n").unwrap();
        let t = Trace::open(&path).unwrap();
        let layer = digest(b"l");
        let first = Instant::now();
        let later = first + Duration::from_millis(250);
        t.request(&layer, (0, 10), first, later, []);
        t.request(&layer, (10, 20), later, later, []);
        t.prefetch(&layer, "lib/ld.so", "exec of bin/x");
        let l = lines(&path);
        assert_eq!(l[0]["kind"], "earlier");
        assert_eq!(l[1]["t_ms"].as_f64(), Some(0.0));
        assert_eq!(l[1]["ms"].as_f64(), Some(250.0));
        assert_eq!(l[2]["t_ms"].as_f64(), Some(250.0));
        assert_eq!(l[3]["kind"], "prefetch");
        assert_eq!(l[3]["why"], "exec of bin/x");
    }
}
