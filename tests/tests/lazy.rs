//! Laziness, proven by counting what reaches the registry through a proxy.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::sync::Arc;

use strata_tests::fixtures::{BIG_PATH, big, rich_layers};
use strata_tests::layers::{Comp, push_image};
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};

fn parse_range(line: &str) -> Option<(u64, u64)> {
    let r = line.split("Range: bytes=").nth(1)?;
    let (a, b) = r.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[test]
fn pull_fetches_only_tocs_and_reads_fetch_only_what_they_touch() {
    if !require_root_fuse("pull_fetches_only_tocs_and_reads_fetch_only_what_they_touch") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(&reg.addr, "t/lazy", "1", &rich_layers(true), Comp::Native);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/lazy:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");

    ok(&root, &["pull", &reference]);
    let (reqs, bytes) = proxy.counts();
    let share = bytes as f64 / img.blob_bytes as f64;
    eprintln!(
        "lazy pull: {reqs} requests, {bytes} bytes of a {} byte image ({:.3}%)",
        img.blob_bytes,
        share * 100.0
    );
    assert!(
        share <= 0.015,
        "pull fetched {bytes} bytes, {:.2}% of the image",
        share * 100.0
    );

    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    proxy.reset();
    // Metadata never touches the network.
    let count = walkdir_count(&m.dir);
    assert!(count > 30);
    assert_eq!(proxy.counts(), (0, 0), "metadata walk reached the registry");

    let text = std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap();
    assert_eq!(text, "ID=strata-test\nVERSION_ID=2\n");
    let (reqs, bytes) = proxy.counts();
    eprintln!("one small file: {reqs} requests, {bytes} bytes");
    assert_eq!(reqs, 1, "{:?}", proxy.stats.log.lock().unwrap());
    assert!(bytes < 1024, "reading a 28-byte file fetched {bytes} bytes");

    // A read in the middle of the 64 MiB file fetches about what it touches.
    proxy.reset();
    let f = std::fs::File::open(m.dir.join(BIG_PATH)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 10 << 20).unwrap();
    assert!(buf == big()[10 << 20..11 << 20]);
    let (reqs, bytes) = proxy.counts();
    eprintln!("1 MiB in the middle of a 64 MiB file: {reqs} requests, {bytes} bytes");
    assert!(bytes < 12 << 20, "1 MiB read fetched {bytes} bytes");
    assert!(bytes >= 1 << 20);
}

fn walkdir_count(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let _ = std::fs::symlink_metadata(e.path()).unwrap();
        let _ = xattr::list(e.path()).map(|l| l.count());
        n += 1;
        if e.file_type().unwrap().is_dir() {
            n += walkdir_count(&e.path());
        }
    }
    n
}

#[test]
fn concurrent_readers_share_one_request_per_chunk() {
    if !require_root_fuse("concurrent_readers_share_one_request_per_chunk") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/conc", "1", &rich_layers(true), Comp::Native);
    let proxy = Proxy::start(&reg.addr);
    proxy.set(strata_tests::proxy::Fault::Delay(
        std::time::Duration::from_millis(150),
    ));
    let reference = format!("{}/t/conc:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    proxy.reset();
    let path = Arc::new(m.dir.join(BIG_PATH));
    let want = Arc::new(big());
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (path, want) = (path.clone(), want.clone());
            std::thread::spawn(move || {
                // Separate file descriptors, overlapping ranges, all cold.
                let f = std::fs::File::open(&*path).unwrap();
                let off = (20 << 20) + i * 4096;
                let mut buf = vec![0u8; 2 << 20];
                std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off as u64).unwrap();
                assert!(buf == want[off..off + (2 << 20)]);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = proxy.stats.log.lock().unwrap().clone();
    let mut ranges: Vec<(u64, u64)> = log.iter().filter_map(|l| parse_range(l)).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "overlapping range requests {:?} and {:?}: {log:?}",
            w[0],
            w[1]
        );
    }
    eprintln!("8 concurrent readers: {} range requests", ranges.len());
}

#[test]
fn estargz_is_read_lazily_too() {
    if !require_root_fuse("estargz_is_read_lazily_too") {
        return;
    }
    let reg = Registry::start();
    let layers = vec![vec![
        strata_tests::layers::dir("data"),
        strata_tests::layers::file("data/small", b"small file"),
        strata_tests::layers::file(BIG_PATH, &big()),
    ]];
    let img = push_image(&reg.addr, "t/esgz-lazy", "1", &layers, Comp::Estargz);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/esgz-lazy:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &reference]);
    let (_, pulled) = proxy.counts();
    eprintln!("estargz lazy pull: {pulled} bytes of {}", img.blob_bytes);
    assert!((pulled as f64) < img.blob_bytes as f64 * 0.015);
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    proxy.reset();
    assert_eq!(
        std::fs::read(m.dir.join("data/small")).unwrap(),
        b"small file"
    );
    let f = std::fs::File::open(m.dir.join(BIG_PATH)).unwrap();
    let mut buf = vec![0u8; 100_000];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 30 << 20).unwrap();
    assert!(buf == big()[30 << 20..(30 << 20) + 100_000]);
    let (reqs, bytes) = proxy.counts();
    eprintln!("estargz: small file + 100 kB of the big one: {reqs} requests, {bytes} bytes");
    assert!(bytes < 2 << 20, "fetched {bytes}");
}

#[test]
fn plain_layers_pull_lazily_and_stream_on_first_mount() {
    if !require_root_fuse("plain_layers_pull_lazily_and_stream_on_first_mount") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(&reg.addr, "t/plain", "1", &rich_layers(false), Comp::Gzip);
    let proxy = Proxy::start(&reg.addr);
    proxy.set(strata_tests::proxy::Fault::Delay(
        std::time::Duration::from_millis(300),
    ));
    let reference = format!("{}/t/plain:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &reference]);
    let (_, pulled) = proxy.counts();
    assert!(
        pulled < img.blob_bytes / 20,
        "a lazy pull of a plain image fetched {pulled} bytes"
    );
    // The mount is there at once; the first look waits for the layers to stream.
    let started = std::time::Instant::now();
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    let mounted_in = started.elapsed();
    let text = std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap();
    assert_eq!(text, "ID=strata-test\nVERSION_ID=2\n");
    eprintln!(
        "plain image: mounted in {mounted_in:?}, first read after {:?}",
        started.elapsed()
    );
    let (_, bytes) = proxy.counts();
    assert!(
        bytes >= img.blob_bytes,
        "plain layers stream whole: {bytes} < {}",
        img.blob_bytes
    );
    drop(m);
    // Streamed once: a second mount needs nothing from the registry.
    proxy.reset();
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    assert_eq!(std::fs::read(m.dir.join("data/owned")).unwrap(), b"mine");
    assert_eq!(proxy.counts().0, 0);
}

#[test]
fn complete_files_are_served_by_kernel_passthrough() {
    if !require_root_fuse("complete_files_are_served_by_kernel_passthrough") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/pt", "1", &rich_layers(true), Comp::Native);
    let reference = format!("{}/t/pt:1", reg.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(
        &root,
        &[
            "--log-level",
            "debug",
            "mount",
            "--detach",
            &reference,
            mnt.to_str().unwrap(),
        ],
    );
    let _unmount = Unmount(root.clone(), mnt.clone());
    let want = big();
    assert!(
        std::fs::read(mnt.join(BIG_PATH)).unwrap() == want,
        "first (fetching) read"
    );
    // The layer store serves the mount (its server logs at the level of the command that
    // started it).
    let log_path = root.join("layers.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    if log.contains("kernel lacks FUSE passthrough") {
        assert!(
            std::env::var("CI").is_err(),
            "CI machines run kernels with FUSE passthrough"
        );
        eprintln!("SKIPPED passthrough check: this kernel has no FUSE passthrough");
        return;
    }
    assert!(
        log.contains(" READ "),
        "the first read goes through FUSE (and the log shows it)"
    );
    let before = log.len();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    assert!(
        std::fs::read(mnt.join(BIG_PATH)).unwrap() == want,
        "passthrough read"
    );
    let after = std::fs::read_to_string(&log_path).unwrap();
    let new = &after[before..];
    assert!(new.contains(" OPEN "), "{new}");
    assert!(
        !new.contains(" READ "),
        "a complete file was still read through FUSE:\n{new}"
    );
}

struct Unmount(std::path::PathBuf, std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = strata_tests::strata::run(&self.0, &["umount", self.1.to_str().unwrap()]);
    }
}
