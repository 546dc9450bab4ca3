//! The command line as a user meets it: images/inspect output, and bad input that must give
//! one clear line, a non-zero exit, and leave the store as it was.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;
use std::time::Duration;

use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, Item, file, push_blob, push_image, sha};
use strata_tests::proxy::{Fault, Proxy};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{bin, ok, run};

fn stderr_line(out: &std::process::Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(s.lines().count(), 1, "expected one error line, got: {s}");
    s
}

#[test]
fn images_and_inspect_read_like_docker() {
    if !require_root_fuse("images_and_inspect_read_like_docker") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/app", "1", &rich_layers(false), Comp::Gzip);
    push_image(
        &reg.addr,
        "t/other",
        "2",
        &[vec![file("x", b"x")]],
        Comp::Zstd,
    );
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &format!("{}/t/app:1", reg.addr)]);
    ok(&root, &["pull", "-q", &format!("{}/t/other:2", reg.addr)]);

    let out = ok(&root, &["images"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY")
            && lines[0].contains("IMAGE ID")
            && lines[0].ends_with("SIZE"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    assert!(out.contains(&format!("{}/t/app", reg.addr)), "{out}");

    let only = ok(&root, &["images", "*/t/app*"]);
    assert_eq!(only.lines().count(), 2, "{only}");
    let ids = ok(&root, &["images", "-q"]);
    assert_eq!(ids.lines().count(), 2);
    assert!(
        ids.lines()
            .all(|l| l.len() == 12 && l.bytes().all(|b| b.is_ascii_hexdigit()))
    );
    let json_lines = ok(&root, &["images", "--format", "json"]);
    let parsed: Vec<serde_json::Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed.len(), 2);
    assert!(
        parsed
            .iter()
            .any(|v| v["Repository"] == format!("{}/t/app", reg.addr) && v["Tag"] == "1")
    );
    assert_eq!(
        ok(&root, &["images", "-q", "--filter", "dangling=true"]),
        ""
    );
    assert_eq!(
        ok(&root, &["images", "-q", "-f", "dangling=false"])
            .lines()
            .count(),
        2
    );
    let digests = ok(&root, &["images", "--digests"]);
    assert!(digests.lines().next().unwrap().contains("DIGEST") && digests.contains("sha256:"));

    let json: serde_json::Value =
        serde_json::from_str(&ok(&root, &["inspect", &format!("{}/t/app:1", reg.addr)])).unwrap();
    let img = &json[0];
    assert_eq!(img["Os"], "linux");
    assert_eq!(img["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(img["RootFS"]["Type"], "layers");
    assert_eq!(img["RepoTags"][0], format!("{}/t/app:1", reg.addr));
    let id = img["Id"].as_str().unwrap().trim_start_matches("sha256:")[..12].to_string();
    let by_id: serde_json::Value = serde_json::from_str(&ok(&root, &["inspect", &id])).unwrap();
    assert_eq!(by_id[0]["Id"], img["Id"]);
    let missing = run(&root, &["inspect", "nope:1"]);
    assert!(!missing.status.success());
}

#[test]
fn bad_references_and_missing_images() {
    if !require_root_fuse("bad_references_and_missing_images") {
        return;
    }
    let reg = Registry::start();
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let out = run(&root, &["pull", "UPPER/Case:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_line(&out).contains("invalid reference"));
    let out = run(&root, &["pull", &format!("{}/t/absent:1", reg.addr)]);
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    // docker's words (recorded: tests/golden 01-pull/missing-repo).
    assert_eq!(
        line,
        format!(
            "Error response from daemon: failed to resolve reference \"{0}/t/absent:1\": {0}/t/absent:1: not found",
            reg.addr
        ),
        "{line}"
    );
    assert_eq!(ok(&root, &["images", "-q"]), "");
}

/// A tar with an entry named `../escape`, written header by header (builders refuse such names).
fn evil_tar() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    let name = b"../escape";
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"evil"[..]).unwrap();
    b.into_inner().unwrap()
}

fn push_single_layer(
    reg: &str,
    repo: &str,
    blob: &[u8],
    tar: &[u8],
    media_type: &str,
    annotations: serde_json::Value,
) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let layer = push_blob(reg, repo, blob, scratch.path());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(tar)]},
    }))
    .unwrap();
    let cd = push_blob(reg, repo, &config, scratch.path());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": media_type, "digest": layer, "size": blob.len(), "annotations": annotations}],
    });
    let st = Command::new("curl")
        .args([
            "-sSf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
        ])
        .arg(manifest.to_string())
        .arg(format!("http://{reg}/v2/{repo}/manifests/1"))
        .status()
        .unwrap();
    assert!(st.success());
    format!("{reg}/{repo}:1")
}

#[test]
fn escaping_entries_and_bad_tocs_are_rejected_and_nothing_is_listed() {
    if !require_root_fuse("escaping_entries_and_bad_tocs_are_rejected_and_nothing_is_listed") {
        return;
    }
    let reg = Registry::start();
    let tar = evil_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let plain = push_single_layer(
        &reg.addr,
        "t/evil-gz",
        &gz,
        &tar,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        serde_json::json!({}),
    );
    let mut native_blob = Vec::new();
    let w = strata_formats::chunked::write_chunked(&tar[..], &mut native_blob, 3).unwrap();
    let native = push_single_layer(
        &reg.addr,
        "t/evil-native",
        &native_blob,
        &tar,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        serde_json::to_value(&w.annotations).unwrap(),
    );
    // A TOC position that is off by one: its checksum cannot match.
    let mut shifted = w.annotations.clone();
    let key = "io.github.containers.zstd-chunked.manifest-position";
    let pos: Vec<u64> = shifted[key]
        .split(':')
        .map(|p| p.parse().unwrap())
        .collect();
    shifted.insert(
        key.into(),
        format!("{}:{}:{}:1", pos[0] + 1, pos[1], pos[2]),
    );
    let bad_toc = push_single_layer(
        &reg.addr,
        "t/bad-toc",
        &native_blob,
        &tar,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        serde_json::to_value(&shifted).unwrap(),
    );
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let good = push_image(
        &reg.addr,
        "t/good",
        "1",
        &[vec![file("ok", b"ok")]],
        Comp::Gzip,
    );
    ok(&root, &["pull", &good.reference]);
    // A TOC that names an entry outside the image, or fails its checksum, is not trusted: the
    // pull warns once and the layer streams instead (issue 12: a pull never fails on a layer a
    // client can extract). Streaming reads the tar's own entries and refuses the escaping one.
    // (Each in its own root: the two share their blob, so the second would find it stored.)
    for (i, image) in [&native, &bad_toc].into_iter().enumerate() {
        let root = state.path().join(if i == 0 {
            "root".to_string()
        } else {
            format!("root-{i}")
        });
        // How the layer will be read is logged at info level (the transcript is docker's).
        let out = run(&root, &["--log-level", "info", "pull", image]);
        let err = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.contains("WARN")).count(),
            1,
            "{err}{stdout}"
        );
        assert!(err.contains("stream: no usable TOC"), "{err}");
        let out = run(&root, &["pull", "--all", image]);
        assert_eq!(out.status.code(), Some(1));
        let line = stderr_line(&out);
        assert!(line.contains("../escape"), "{line}");
    }
    let out = run(&root, &["pull", "--all", plain.as_str()]);
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(line.contains("../escape") && line.contains(".."), "{line}");
    let images = ok(&root, &["images"]);
    assert_eq!(
        images.lines().count(),
        3,
        "the plain image whose stream failed is not listed:\n{images}"
    );
    assert!(
        images.contains("t/good") && !images.contains("t/plain"),
        "{images}"
    );

    // Pulled lazily, the plain image cannot be mounted: the layer store indexes it first,
    // refuses the escaping entry, and the mount fails with one line naming it; nothing is
    // left mounted.
    ok(&root, &["pull", &plain]);
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = run(&root, &["mount", "--detach", &plain, mnt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let line = stderr_line(&out);
    assert!(
        line.contains("../escape") && line.contains("cannot be used"),
        "{line}"
    );
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(mnt.to_str().unwrap()),
        "nothing is left mounted"
    );
}

#[test]
fn killed_pull_lists_nothing() {
    if !require_root_fuse("killed_pull_lists_nothing") {
        return;
    }
    let reg = Registry::start();
    // `pull --all` streams a plain layer whole before the image is listed; slow it down and
    // kill the pull midway.
    let big: Vec<Item> = vec![file("big", &strata_tests::layers::noise(24 << 20, 3))];
    push_image(
        &reg.addr,
        "t/slow",
        "1",
        &[vec![file("a", b"a")], big],
        Comp::Gzip,
    );
    let proxy = Proxy::start(&reg.addr);
    proxy.set(Fault::Delay(Duration::from_millis(400)));
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(&root)
        .args(["pull", "--all", &format!("{}/t/slow:1", proxy.addr)])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        ok(&root, &["images", "-q"]),
        "",
        "a killed pull left an image listed"
    );
    proxy.set(Fault::None);
    ok(
        &root,
        &["pull", "--all", &format!("{}/t/slow:1", proxy.addr)],
    );
    assert_eq!(ok(&root, &["images", "-q"]).lines().count(), 1);
}

fn put_manifest(
    reg: &str,
    repo: &str,
    tag: &str,
    media_type: &str,
    body: &serde_json::Value,
) -> (String, usize) {
    let bytes = serde_json::to_vec(body).unwrap();
    let st = Command::new("curl")
        .args([
            "-sSf",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
        ])
        .arg(String::from_utf8(bytes.clone()).unwrap())
        .arg(format!("http://{reg}/v2/{repo}/manifests/{tag}"))
        .status()
        .unwrap();
    assert!(st.success());
    (sha(&bytes), bytes.len())
}

/// A Docker schema 2 image with one gzip layer holding `arch` = `name`.
fn docker_image(reg: &str, repo: &str, name: &str) -> (String, usize) {
    let scratch = tempfile::tempdir().unwrap();
    let tar = strata_tests::layers::tar_of(&[file("arch", name.as_bytes())]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let layer = push_blob(reg, repo, &gz, scratch.path());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": name, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(&tar)]},
    }))
    .unwrap();
    let cd = push_blob(reg, repo, &config, scratch.path());
    put_manifest(
        reg,
        repo,
        name,
        "application/vnd.docker.distribution.manifest.v2+json",
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": gz.len()}],
        }),
    )
}

#[test]
fn docker_schema2_and_manifest_lists_choose_the_platform() {
    if !require_root_fuse("docker_schema2_and_manifest_lists_choose_the_platform") {
        return;
    }
    let reg = Registry::start();
    let (amd, amd_len) = docker_image(&reg.addr, "t/multi", "amd64");
    let (arm, arm_len) = docker_image(&reg.addr, "t/multi", "arm64");
    let entry = |d: &str, len: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": d, "size": len, "platform": {"architecture": arch, "os": "linux"},
        })
    };
    put_manifest(
        &reg.addr,
        "t/multi",
        "list",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [entry(&arm, arm_len, "arm64"), entry(&amd, amd_len, "amd64")],
        }),
    );
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let list = format!("{}/t/multi:list", reg.addr);
    ok(&root, &["pull", &list]);
    let arch = |root: &std::path::Path| {
        let v: serde_json::Value = serde_json::from_str(&ok(root, &["inspect", &list])).unwrap();
        v[0]["Architecture"].as_str().unwrap().to_string()
    };
    assert_eq!(arch(&root), "amd64");
    {
        let m = strata_tests::strata::Mounted::new(&root, &list, &state.path().join("mnt"));
        assert_eq!(std::fs::read(m.dir.join("arch")).unwrap(), b"amd64");
    }
    ok(&root, &["pull", "--platform", "linux/arm64", &list]);
    assert_eq!(arch(&root), "arm64");
    let out = run(&root, &["pull", "--platform", "linux/s390x", &list]);
    assert_eq!(out.status.code(), Some(1));
    // docker's wording, plus what the list offers.
    let line = stderr_line(&out);
    assert!(
        line.contains("no matching manifest for linux/s390x in the manifest list entries")
            && line.contains("available: linux/arm64, linux/amd64"),
        "{line}"
    );
}
