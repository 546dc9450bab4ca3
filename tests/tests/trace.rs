//! `STRATA_TRACE`: a cold `strata run` writes one JSON line per read that missed the chunk
//! cache (naming the file it read) and one per range request to the registry.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use strata_tests::fixtures::busybox_layer;
use strata_tests::layers::{Comp, file, noise};
use strata_tests::require_root_fuse;
use strata_tests::strata::{bin, store_idle_secs};
use strata_tests::world::World;

/// `strata --root ROOT ARGS...` with `STRATA_TRACE=trace`.
fn traced(root: &Path, trace: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("STRATA_LOG")
        .env("STRATA_TRACE", trace)
        .env("STRATA_LAYER_STORE_IDLE_SECS", store_idle_secs())
        .output()
        .unwrap()
}

fn read_trace(trace: &Path) -> Vec<Value> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a trace line is JSON"))
        .collect()
}

#[test]
fn a_cold_run_traces_each_miss_with_its_file_and_request() {
    if !require_root_fuse("a_cold_run_traces_each_miss_with_its_file_and_request") {
        return;
    }
    let data = noise(3 << 20, 19);
    let mut layer = busybox_layer();
    layer.push(file("data.bin", &data));
    let w = World::start(&[layer], Comp::Native);
    let trace = w.state.path().join("trace.jsonl");
    let out = traced(
        &w.root,
        &trace,
        &[
            "run",
            "--rm",
            &w.base,
            "/bin/busybox",
            "wc",
            "-c",
            "/data.bin",
        ],
    );
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&data.len().to_string()));

    let lines = read_trace(&trace);
    let kind = |k: &'static str| lines.iter().filter(move |l| l["kind"] == k);
    let requests: Vec<(u64, u64)> = kind("request")
        .map(|r| (r["start"].as_u64().unwrap(), r["end"].as_u64().unwrap()))
        .collect();
    let misses: Vec<&Value> = kind("miss").collect();
    let paths: Vec<&str> = misses.iter().filter_map(|m| m["path"].as_str()).collect();
    for want in ["bin/busybox", "data.bin"] {
        assert!(
            paths
                .iter()
                .any(|p| p.ends_with(&format!("/diff/{want}")) || *p == want),
            "no miss names {want}: {paths:?}"
        );
    }
    assert!(!requests.is_empty(), "no request traced");
    let (proxied, _) = w.proxy.counts();
    assert!(
        requests.len() as u64 <= proxied,
        "{} traced requests but the registry saw {proxied}",
        requests.len()
    );
    for m in &misses {
        assert!(m["waited_ms"].as_f64().is_some_and(|w| w >= 0.0), "{m}");
        assert!(m["len"].as_u64().is_some_and(|l| l > 0), "{m}");
        let served = m["requests"].as_array().unwrap();
        assert!(!served.is_empty(), "a miss names no request: {m}");
        for r in served {
            let r = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
            assert!(
                requests.contains(&r),
                "{r:?} of {m} is not a traced request"
            );
        }
    }
    // Without the variable, nothing is written.
    let quiet = w.state.path().join("root2");
    let out = strata_tests::strata::run(&quiet, &["run", "--rm", &w.base, "/bin/busybox", "true"]);
    assert!(out.status.success());
    assert_eq!(read_trace(&trace).len(), lines.len());
}
