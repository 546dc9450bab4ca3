//! Exec-aware prefetch end to end: a cold `strata run` of a dynamically linked program (the
//! host's `ls` with its loader and libraries) fetches the libraries as soon as the program is
//! opened for exec, before the loader first reads them, and never fetches a byte twice.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use strata_tests::layers::{Comp, Item, dir};
use strata_tests::proxy::Fault;
use strata_tests::require_root_fuse;
use strata_tests::strata::{bin, store_idle_secs};
use strata_tests::world::World;

/// `strata --root ROOT ARGS...` with `STRATA_TRACE=trace`; through the layer store or (not
/// `store`) a per-container mount of the merged image.
fn traced(root: &Path, trace: &Path, store: bool, args: &[&str]) -> Output {
    Command::new(bin())
        .env("STRATA_LAYER_STORE", if store { "1" } else { "0" })
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("STRATA_LOG")
        .env("STRATA_TRACE", trace)
        .env("STRATA_LAYER_STORE_IDLE_SECS", store_idle_secs())
        .output()
        .unwrap()
}

/// The files `ldd PROGRAM` says it loads (absolute paths), the loader among them.
fn ldd(program: &str) -> Vec<String> {
    let out = Command::new("ldd").arg(program).output().expect("ldd");
    assert!(out.status.success(), "ldd {program}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(str::to_string)
        .collect()
}

/// A layer with `program` and everything it loads at the paths `ldd` names (regular files, so
/// that the image does not depend on the host's symlinks).
fn program_layer(program: &str, libs: &[String]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for path in libs.iter().map(String::as_str).chain([program]) {
        let rel = path.trim_start_matches('/');
        let mut at = String::new();
        for comp in rel.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            at = if at.is_empty() {
                comp.to_string()
            } else {
                format!("{at}/{comp}")
            };
            if dirs.insert(at.clone()) {
                items.push(dir(&at));
            }
        }
        items.push(Item::File {
            path: rel.into(),
            mode: 0o755,
            data: std::fs::read(path).unwrap(),
            uid: 0,
            gid: 0,
            xattrs: vec![],
        });
    }
    items
}

/// `(blob, start, end)` of each range request the registry saw.
fn ranges_seen(log: &[String]) -> Vec<(String, u64, u64)> {
    log.iter()
        .filter_map(|l| {
            let blob = l.split("/blobs/").nth(1)?.split(' ').next()?.to_string();
            let (a, b) = l.split("Range: bytes=").nth(1)?.trim().split_once('-')?;
            Some((blob, a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

#[test]
fn exec_prefetches_the_libraries_before_the_loader_reads_them() {
    if !require_root_fuse("exec_prefetches_the_libraries_before_the_loader_reads_them") {
        return;
    }
    libraries_come_before_their_first_read(true);
}

#[test]
fn exec_prefetch_works_in_a_per_container_mount_too() {
    if !require_root_fuse("exec_prefetch_works_in_a_per_container_mount_too") {
        return;
    }
    libraries_come_before_their_first_read(false);
}

fn libraries_come_before_their_first_read(store: bool) {
    let program = "/bin/ls";
    let libs = ldd(program);
    let lib = libs
        .iter()
        .find(|l| l.contains("libc.so"))
        .expect("ls links libc")
        .clone();
    let w = World::start(&[program_layer(program, &libs)], Comp::Native);
    // Every request takes a while, as over a real link: what runs in parallel shows.
    w.proxy.set(Fault::Delay(Duration::from_millis(150)));
    let trace = w.state.path().join("trace.jsonl");
    let out = traced(
        &w.root,
        &trace,
        store,
        &["run", "--rm", &w.base, program, "/"],
    );
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bin"));

    let lines: Vec<Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of_lib = |kind: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| {
                l["kind"] == kind
                    && l["path"]
                        .as_str()
                        .is_some_and(|p| format!("/{p}").ends_with(&lib))
            })
            .collect()
    };
    let prefetched = of_lib("prefetch");
    assert_eq!(prefetched.len(), 1, "{lib} prefetched once: {lines:#?}");
    assert!(prefetched[0]["why"].as_str().unwrap().ends_with(program));
    let started = prefetched[0]["t_ms"].as_f64().unwrap();
    // A read of the library either found its chunks cached (no miss) or waited for requests
    // sent before it began: the prefetch's, never its own.
    let misses = of_lib("miss");
    let requests: HashMap<(u64, u64), f64> = lines
        .iter()
        .filter(|l| l["kind"] == "request")
        .map(|l| {
            let r = (l["start"].as_u64().unwrap(), l["end"].as_u64().unwrap());
            (r, l["t_ms"].as_f64().unwrap())
        })
        .collect();
    for m in &misses {
        let began = m["t_ms"].as_f64().unwrap();
        assert!(started <= began, "prefetch at {started} after a miss: {m}");
        for r in m["requests"].as_array().unwrap() {
            let sent = requests[&(r[0].as_u64().unwrap(), r[1].as_u64().unwrap())];
            assert!(sent <= began, "{m} waited for a request sent at {sent}");
        }
    }
    eprintln!("{} misses on {lib} after its prefetch", misses.len());

    // No byte of a blob was asked for twice.
    let mut seen = ranges_seen(&w.proxy.stats.log.lock().unwrap());
    assert!(!seen.is_empty(), "no range request reached the registry");
    seen.sort();
    for pair in seen.windows(2) {
        let ((b1, _, e1), (b2, s2, _)) = (&pair[0], &pair[1]);
        assert!(b1 != b2 || s2 > e1, "fetched twice: {pair:?}");
    }
}
