//! A gzip image with no TOC and no SOCI index: the first mount streams its layers as always,
//! and strata builds each layer's ztoc in the same pass. A later mount on a fresh chunk cache
//! (same state root) reads by range through those local ztocs instead of streaming again,
//! counted at the registry and compared with umoci's unpack of the same image; `strata index`
//! then pushes the local ztocs without fetching the layers, and `rmi` removes them with the
//! layers.
#![allow(clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use strata_tests::fixtures::{BIG_PATH, big, rich_layers};
use strata_tests::layers::{Blob, push_blobs, tar_of};
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::strata::{Mounted, ok};
use strata_tests::walk::{assert_same, snapshot};
use strata_tests::{mounts, require_root_fuse};

/// Pushes `tars` as gzip layers at the default level (blocks end often enough for
/// checkpoints); returns the reference and the blobs.
fn push_gzip(registry: &str, repo: &str, tars: &[Vec<u8>]) -> (String, Vec<Blob>) {
    let blobs: Vec<Blob> = tars.iter().map(|t| Blob::gzip(t)).collect();
    (push_blobs(registry, repo, "1", &blobs), blobs)
}

/// Waits (bounded) until no FUSE mount is left under `root`: the layer store has ended.
fn wait_store_gone(root: &Path) {
    let root = root.canonicalize().unwrap();
    let gone = || {
        !mounts()
            .iter()
            .any(|m| m.fstype.starts_with("fuse") && m.point.starts_with(&root))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone(), "the layer store did not end");
}

/// umoci's unpack of `reference` (copied to an OCI layout by skopeo): the independent tree.
fn umoci_unpack(reference: &str, dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("oci");
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:img", layout.display()))
        .output()
        .expect("skopeo (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = dir.join("bundle");
    let out = std::process::Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:img", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bundle.join("rootfs")
}

#[test]
fn a_streamed_gzip_layer_is_read_lazily_later_through_its_local_ztoc() {
    if !require_root_fuse("a_streamed_gzip_layer_is_read_lazily_later_through_its_local_ztoc") {
        return;
    }
    let reg = Registry::start();
    let tars: Vec<Vec<u8>> = rich_layers(true).iter().map(|l| tar_of(l)).collect();
    let (image, blobs) = push_gzip(&reg.addr, "t/plain", &tars);
    let blob_bytes: u64 = blobs.iter().map(|b| b.data.len() as u64).sum();
    let proxy = Proxy::start(&reg.addr);
    let reference = image.replacen(&reg.addr, &proxy.addr, 1);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");

    // First: pulled and streamed on first mount, as before.
    ok(&root, &["pull", &reference]);
    {
        let m = Mounted::new(&root, &reference, &state.path().join("m1"));
        let text = std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap();
        assert_eq!(text, "ID=strata-test\nVERSION_ID=2\n");
    }
    let (_, streamed) = proxy.counts();
    assert!(
        streamed >= blob_bytes,
        "{streamed} of {blob_bytes} bytes streamed"
    );
    let ztocs = std::fs::read_dir(root.join("store/ztocs")).unwrap().count();
    assert_eq!(ztocs, blobs.len(), "a local ztoc per streamed gzip layer");

    // Then: a fresh chunk cache under the same state root.
    wait_store_gone(&root);
    std::fs::remove_dir_all(root.join("cache")).unwrap();
    proxy.reset();
    let m = Mounted::new(&root, &reference, &state.path().join("m2"));
    let text = std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap();
    assert_eq!(text, "ID=strata-test\nVERSION_ID=2\n");
    let f = std::fs::File::open(m.dir.join(BIG_PATH)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 30 << 20).unwrap();
    assert!(buf == big()[30 << 20..31 << 20]);
    let (reqs, bytes) = proxy.counts();
    let log = proxy.stats.log.lock().unwrap().clone();
    eprintln!("fresh cache: a small file and 1 MiB of the big one: {reqs} requests, {bytes} bytes");
    assert!(
        bytes < 16 << 20,
        "fetched {bytes} of {blob_bytes} bytes: {log:?}"
    );
    for b in &blobs {
        let hex = strata_tests::sha(&b.data);
        for line in log
            .iter()
            .filter(|l| l.starts_with("GET") && l.contains(&hex))
        {
            assert!(line.contains("Range"), "a whole layer was fetched: {line}");
        }
    }
    // Every file reads back as umoci unpacks the image.
    let want = umoci_unpack(&image, state.path());
    assert_same("local ztoc", &snapshot(&m.dir), &snapshot(&want));
    drop(m);

    // `strata index` pushes the local ztocs without fetching the layers again.
    proxy.reset();
    let index = ok(&root, &["index", "-q", &reference, "--min-layer-size", "0"]);
    assert!(index.trim().starts_with("sha256:"), "{index}");
    let (_, bytes) = proxy.counts();
    assert!(bytes < blob_bytes / 10, "indexing fetched {bytes} bytes");
    // A machine without the local ztocs reads the image through the pushed index.
    let fresh = state.path().join("fresh");
    proxy.reset();
    ok(&fresh, &["pull", &reference]);
    let m = Mounted::new(&fresh, &reference, &state.path().join("m3"));
    let text = std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap();
    assert_eq!(text, "ID=strata-test\nVERSION_ID=2\n");
    let (_, bytes) = proxy.counts();
    eprintln!("through the pushed index: {bytes} bytes");
    assert!(
        bytes < blob_bytes / 4,
        "fetched {bytes} of {blob_bytes} bytes"
    );
    drop(m);

    // Removing the image removes its local ztocs (names and blobs) with its layers.
    let kept: Vec<String> = std::fs::read_dir(root.join("store/ztocs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept.len(), blobs.len());
    wait_store_gone(&root);
    ok(&root, &["rmi", &reference]);
    let left = std::fs::read_dir(root.join("store/ztocs")).unwrap().count();
    assert_eq!(left, 0, "local ztocs outlived their layers");
    for z in &kept {
        let hex = z.trim().trim_start_matches("sha256:");
        let blob = root.join("store/blobs/sha256").join(hex);
        assert!(!blob.exists(), "ztoc blob {z} outlived its layer");
    }
}
