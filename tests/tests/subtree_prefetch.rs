//! Subtree prefetch end to end: once a mount's reads of `.pyc` files have missed in three
//! directories, the other `.pyc` files under their common ancestor arrive without being asked
//! for, and the `.py` sources beside them do not.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_tests::layers::{Comp, Item, dir, file, noise};
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, run_env};
use strata_tests::world::World;

/// Package directories under `lib/`.
const PACKAGES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// `lib/P/__pycache__/m.pyc` (20 KB) and `lib/P/m.py` (300 KB, more than the gap requests are
/// merged across) for each package.
fn library() -> Vec<Item> {
    let mut items = vec![dir("lib")];
    for (i, p) in PACKAGES.iter().enumerate() {
        items.push(dir(&format!("lib/{p}")));
        items.push(dir(&format!("lib/{p}/__pycache__")));
        items.push(file(&format!("lib/{p}/m.py"), &noise(300_000, i as u64)));
        let pyc = noise(20_000, 100 + i as u64);
        items.push(file(&format!("lib/{p}/__pycache__/m.pyc"), &pyc));
    }
    items
}

fn trace_lines(trace: &Path) -> Vec<Value> {
    std::fs::read_to_string(trace)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn misses_of(trace: &Path, suffix: &str) -> usize {
    trace_lines(trace)
        .iter()
        .filter(|l| l["kind"] == "miss" && l["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .count()
}

#[test]
fn misses_in_three_directories_bring_the_rest_of_their_kind() {
    if !require_root_fuse("misses_in_three_directories_bring_the_rest_of_their_kind") {
        return;
    }
    let w = World::start(&[library()], Comp::Native);
    let trace = w.state.path().join("trace.jsonl");
    let mnt = w.state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let args = ["mount", "--detach", &w.base, mnt.to_str().unwrap()];
    let out = run_env(&w.root, &args, &[("STRATA_TRACE", &trace)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted::adopt(&w.root, &mnt);
    let pyc = |p: &str| m.dir.join(format!("lib/{p}/__pycache__/m.pyc"));
    for (i, p) in PACKAGES[..3].iter().enumerate() {
        let got = std::fs::read(pyc(p)).unwrap();
        assert!(got == noise(20_000, 100 + i as u64), "lib/{p} read wrong");
    }
    // The third directory's miss started the prefetch of lib/'s .pyc files.
    let started = Instant::now();
    let prefetch = loop {
        let found = trace_lines(&trace).into_iter().find(|l| {
            l["kind"] == "prefetch" && l["why"].as_str().is_some_and(|w| w.contains("*.pyc"))
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no subtree prefetch: {:#?}",
            trace_lines(&trace)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        prefetch["path"].as_str().unwrap().ends_with("lib"),
        "{prefetch}"
    );
    // Wait until the registry has seen no request for a while (bounded): the prefetch is done.
    let count = || w.proxy.stats.log.lock().unwrap().len();
    let mut last = (count(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "requests never settled"
        );
        std::thread::sleep(Duration::from_millis(100));
        if count() != last.0 {
            last = (count(), Instant::now());
        }
    }
    // The other packages' .pyc files read without a miss and without a request.
    let before = count();
    for (i, p) in PACKAGES.iter().enumerate().skip(3) {
        let got = std::fs::read(pyc(p)).unwrap();
        assert!(got == noise(20_000, 100 + i as u64), "lib/{p} read wrong");
    }
    assert_eq!(
        count(),
        before,
        "reading the prefetched files asked the registry"
    );
    assert_eq!(misses_of(&trace, "f/__pycache__/m.pyc"), 0);
    // A source beside them was not fetched: its read misses.
    let src = std::fs::read(m.dir.join("lib/f/m.py")).unwrap();
    assert!(src == noise(300_000, 5), "lib/f/m.py read wrong");
    assert!(
        misses_of(&trace, "lib/f/m.py") > 0,
        "the .py came with the .pyc files"
    );
}
