//! Faults through a proxy in front of the real registry: corrupt, truncated, delayed and refused
//! responses. A bad chunk is never served; a later read retries; no remount is needed.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;
use std::time::Duration;

use strata_tests::faults::{drop_caches, is_eio, mounts_under, proc_state, pulled, strata_env};
use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, push_image};
use strata_tests::proxy::{Fault, Proxy};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};

#[test]
fn corrupt_truncated_refused_and_slow_registries() {
    if !require_root_fuse("corrupt_truncated_refused_and_slow_registries") {
        return;
    }
    let w = pulled("t/faults", &rich_layers(false));
    let (proxy, reference, root) = (&w.proxy, w.image.clone(), w.root.clone());
    let state = &w.state;
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    let busybox = m.dir.join("bin/busybox");

    // Corrupt bytes: EIO, logged with the chunk digest; nothing bad is cached.
    proxy.set(Fault::CorruptRanges);
    assert!(is_eio(std::fs::read(&busybox)), "corrupt chunk was served");
    // The layer store serves the mount: its log has the read errors.
    let log = std::fs::read_to_string(root.join("layers.log")).unwrap();
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

fn limit(
    secs: u64,
    status: u16,
    retry_after_secs: u64,
    http_date: bool,
    ranges_only: bool,
) -> Fault {
    Fault::RateLimit {
        until: std::time::Instant::now() + Duration::from_secs(secs),
        status,
        retry_after_secs,
        http_date,
        ranges_only,
    }
}

/// Issue 22, kind 2: a registry answering 429/503 with Retry-After (seconds or an HTTP date) for a
/// while: pull (token, manifest, blobs) and lazy reads (ranges) wait as asked and succeed; a
/// limit longer than the allowed wait fails with one line naming the registry and the cause.
#[test]
fn rate_limits_are_waited_out_within_a_bound() {
    if !require_root_fuse("rate_limits_are_waited_out_within_a_bound") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/limit", "1", &rich_layers(false), Comp::Native);
    push_image(&reg.addr, "t/limit", "gz", &rich_layers(false), Comp::Gzip);
    let proxy = Proxy::start(&reg.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");

    // 429 + Retry-After: 3 for 4 s: the old client gave up after 1.7 s.
    proxy.set(limit(4, 429, 3, false, false));
    let t = std::time::Instant::now();
    ok(&root, &["pull", &format!("{}/t/limit:1", proxy.addr)]);
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());

    // Lazy reads: only range requests are limited; the read waits and gets the right bytes.
    let m = Mounted::new(
        &root,
        &format!("{}/t/limit:1", proxy.addr),
        &state.path().join("mnt"),
    );
    proxy.set(limit(3, 429, 2, false, true));
    proxy.reset();
    let t = std::time::Instant::now();
    assert_eq!(
        std::fs::read(m.dir.join("bin/busybox")).unwrap(),
        strata_tests::layers::noise(300_000, 1)
    );
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    drop(m);

    // 503 with an HTTP date, on a pull that streams a whole gzip layer (after the lazy read:
    // the chunks this caches would have served it).
    proxy.set(limit(3, 503, 2, true, false));
    ok(
        &root,
        &["pull", "--all", &format!("{}/t/limit:gz", proxy.addr)],
    );

    // Past the bound: one clear line, exit 125, nothing stored under the name.
    proxy.set(limit(60, 429, 5, false, false));
    let t = std::time::Instant::now();
    let out = strata_tests::strata::run(
        &root,
        &[
            "--rate-limit-wait",
            "8",
            "pull",
            &format!("{}/t/limit:gz2", proxy.addr),
        ],
    );
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    // pull's errors exit 1, as docker's CLI.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(
        err.contains(&proxy.addr) && err.contains("rate limited") && err.contains("429"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// The read deadline the stall test gives its commands (`STRATA_READ_TIMEOUT_SECS`).
const STALL_DEADLINE: Duration = Duration::from_secs(5);

/// `strata --root ROOT ARGS...` with the short read deadline, its output.
fn strata_with_deadline(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    strata_env(root, args, &[("STRATA_READ_TIMEOUT_SECS", "5")])
}

/// Reads `path` (cold) in a thread: whether it failed with EIO, and how long it took.
fn timed_eio(path: &std::path::Path) -> (bool, Duration) {
    let t = std::time::Instant::now();
    let r = std::fs::read(path);
    (is_eio(r), t.elapsed())
}

/// Issue 17: a registry that accepts and then sends nothing, or stops mid-body. A cold read
/// fails with EIO within the read deadline (one log line naming the layer, the chunk and the
/// registry), a reader killed while it waits is gone at once (never left in D state), and reads
/// work again once the registry answers — no remount.
#[test]
fn a_stalled_registry_fails_reads_at_the_deadline_and_readers_stay_killable() {
    if !require_root_fuse(
        "a_stalled_registry_fails_reads_at_the_deadline_and_readers_stay_killable",
    ) {
        return;
    }
    let w = pulled("t/stall", &rich_layers(false));
    let (proxy, reference, root) = (&w.proxy, w.image.clone(), w.root.clone());
    let state = &w.state;
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = strata_with_deadline(
        &root,
        &[
            "mount",
            "--detach",
            "--prefetch",
            "none",
            &reference,
            mnt.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted::adopt(&root, &mnt);
    let busybox = m.dir.join("bin/busybox");
    // The tree is up (metadata needs no registry).
    assert_eq!(std::fs::metadata(&busybox).unwrap().len(), 300_000);

    // Nothing at all comes back: EIO within the deadline (the kernel's retry of the page the
    // failed readahead left fails at once), not after minutes.
    proxy.set(Fault::Stall);
    let (eio, took) = timed_eio(&busybox);
    eprintln!("stalled read: EIO {eio} after {took:?}");
    assert!(eio, "a stalled read did not fail with EIO");
    // Not minutes (the proxy holds for two): the deadline, plus a short one for the kernel's
    // retries of the same page.
    assert!(
        took >= STALL_DEADLINE && took < STALL_DEADLINE * 3,
        "{took:?}"
    );
    let log = std::fs::read_to_string(root.join("layers.log")).unwrap();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no answer within"))
        .collect();
    assert_eq!(failed.len(), 1, "one line for one read: {log}");
    for l in &failed {
        assert!(
            l.contains("ERROR")
                && l.contains(&proxy.addr)
                && l.contains("layer sha256:")
                && l.contains("chunk")
                && l.contains("within 5s"),
            "{l}"
        );
    }

    // A reader killed while it waits for the stalled registry dies at once, well before the
    // deadline: the read is answered when its reader is being killed. (After the two seconds
    // in which a new read of a chunk that just failed fails at once.)
    std::thread::sleep(Duration::from_millis(2500));
    let mut reader = Command::new("cat")
        .arg(&busybox)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = reader.id();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        reader.try_wait().unwrap(),
        None,
        "the reader waits for the stalled registry"
    );
    let state_before = proc_state(pid);
    let killed = std::time::Instant::now();
    reader.kill().unwrap();
    let mut gone = false;
    while killed.elapsed() < Duration::from_secs(2) {
        if reader.try_wait().unwrap().is_some() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "killed reader (state {state_before:?}) gone after {:?}",
        killed.elapsed()
    );
    assert!(
        gone,
        "a killed reader was still there after {:?} (state {:?}, before the kill {state_before:?})",
        killed.elapsed(),
        proc_state(pid)
    );

    // The transfer stops half way through a range: EIO within the deadline as well.
    proxy.set(Fault::StallMidBody);
    let (eio, took) = timed_eio(&m.dir.join("data/sparse"));
    eprintln!("read stalled mid-body: EIO {eio} after {took:?}");
    assert!(eio, "a read stalled mid-body did not fail with EIO");
    assert!(took < STALL_DEADLINE * 3, "{took:?}");

    // The registry answers again: the same mount reads the right bytes.
    proxy.set(Fault::None);
    assert_eq!(
        std::fs::read(&busybox).unwrap(),
        strata_tests::layers::noise(300_000, 1)
    );
    assert_eq!(
        std::fs::read(m.dir.join("data/sparse")).unwrap().len(),
        300_000 + (4 << 20) + 100_000
    );
}

/// Issue 17: `strata run` whose image's registry stalls once the container starts: the run
/// ends (with the read deadline) with an error naming the deadline and the registry, leaves no
/// mount, and the same run works once the registry answers.
#[test]
fn a_run_on_a_stalled_registry_ends_with_a_clear_error() {
    if !require_root_fuse("a_run_on_a_stalled_registry_ends_with_a_clear_error") {
        return;
    }
    let w = pulled("t/stallrun", &strata_tests::fixtures::runnable_layers());
    let (proxy, image, root) = (&w.proxy, w.image.clone(), w.root.clone());
    proxy.set(Fault::Stall);
    let out = strata_with_deadline(&root, &["run", "--rm", &image, "cat", "/data/owned"]);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("stalled run: {err}");
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no answer within 5s") && err.contains(&proxy.addr),
        "{err}"
    );
    assert_eq!(
        mounts_under(&root),
        Vec::<String>::new(),
        "a stalled run left mounts"
    );
    proxy.set(Fault::None);
    let out = strata_with_deadline(&root, &["run", "--rm", &image, "cat", "/data/owned"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "mine",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
