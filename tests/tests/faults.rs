//! Faults through a proxy in front of the real registry: corrupt, truncated, delayed and refused
//! responses. A bad chunk is never served; a later read retries; no remount is needed.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;
use std::time::Duration;

use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, push_image};
use strata_tests::proxy::{Fault, Proxy};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn is_eio(r: std::io::Result<Vec<u8>>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

#[test]
fn corrupt_truncated_refused_and_slow_registries() {
    if !require_root_fuse("corrupt_truncated_refused_and_slow_registries") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(
        &reg.addr,
        "t/faults",
        "1",
        &rich_layers(false),
        Comp::Native,
    );
    let _ = img;
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/faults:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &reference]);
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    let busybox = m.dir.join("bin/busybox");

    // Corrupt bytes: EIO, logged with the chunk digest; nothing bad is cached.
    proxy.set(Fault::CorruptRanges);
    assert!(is_eio(std::fs::read(&busybox)), "corrupt chunk was served");
    let logs = std::fs::read_dir(root.join("mounts"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let log = std::fs::read_to_string(logs).unwrap();
    assert!(
        log.contains("digest mismatch") && log.contains("sha256:"),
        "log: {log}"
    );
    // A later read retries and succeeds.
    proxy.set(Fault::None);
    let good = std::fs::read(&busybox).unwrap();
    assert_eq!(good, strata_tests::layers::noise(300_000, 1));

    // Truncated range replies: EIO, then fine.
    proxy.set(Fault::TruncateRanges);
    assert!(is_eio(std::fs::read(m.dir.join("data/sparse"))));
    proxy.set(Fault::None);
    assert_eq!(
        std::fs::read(m.dir.join("data/sparse")).unwrap().len(),
        300_000 + (4 << 20) + 100_000
    );

    // Registry down: cached content is served, uncached reads fail, and work again later.
    proxy.set(Fault::Refuse);
    drop_caches();
    assert_eq!(std::fs::read(&busybox).unwrap(), good);
    assert!(is_eio(std::fs::read(m.dir.join("usr/bin/su"))));
    proxy.set(Fault::None);
    assert_eq!(
        std::fs::read(m.dir.join("usr/bin/su")).unwrap(),
        b"#!/bin/sh\n"
    );

    // Slow registry: reads just take longer.
    proxy.set(Fault::Delay(Duration::from_millis(300)));
    assert_eq!(std::fs::read(m.dir.join("data/tagged")).unwrap(), b"tagged");
}

#[test]
fn transient_errors_are_retried_and_rangeless_registries_work() {
    if !require_root_fuse("transient_errors_are_retried_and_rangeless_registries_work") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/retry", "1", &rich_layers(false), Comp::Native);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/retry:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");

    // Two 503s in a row: the pull retries with backoff and succeeds.
    proxy.set(Fault::FailNext(2));
    ok(&root, &["pull", &reference]);
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    proxy.set(Fault::FailNext(2));
    assert_eq!(
        std::fs::read(m.dir.join("usr/bin/su")).unwrap(),
        b"#!/bin/sh\n"
    );

    // A registry that ignores Range: the blob is fetched whole once, then served locally.
    proxy.set(Fault::IgnoreRange);
    proxy.reset();
    assert_eq!(
        std::fs::read(m.dir.join("bin/busybox")).unwrap(),
        strata_tests::layers::noise(300_000, 1)
    );
    assert_eq!(std::fs::read(m.dir.join("data/owned")).unwrap(), b"mine");
    assert_eq!(std::fs::read(m.dir.join("data/attrs")).unwrap(), b"x");
    let (reqs, _) = proxy.counts();
    assert_eq!(reqs, 1, "{:?}", proxy.stats.log.lock().unwrap());
}

#[test]
fn pull_all_then_offline() {
    if !require_root_fuse("pull_all_then_offline") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(
        &reg.addr,
        "t/offline",
        "1",
        &rich_layers(false),
        Comp::Native,
    );
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/offline:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", "--all", &reference]);
    proxy.set(Fault::Refuse);
    proxy.reset();
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    let reference_tree = strata_tests::walk::ReferenceTree::new(&img.tars);
    strata_tests::walk::assert_same(
        "offline",
        &strata_tests::walk::snapshot(&m.dir),
        &strata_tests::walk::snapshot(&reference_tree.root),
    );
    assert_eq!(
        proxy.counts().0,
        0,
        "an image pulled with --all read from the registry"
    );
}
