//! A SOCI index whose ztoc is damaged, end to end: strata writes a sound index, the test makes
//! a second index beside it whose only ztoc is truncated, lists a file past the end of the
//! layer, or indexes more compressed bytes than the layer has, and names it from the image
//! manifest. Each pull fails with an error naming the ztoc and what is wrong, and nothing is
//! recorded. (A flipped byte in a span and an index naming another image's layer are in
//! soci.rs.)
#![allow(clippy::print_stderr)]

use std::process::Command;

use strata_formats::ztoc::Ztoc;
use strata_tests::layers::{Blob, noise, push_blob, push_blobs, tar_of};
use strata_tests::registry::Registry;
use strata_tests::strata::{ok, run};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn damaged_ztocs_are_clear_errors_and_no_data() {
    let reg = Registry::start();
    let layer: Vec<_> = (0..4u64)
        .map(|i| strata_tests::layers::file(&format!("data/f{i}"), &noise(300_000, i + 1)))
        .collect();
    let blob = gzip(&tar_of(&layer));
    let image = push_blobs(&reg.addr, "t/bad", "1", &[blob]);
    // The image manifest as pushed, before `strata index` points the tag at an image index.
    let manifest = get(&reg.addr, "t/bad", "manifests/1");
    let state = tempfile::tempdir().unwrap();
    let writer = state.path().join("writer");
    let args = ["index", "-q", &image, "--min-layer-size", "0"];
    let args = [&args[..], &["--span-size", "65536"]].concat();
    let index_digest = ok(&writer, &args).trim().to_string();
    let index: serde_json::Value = serde_json::from_slice(&get(
        &reg.addr,
        "t/bad",
        &format!("manifests/{index_digest}"),
    ))
    .unwrap();
    let zdesc = &index["layers"][0];
    let ztoc_digest = zdesc["digest"].as_str().unwrap();
    let sound = get(&reg.addr, "t/bad", &format!("blobs/{ztoc_digest}"));
    let parsed = Ztoc::parse(&sound).unwrap();

    let mut past_end = parsed.clone();
    let last = past_end.files.len() - 1;
    past_end.files[last].uncompressed_offset = past_end.uncompressed_size - 10;
    past_end.files[last].uncompressed_size = 1000;
    let mut too_long = parsed.clone();
    too_long.compressed_size += 4096;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", sound[..sound.len() / 2].to_vec(), "ztoc: "),
        ("past-end", past_end.to_bytes(), "past the end"),
        ("too-long", too_long.to_bytes(), "ztoc indexes a"),
    ];
    for (tag, bytes, says) in cases {
        let z = push_blob(&reg.addr, "t/bad", &bytes, state.path());
        let mut bad = index.clone();
        bad["layers"][0]["digest"] = z.clone().into();
        bad["layers"][0]["size"] = bytes.len().into();
        let bad = serde_json::to_vec(&bad).unwrap();
        let bad_digest = strata_tests::sha(&bad);
        put_manifest(&reg.addr, "t/bad", &bad_digest, &bad);
        let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        m["annotations"] = serde_json::json!({"com.amazon.soci.index-digest": bad_digest});
        put_manifest(&reg.addr, "t/bad", tag, &serde_json::to_vec(&m).unwrap());

        let root = state.path().join(tag);
        let reference = format!("{}/t/bad:{tag}", reg.addr);
        let out = run(&root, &["pull", &reference]);
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{tag}: {}", err.trim());
        assert_eq!(out.status.code(), Some(1), "{tag}: {err}");
        assert!(err.contains(&format!("soci ztoc {z}")), "{tag}: {err}");
        assert!(err.contains(says), "{tag}: {err}");
        assert!(ok(&root, &["images", "-q"]).trim().is_empty(), "{tag}");
    }
}

fn gzip(tar: &[u8]) -> Blob {
    use std::io::Write;
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    w.write_all(tar).unwrap();
    Blob {
        data: w.finish().unwrap(),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        annotations: serde_json::json!({}),
        diff_id: strata_tests::sha(tar),
    }
}

/// `GET /v2/REPO/WHAT` (a manifest asked for as an OCI image manifest, or a blob).
fn get(registry: &str, repo: &str, what: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sfL", "-H"])
        .arg(format!("Accept: {MANIFEST}"))
        .arg(format!("http://{registry}/v2/{repo}/{what}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {what}");
    out.stdout
}

fn put_manifest(registry: &str, repo: &str, reference: &str, body: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    std::fs::write(&path, body).unwrap();
    let out = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {MANIFEST}"))
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
