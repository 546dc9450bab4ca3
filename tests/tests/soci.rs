//! gzip images read lazily through a SOCI index that `strata index` wrote, counted at the
//! registry, and compared with an independent extraction (GNU tar + kernel overlayfs).
#![allow(clippy::print_stderr, clippy::print_stdout)]

use strata_tests::fixtures::{BIG_PATH, big, rich_layers, runnable_layers};
use strata_tests::layers::{Blob, Comp, file, noise, push_blobs, push_image, tar_of};
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok, run};
use strata_tests::walk::{ReferenceTree, assert_same, snapshot};

#[test]
fn a_soci_indexed_gzip_image_runs_lazily_and_matches_extraction() {
    if !require_root_fuse("a_soci_indexed_gzip_image_runs_lazily_and_matches_extraction") {
        return;
    }
    let reg = Registry::start();
    let img = push_gzip(&reg.addr, "t/soci", "1");
    let state = tempfile::tempdir().unwrap();
    let writer = state.path().join("writer");
    let out = ok(
        &writer,
        &[
            "index",
            &img.reference,
            "--min-layer-size",
            "0",
            "--span-size",
            "1048576",
            "-q",
        ],
    );
    assert!(out.trim().starts_with("sha256:"), "{out}");

    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/soci:1", proxy.addr);
    let root = state.path().join("root");
    ok(&root, &["pull", &reference]);
    let (_, pull_bytes) = proxy.counts();
    eprintln!(
        "pull: {pull_bytes} bytes of a {} byte image",
        img.blob_bytes
    );
    assert!(
        pull_bytes < img.blob_bytes / 20,
        "pull fetched {pull_bytes} bytes"
    );

    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    proxy.reset();
    let text = std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap();
    assert_eq!(text, "ID=strata-test\nVERSION_ID=2\n");
    // 1 MiB in the middle of the 64 MiB file: about two spans, not the layer.
    let f = std::fs::File::open(m.dir.join(BIG_PATH)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 30 << 20).unwrap();
    assert!(buf == big()[30 << 20..31 << 20]);
    let (reqs, bytes) = proxy.counts();
    eprintln!("a small file and 1 MiB of the big one: {reqs} requests, {bytes} bytes");
    assert!(
        bytes < 12 << 20,
        "fetched {bytes} bytes: {:?}",
        proxy.stats.log.lock().unwrap()
    );
    assert!(bytes >= 1 << 20);

    // Spans that arrive with a flipped byte fail their digests: a read that needs one fails
    // with EIO, a read that succeeds has the right bytes, and nothing bad is cached (the whole
    // tree is compared below, once the registry is healthy again).
    proxy.set(strata_tests::proxy::Fault::CorruptRanges);
    let want = big();
    let mut failed = 0;
    for i in 0..8usize {
        let at = (40 << 20) + i * (3 << 20);
        let mut piece = vec![0u8; 64 << 10];
        match std::os::unix::fs::FileExt::read_exact_at(&f, &mut piece, at as u64) {
            Ok(()) => assert!(piece == want[at..at + piece.len()]),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "no read met a corrupted span");
    proxy.set(strata_tests::proxy::Fault::None);

    let reference_tree = ReferenceTree::new(&img.tars);
    assert_same("soci", &snapshot(&m.dir), &snapshot(&reference_tree.root));
}

#[test]
fn a_soci_index_naming_another_images_layer_is_refused() {
    if !require_root_fuse("a_soci_index_naming_another_images_layer_is_refused") {
        return;
    }
    let reg = Registry::start();
    let layer = vec![file("etc/a", &vec![b'a'; 300_000])];
    let a = push_image(&reg.addr, "t/a", "1", &[layer], Comp::Gzip);
    let state = tempfile::tempdir().unwrap();
    let writer = state.path().join("writer");
    let index = ok(
        &writer,
        &["index", "-q", &a.reference, "--min-layer-size", "0"],
    );
    let index = index.trim();
    // Image b names a's SOCI index: its ztoc indexes a layer b does not have.
    let other = vec![file("etc/b", &vec![b'b'; 300_000])];
    let b = push_image(&reg.addr, "t/a", "2", &[other], Comp::Gzip);
    let manifest = http_get(&reg.addr, "t/a", "2");
    let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    m["annotations"] = serde_json::json!({"com.amazon.soci.index-digest": index});
    http_put_manifest(&reg.addr, "t/a", "2", &serde_json::to_vec(&m).unwrap());

    let root = state.path().join("root");
    let out = run(&root, &["pull", &b.reference]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("soci index {index}")), "{err}");
    assert!(err.contains("which the image does not have"), "{err}");
    assert!(ok(&root, &["images", "-q"]).trim().is_empty());
}

/// `strata run` of a SOCI-indexed gzip image: the container runs from spans read lazily.
#[test]
fn a_container_runs_from_a_soci_indexed_image() {
    if !require_root_fuse("a_container_runs_from_a_soci_indexed_image") {
        return;
    }
    let reg = Registry::start();
    let tars: Vec<Vec<u8>> = runnable_layers().iter().map(|l| tar_of(l)).collect();
    let img = push_gzip_tars(&reg.addr, "t/run", "1", &tars);
    let state = tempfile::tempdir().unwrap();
    let writer = state.path().join("writer");
    let args = [
        "index",
        "-q",
        &img.reference,
        "--min-layer-size",
        "0",
        "--span-size",
        "65536",
    ];
    ok(&writer, &args);
    let root = state.path().join("root");
    let out = ok(
        &root,
        &["run", "--rm", &img.reference, "cat", "/etc/os-release"],
    );
    assert_eq!(out, "ID=strata-test\nVERSION_ID=2\n");
}

/// A v1 SOCI index (a referrer of the image manifest, found through the referrers tag schema,
/// as registries without the referrers API keep them) is used as well.
#[test]
fn a_v1_soci_index_found_as_a_referrer_is_used() {
    if !require_root_fuse("a_v1_soci_index_found_as_a_referrer_is_used") {
        return;
    }
    let reg = Registry::start();
    let layer: Vec<_> = (0..8u64)
        .map(|i| file(&format!("data/f{i}"), &noise(1 << 20, i + 1)))
        .collect();
    let tars = vec![tar_of(&layer)];
    let img = push_gzip_tars(&reg.addr, "t/v1", "1", &tars);
    let original = strata_tests::sha(&http_get(&reg.addr, "t/v1", "1"));
    let state = tempfile::tempdir().unwrap();
    let writer = state.path().join("writer");
    let args = [
        "index",
        "-q",
        &img.reference,
        "--min-layer-size",
        "0",
        "--span-size",
        "262144",
    ];
    let v2 = ok(&writer, &args);
    // The same ztocs as a v1 index: config typed v1, the original manifest as its subject.
    let mut index: serde_json::Value =
        serde_json::from_slice(&http_get(&reg.addr, "t/v1", v2.trim())).unwrap();
    index["config"]["mediaType"] = "application/vnd.amazon.soci.index.v1+json".into();
    let manifest_len = http_get(&reg.addr, "t/v1", &original).len();
    index["subject"] = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": original,
        "size": manifest_len,
    });
    let v1 = serde_json::to_vec(&index).unwrap();
    let v1_digest = strata_tests::sha(&v1);
    http_put(&reg.addr, "t/v1", &v1_digest, MANIFEST, &v1);
    let referrers = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST,
            "artifactType": "application/vnd.amazon.soci.index.v1+json",
            "digest": v1_digest,
            "size": v1.len(),
        }],
    });
    let tag = original.replace(':', "-");
    http_put(
        &reg.addr,
        "t/v1",
        &tag,
        INDEX,
        &serde_json::to_vec(&referrers).unwrap(),
    );

    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/v1@{original}", proxy.addr);
    let root = state.path().join("root");
    ok(&root, &["pull", &reference]);
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    proxy.reset();
    let got = std::fs::read(m.dir.join("data/f5")).unwrap();
    assert!(got == noise(1 << 20, 6));
    let (_, bytes) = proxy.counts();
    eprintln!(
        "v1: one 1 MiB file of an {} byte layer: {bytes} bytes",
        img.blob_bytes
    );
    assert!(bytes < img.blob_bytes / 3, "fetched {bytes} bytes");
}

/// soci-snapshotter's own ztoc code (tests/tools/soci-ztoc: its generated FlatBuffers reader
/// and builder, used as its Unmarshal and Marshal do) reads strata's ztocs field for field: what
/// it writes back parses to the same ztoc, and what it writes strata reads.
#[test]
fn soci_snapshotters_ztoc_code_reads_what_strata_writes() {
    use std::io::Write;
    use strata_formats::ztoc::Ztoc;
    let tar = tar_of(&rich_layers(false)[0]);
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(&tar).unwrap();
    let blob = w.finish().unwrap();
    let ztoc = strata_formats::soci::build_ztoc(std::io::Cursor::new(&blob), 64 << 10).unwrap();
    assert!(ztoc.files.len() > 10 && ztoc.span_digests.len() > 1);
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.ztoc"), dir.path().join("out.ztoc"));
    std::fs::write(&inp, ztoc.to_bytes()).unwrap();
    let ran = std::process::Command::new(soci_ztoc())
        .arg("roundtrip")
        .arg(&inp)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let back = Ztoc::parse(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(back, ztoc);
}

/// The soci-ztoc tool, built (once per test binary) from the modules install-deps.sh fetched.
fn soci_ztoc() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/soci-ztoc");
            let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soci-ztoc");
            let built = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .output()
                .expect("go (install it with scripts/install-deps.sh)");
            assert!(
                built.status.success(),
                "{}",
                String::from_utf8_lossy(&built.stderr)
            );
            out
        })
        .clone()
}

struct Image {
    reference: String,
    tars: Vec<Vec<u8>>,
    blob_bytes: u64,
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The rich image as gzip at the default level, as most writers (Go, GNU gzip) make it: blocks
/// end often, so checkpoints can be placed every span. (The fastest level of zlib-rs, which
/// the shared helper uses, writes a few huge blocks: one span per layer.)
fn push_gzip(registry: &str, repo: &str, tag: &str) -> Image {
    let tars: Vec<Vec<u8>> = rich_layers(true).iter().map(|l| tar_of(l)).collect();
    push_gzip_tars(registry, repo, tag, &tars)
}

/// Pushes `tars` as gzip layers at the default level.
fn push_gzip_tars(registry: &str, repo: &str, tag: &str, tars: &[Vec<u8>]) -> Image {
    let blobs: Vec<Blob> = tars.iter().map(|t| Blob::gzip(t)).collect();
    let blob_bytes = blobs.iter().map(|b| b.data.len() as u64).sum();
    Image {
        reference: push_blobs(registry, repo, tag, &blobs),
        tars: tars.to_vec(),
        blob_bytes,
    }
}

fn http_get(registry: &str, repo: &str, tag: &str) -> Vec<u8> {
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn http_put_manifest(registry: &str, repo: &str, tag: &str, body: &[u8]) {
    http_put(registry, repo, tag, MANIFEST, body);
}

fn http_put(registry: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    std::fs::write(&path, body).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {media_type}"))
        .arg("--data-binary")
        .arg(format!("@{}", path.display()))
        .arg(format!("http://{registry}/v2/{repo}/manifests/{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
