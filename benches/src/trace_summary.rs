//! `strata-bench --trace-summary FILE`: what a `STRATA_TRACE` file (see
//! `strata_storage::trace`) says about a cold start: misses, time reads spent blocked,
//! requests and bytes, and how many requests were in flight at most.

use std::collections::HashMap;

use serde_json::Value;

/// The figures of one trace.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Reads that missed the chunk cache.
    pub misses: u64,
    /// Their waits added up (ms).
    pub blocked_ms: f64,
    /// Wall time during which at least one read was blocked (ms).
    pub blocked_wall_ms: f64,
    /// Requests to the registry.
    pub requests: u64,
    /// Bytes those requests asked for.
    pub bytes: u64,
    /// Requests in flight at once, at most.
    pub max_in_flight: usize,
    /// Files prefetched ahead of any read (exec-aware prefetch).
    pub prefetches: u64,
    /// Files by time blocked on them, longest first (at most ten).
    pub slowest: Vec<(String, f64)>,
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

/// The most intervals `(start, end)` that overlap at one instant.
fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    // Ends before starts at the same instant: back-to-back requests do not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    usize::try_from(max).unwrap_or(0)
}

/// Total length of the union of `intervals`.
fn union_len(mut intervals: Vec<(f64, f64)>) -> f64 {
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut total, mut cur): (f64, Option<(f64, f64)>) = (0.0, None);
    for (s, e) in intervals {
        cur = match cur {
            Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                Some((s, e))
            }
            None => Some((s, e)),
        };
    }
    total + cur.map_or(0.0, |(s, e)| e - s)
}

/// Summarises the JSON lines of a trace; lines that are not JSON objects are skipped.
pub fn summarize(text: &str) -> Summary {
    let mut s = Summary::default();
    let (mut requests, mut blocked) = (Vec::new(), Vec::new());
    let mut by_file: HashMap<String, f64> = HashMap::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let t = num(&v, "t_ms");
        match v["kind"].as_str() {
            Some("miss") => {
                let w = num(&v, "waited_ms");
                s.misses += 1;
                s.blocked_ms += w;
                blocked.push((t, t + w));
                let path = v["path"].as_str().unwrap_or("?").to_string();
                *by_file.entry(path).or_default() += w;
            }
            Some("request") => {
                s.requests += 1;
                s.bytes += v["end"].as_u64().unwrap_or(0) - v["start"].as_u64().unwrap_or(0);
                requests.push((t, t + num(&v, "ms")));
            }
            Some("prefetch") => s.prefetches += 1,
            _ => {}
        }
    }
    s.max_in_flight = max_overlap(&requests);
    s.blocked_wall_ms = union_len(blocked);
    let mut slowest: Vec<(String, f64)> = by_file.into_iter().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    slowest.truncate(10);
    s.slowest = slowest;
    s
}

/// Prints the summary of the trace at `path`; exits 1 if it cannot be read.
pub fn run(path: &str) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("strata-bench: reading trace {path}: {e}");
            std::process::exit(1);
        }
    };
    let s = summarize(&text);
    println!("trace {path}");
    println!("  misses              {}", s.misses);
    println!("  blocked (sum)       {:.1} ms", s.blocked_ms);
    println!("  blocked (wall)      {:.1} ms", s.blocked_wall_ms);
    println!("  requests            {}", s.requests);
    println!("  bytes               {}", s.bytes);
    println!("  max in flight       {}", s.max_in_flight);
    println!("  files prefetched    {}", s.prefetches);
    println!("  longest blocked files:");
    for (path, ms) in &s.slowest {
        println!("    {ms:>9.1} ms  {path}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_misses_requests_and_overlap() {
        let text = r#"{"kind":"request","t_ms":0.0,"layer":"l","start":0,"end":100,"ms":10.0}
{"kind":"request","t_ms":5.0,"layer":"l","start":100,"end":150,"ms":10.0}
{"kind":"request","t_ms":15.0,"layer":"l","start":150,"end":160,"ms":1.0}
{"kind":"request","t_ms":16.0,"layer":"l","start":160,"end":170,"ms":1.0}
not json
{"kind":"miss","t_ms":0.0,"path":"a","offset":0,"len":1,"waited_ms":10.0,"requests":[]}
{"kind":"miss","t_ms":4.0,"path":"b","offset":0,"len":1,"waited_ms":11.0,"requests":[]}
{"kind":"miss","t_ms":20.0,"path":"a","offset":9,"len":1,"waited_ms":2.0,"requests":[]}
{"kind":"prefetch","t_ms":1.0,"path":"c","why":"x"}"#;
        let s = summarize(text);
        assert_eq!(s.misses, 3);
        assert_eq!(s.requests, 4);
        assert_eq!(s.bytes, 170);
        assert_eq!(s.max_in_flight, 2);
        assert_eq!(s.prefetches, 1);
        assert!((s.blocked_ms - 23.0).abs() < 1e-9);
        assert!((s.blocked_wall_ms - 17.0).abs() < 1e-9);
        assert_eq!(s.slowest, vec![("a".into(), 12.0), ("b".into(), 11.0)]);
    }

    #[test]
    fn an_empty_trace_is_all_zero() {
        assert_eq!(summarize(""), Summary::default());
    }
}
