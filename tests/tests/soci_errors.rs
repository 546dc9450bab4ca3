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
use strata_tests::strata::{Mounted, ok, run};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A gzip image of four 300 KB files pushed as `t/bad:1`, indexed by `strata index` with 64 KiB
/// spans (the tag then names an image index).
struct Indexed {
    reg: Registry,
    state: tempfile::TempDir,
    files: Vec<Vec<u8>>,
    /// The image manifest as pushed, before `strata index` pointed the tag at an image index.
    manifest: Vec<u8>,
    /// The SOCI index manifest strata wrote.
    index: serde_json::Value,
    /// Its one ztoc, parsed.
    ztoc: Ztoc,
}

impl Indexed {
    fn new() -> Self {
        let reg = Registry::start();
        let files: Vec<Vec<u8>> = (0..4u64).map(|i| noise(300_000, i + 1)).collect();
        let layer: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, f)| strata_tests::layers::file(&format!("data/f{i}"), f))
            .collect();
        let blob = Blob::gzip(&tar_of(&layer));
        let image = push_blobs(&reg.addr, "t/bad", "1", &[blob]);
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
        let ztoc_digest = index["layers"][0]["digest"].as_str().unwrap().to_string();
        let sound = get(&reg.addr, "t/bad", &format!("blobs/{ztoc_digest}"));
        let ztoc = Ztoc::parse(&sound).unwrap();
        Self {
            reg,
            state,
            files,
            manifest,
            index,
            ztoc,
        }
    }

    /// Tags the image manifest as pushed (no SOCI index) as `tag`; returns the tag.
    fn tag_with_plain(&self, tag: &str) -> String {
        put_manifest(&self.reg.addr, "t/bad", tag, &self.manifest);
        tag.to_string()
    }

    /// Pushes `bytes` as the only ztoc of a second SOCI index and tags, as `tag`, the image
    /// manifest naming that index; returns the ztoc's digest.
    fn tag_with_ztoc(&self, tag: &str, bytes: &[u8]) -> String {
        let z = push_blob(&self.reg.addr, "t/bad", bytes, self.state.path());
        let mut other = self.index.clone();
        other["layers"][0]["digest"] = z.clone().into();
        other["layers"][0]["size"] = bytes.len().into();
        let other = serde_json::to_vec(&other).unwrap();
        let other_digest = strata_tests::sha(&other);
        put_manifest(&self.reg.addr, "t/bad", &other_digest, &other);
        let mut m: serde_json::Value = serde_json::from_slice(&self.manifest).unwrap();
        m["annotations"] = serde_json::json!({"com.amazon.soci.index-digest": other_digest});
        put_manifest(
            &self.reg.addr,
            "t/bad",
            tag,
            &serde_json::to_vec(&m).unwrap(),
        );
        z
    }
}

#[test]
fn damaged_ztocs_are_clear_errors_and_no_data() {
    let t = Indexed::new();
    let (reg, state, parsed) = (&t.reg, &t.state, &t.ztoc);
    let sound = parsed.to_bytes();
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
        let z = t.tag_with_ztoc(tag, &bytes);
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

/// A ztoc that passes every check but lies (a file's offset moved within the tar) serves its
/// own image wrong bytes, as SOCI's would; it must not serve them to another image sharing the
/// layer whose index names another ztoc, or none, in the same root, whichever is pulled first.
#[test]
fn one_images_lying_ztoc_never_serves_another_image() {
    if !strata_tests::require_root_fuse("one_images_lying_ztoc_never_serves_another_image") {
        return;
    }
    let t = Indexed::new();
    let mut lie = t.ztoc.clone();
    let f1 = lie
        .files
        .iter_mut()
        .find(|f| f.name.ends_with(b"data/f1"))
        .unwrap();
    f1.uncompressed_offset -= 512;
    t.tag_with_ztoc("liar", &lie.to_bytes());
    let plain = t.tag_with_plain("plain");
    for (order, first, then) in [
        ("liar-first", "liar", "1"),
        ("liar-then-plain", "liar", plain.as_str()),
        ("sound-first", "1", "liar"),
    ] {
        let root = t.state.path().join(order);
        for tag in [first, then] {
            ok(&root, &["pull", &format!("{}/t/bad:{tag}", t.reg.addr)]);
        }
        let honest = if first == "liar" { then } else { first };
        let mnt = t.state.path().join(format!("mnt-{order}"));
        let m = Mounted::new(&root, &format!("{}/t/bad:{honest}", t.reg.addr), &mnt);
        let got = std::fs::read(m.dir.join("data/f1")).unwrap();
        assert!(
            got == t.files[1],
            "{order}: t/bad:{honest} read another image's lie"
        );
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
