//! Prefetch profiles: `strata profile` records what a run read and stores it with the image;
//! after a push, a cold start on an empty root fetches exactly those chunks up front
//! (`--prefetch profile`), the whole image in the background (`all`), or nothing (`none`).
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Comp, dir, file, noise, sha};
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok, run};
use strata_tests::world::World;

const MIB: usize = 1 << 20;

/// How many of the 128 KiB chunks of `data` the chunk cache under `root` holds, of how many.
fn cached(root: &Path, data: &[u8]) -> (usize, usize) {
    let total = data.chunks(128 << 10).count();
    let have = data
        .chunks(128 << 10)
        .filter(|c| {
            let hex = sha(c).trim_start_matches("sha256:").to_string();
            root.join("cache/chunks")
                .join(&hex[..2])
                .join(&hex)
                .exists()
        })
        .count();
    (have, total)
}

/// Waits up to 30 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_recorded_profile_travels_with_the_image_and_is_fetched_first() {
    if !require_root_fuse("a_recorded_profile_travels_with_the_image_and_is_fetched_first") {
        return;
    }
    let used = noise(3 * MIB + 1000, 7);
    let unused = noise(3 * MIB, 8);
    let mut layers = runnable_layers();
    layers.push(vec![
        dir("data"),
        file("data/used.bin", &used),
        file("data/unused.bin", &unused),
    ]);
    let w = World::start(&layers, Comp::Native);
    let profiled = format!("{}/t/prof:1", w.proxy.addr);

    // Record: the command reads used.bin only.
    let rec_root = w.state.path().join("rec");
    let out = run(
        &rec_root,
        &[
            "profile",
            "--tag",
            &profiled,
            &w.base,
            "sh",
            "-c",
            "cat /data/used.bin > /dev/null",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "profile failed: {stderr}");
    assert!(stderr.contains("Profile: "), "{stderr}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.starts_with(&format!("{profiled}@sha256:")),
        "{printed}"
    );
    ok(&rec_root, &["push", "-q", &profiled]);

    // A command that fails records nothing and tags nothing.
    let bad = format!("{}/t/prof:bad", w.proxy.addr);
    let out = run(&rec_root, &["profile", "--tag", &bad, &w.base, "false"]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exited with code 1"), "{stderr}");
    assert!(!ok(&rec_root, &["images"]).contains("prof:bad"));

    // profile: a mount on an empty root fetches used.bin's chunks without anyone reading them,
    // and never unused.bin's.
    let root = w.state.path().join("profile");
    let mnt = w.state.path().join("mnt-profile");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(
        &root,
        &[
            "mount",
            "-d",
            "--prefetch",
            "profile",
            &profiled,
            mnt.to_str().unwrap(),
        ],
    );
    let m = Mounted::adopt(&root, &mnt);
    eventually("the profile's chunks to arrive", || {
        let (have, total) = cached(&root, &used);
        have == total
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        cached(&root, &unused).0,
        0,
        "profile mode fetched beyond the profile"
    );
    assert_eq!(std::fs::read(mnt.join("data/used.bin")).unwrap(), used);
    drop(m);

    // all (and auto, for an image with a profile): the rest follows in the background.
    let root = w.state.path().join("all");
    let mnt = w.state.path().join("mnt-all");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(&root, &["mount", "-d", &profiled, mnt.to_str().unwrap()]);
    let m = Mounted::adopt(&root, &mnt);
    eventually("the rest of the image to arrive", || {
        cached(&root, &unused).0 == cached(&root, &unused).1
    });
    assert_eq!(std::fs::read(mnt.join("data/unused.bin")).unwrap(), unused);
    drop(m);

    // none: nothing is fetched until it is read; a run still works.
    let root = w.state.path().join("none");
    w.proxy.reset();
    let out = ok(
        &root,
        &[
            "run",
            "--rm",
            "--prefetch",
            "none",
            &profiled,
            "cat",
            "/etc/os-release",
        ],
    );
    assert!(!out.is_empty());
    assert_eq!(
        cached(&root, &used).0,
        0,
        "--prefetch none fetched the profile"
    );
    // The original image has no profile: auto fetches only what is read.
    let root = w.state.path().join("plain");
    ok(&root, &["run", "--rm", &w.base, "cat", "/etc/os-release"]);
    assert_eq!(
        cached(&root, &used).0,
        0,
        "an image without a profile prefetched"
    );
}

/// `profile --publish`: the profile goes to the registry as a referrer of the image's
/// manifest (the image and its tag stay as they were), and a cold start on a fresh root finds
/// it there and fetches its chunks before anyone reads them.
#[test]
fn a_published_profile_is_replayed_by_a_fresh_root_and_the_image_stays() {
    if !require_root_fuse("a_published_profile_is_replayed_by_a_fresh_root_and_the_image_stays") {
        return;
    }
    let used = noise(2 * MIB + 500, 17);
    let unused = noise(2 * MIB, 18);
    let mut layers = runnable_layers();
    layers.push(vec![
        dir("data"),
        file("data/used.bin", &used),
        file("data/unused.bin", &unused),
    ]);
    let w = World::start(&layers, Comp::Native);
    let digest_of = |root: &Path| {
        let out = ok(root, &["images", "--digests", "--format", "{{.Digest}}"]);
        out.lines().next().unwrap_or_default().to_string()
    };

    // A failing command publishes nothing.
    let rec = w.state.path().join("rec");
    let out = run(&rec, &["profile", "--publish", &w.base, "false"]);
    assert_eq!(out.status.code(), Some(125));
    let manifest = digest_of(&rec);
    assert!(manifest.starts_with("sha256:"), "{manifest}");
    let fallback = format!(
        "http://{}/v2/t/base/manifests/sha256-{}",
        w.reg.addr,
        manifest.trim_start_matches("sha256:")
    );
    let status = |url: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
            .args(["-H", "Accept: application/vnd.oci.image.index.v1+json"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(&fallback), "404", "a failed run published a profile");

    let out = run(
        &rec,
        &[
            "profile",
            "--publish",
            &w.base,
            "sh",
            "-c",
            "cat /data/used.bin > /dev/null",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "profile --publish failed: {stderr}");
    assert!(stderr.contains("published as sha256:"), "{stderr}");
    assert_eq!(status(&fallback), "200", "no referrers index was tagged");

    // A fresh root: the tag still names the same manifest, and the mount fetches used.bin's
    // chunks though nothing reads them, and none of unused.bin's.
    let root = w.state.path().join("fresh");
    let mnt = w.state.path().join("mnt-fresh");
    std::fs::create_dir_all(&mnt).unwrap();
    w.proxy.reset();
    ok(&root, &["mount", "-d", &w.base, mnt.to_str().unwrap()]);
    let m = Mounted::adopt(&root, &mnt);
    assert_eq!(digest_of(&root), manifest, "the image changed");
    eventually("the learned profile's chunks to arrive", || {
        let (have, total) = cached(&root, &used);
        have == total
    });
    assert_eq!(std::fs::read(mnt.join("data/used.bin")).unwrap(), used);
    drop(m);

    // A `pull` (which prefetches nothing) keeps it too: a later mount replays it.
    let root = w.state.path().join("pulled");
    let mnt = w.state.path().join("mnt-pulled");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(&root, &["pull", "-q", &w.base]);
    assert_eq!(cached(&root, &used).0, 0, "pull prefetched");
    ok(&root, &["mount", "-d", &w.base, mnt.to_str().unwrap()]);
    let m = Mounted::adopt(&root, &mnt);
    eventually("the learned profile kept by pull to be replayed", || {
        let (have, total) = cached(&root, &used);
        have == total
    });
    drop(m);

    // --prefetch none ignores it.
    let root = w.state.path().join("none");
    ok(
        &root,
        &[
            "run",
            "--rm",
            "--prefetch",
            "none",
            &w.base,
            "sh",
            "-c",
            "exit 0",
        ],
    );
    assert_eq!(
        cached(&root, &used).0,
        0,
        "--prefetch none replayed the profile"
    );
}

/// `run --learn`: the first cold run of an image without a profile records and publishes;
/// the next machine (a fresh root) replays that profile and learns nothing new.
#[test]
fn run_learn_publishes_once_and_the_next_cold_start_replays() {
    if !require_root_fuse("run_learn_publishes_once_and_the_next_cold_start_replays") {
        return;
    }
    let used = noise(MIB + 300, 27);
    let other = noise(MIB, 28);
    let mut layers = runnable_layers();
    layers.push(vec![
        dir("data"),
        file("data/used.bin", &used),
        file("data/other.bin", &other),
    ]);
    let w = World::start(&layers, Comp::Native);
    let first = w.state.path().join("first");
    let out = run(
        &first,
        &[
            "run",
            "--rm",
            "--learn",
            &w.base,
            "sh",
            "-c",
            "cat /data/used.bin > /dev/null",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Learned profile: "), "{stderr}");

    let next = w.state.path().join("next");
    let out = run(
        &next,
        &[
            "run",
            "--rm",
            "--learn",
            &w.base,
            "sh",
            "-c",
            "cat /data/other.bin > /dev/null",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("Learned profile"),
        "learned again: {stderr}"
    );
    eventually("the replayed profile's chunks", || {
        let (have, total) = cached(&next, &used);
        have == total
    });
}
