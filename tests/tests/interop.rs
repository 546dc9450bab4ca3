//! Native layers are ordinary `tar+zstd` to every other client: skopeo inspects and copies a
//! converted image, `zstd -dc | tar -t` lists each layer, and each layer decompresses to
//! exactly the tar its diff_id names. And the other direction: images written by skopeo, podman
//! and stargz-snapshotter's writer pull lazily, mount and run in strata, and podman partially
//! pulls strata's.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;

use strata_tests::fixtures::{foreign_layers, rich_layers, runnable_layers};
use strata_tests::layers::{Blob, Comp, Pushed, push_blobs, push_image, sha, tar_of};
use strata_tests::podman::Podman;
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};
use strata_tests::walk::{ReferenceTree, assert_same, snapshot};

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn converted_image_is_ordinary_to_skopeo_zstd_and_tar() {
    if !require_root_fuse("converted_image_is_ordinary_to_skopeo_zstd_and_tar") {
        return;
    }
    let reg = Registry::start();
    let src = push_image(
        &reg.addr,
        "t/interop",
        "gzip",
        &rich_layers(false),
        Comp::Gzip,
    );
    let dst = format!("{}/t/interop:lazy", reg.addr);
    let state = tempfile::tempdir().unwrap();
    ok(
        &state.path().join("root"),
        &["convert", &src.reference, &dst],
    );

    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{dst}")));
    let manifest: serde_json::Value = serde_json::from_slice(&inspect).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for l in layers {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert!(
            l["annotations"]["io.github.containers.zstd-chunked.manifest-checksum"].is_string()
        );
    }

    let layout = state.path().join("oci");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{dst}"))
        .arg(format!("oci:{}:copied", layout.display())));
    for (i, l) in layers.iter().enumerate() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = layout.join("blobs/sha256").join(hex);
        let tar = run(Command::new("zstd").arg("-dc").arg(&blob));
        assert_eq!(
            sha(&tar),
            sha(&src.tars[i]),
            "layer {i} does not decompress to its diff_id"
        );
        let list = String::from_utf8(run(Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar -t", blob.display()))))
        .unwrap();
        assert!(list.lines().count() > 3, "layer {i} lists: {list}");
    }
    let first = String::from_utf8(run(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc {} | tar -t",
        layout
            .join("blobs/sha256")
            .join(
                layers[1]["digest"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("sha256:")
            )
            .display()
    ))))
    .unwrap();
    assert!(
        first.contains("etc/.wh.passwd") && first.contains("var/lib/old/.wh..wh..opq"),
        "{first}"
    );
}

/// The layer descriptors of `reference` (`registry/repo:tag`), read straight from the registry.
fn layer_descs(reference: &str) -> Vec<serde_json::Value> {
    let (host, rest) = reference.split_once('/').unwrap();
    let (repo, tag) = rest.rsplit_once(':').unwrap();
    let body = run(Command::new("curl").args([
        "-sSf",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{host}/v2/{repo}/manifests/{tag}"),
    ]));
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    m["layers"].as_array().unwrap().clone()
}

/// Compressed TOC bytes the zstd:chunked annotations (either generation) announce.
fn toc_bytes(desc: &serde_json::Value) -> Option<u64> {
    let a = desc["annotations"].as_object()?;
    let pos = a
        .get("io.github.containers.zstd-chunked.manifest-position")
        .or_else(|| a.get("io.containers.zstd-chunked.manifest-position"))?;
    pos.as_str()?.split(':').nth(1)?.parse().ok()
}

/// A foreign-written lazy image, pushed to `reg` as `repo:1`, behaves as its original: a pull
/// through a counting proxy fetches only TOCs, the mount is the tree GNU tar extracts from the
/// original layers, a container runs in it, and `save` → `load` round-trips it.
/// Pulls; returns what strata logs at info level, where it says how each layer will be read
/// (`lazy: …`, `stream: …`, `full: …`; the transcript on stdout is docker's).
fn pull_paths(root: &std::path::Path, reference: &str) -> String {
    let out = strata_tests::strata::run(root, &["--log-level", "info", "pull", reference]);
    assert!(
        out.status.success(),
        "pull {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_reads_like_original(reg: &Registry, repo: &str, tars: &[Vec<u8>]) {
    let descs = layer_descs(&format!("{}/{repo}:1", reg.addr));
    assert_eq!(descs.len(), tars.len());
    let blob_total: u64 = descs.iter().map(|d| d["size"].as_u64().unwrap()).sum();
    let toc_total: Option<u64> = descs.iter().map(toc_bytes).sum();
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/{repo}:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");

    let pulled = pull_paths(&root, &reference);
    let (_, bytes) = proxy.counts();
    eprintln!(
        "{repo}: pull fetched {bytes} of {blob_total} blob bytes (TOCs {toc_total:?})\n{pulled}"
    );
    assert!(bytes < blob_total / 5, "{repo}: pull fetched {bytes} bytes");
    if let Some(t) = toc_total {
        // Manifest, config and the TOCs; nothing of the content.
        assert!(
            bytes <= t + 16 * 1024,
            "{repo}: {bytes} bytes, TOCs are {t}"
        );
    }
    assert_eq!(
        pulled.matches("lazy").count(),
        tars.len(),
        "{repo}: every layer lazy:\n{pulled}"
    );

    let want = snapshot(&ReferenceTree::new(tars).root);
    {
        let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
        assert_same(repo, &snapshot(&m.dir), &want);
    }
    let release = ok(
        &root,
        &[
            "run",
            "--rm",
            &reference,
            "/bin/busybox",
            "cat",
            "/etc/os-release",
        ],
    );
    assert_eq!(release, "ID=strata-test\nVERSION_ID=2\n");

    let archive = state.path().join("saved.tar");
    ok(
        &root,
        &["save", "-o", archive.to_str().unwrap(), &reference],
    );
    let fresh = state.path().join("fresh");
    ok(&fresh, &["load", "-i", archive.to_str().unwrap()]);
    let m = Mounted::new(&fresh, &reference, &state.path().join("mnt2"));
    assert_same(&format!("{repo} after save/load"), &snapshot(&m.dir), &want);
}

/// The gzip original of the foreign-writer tests, in its own registry (so a writer cannot reuse
/// the gzip blob in the destination).
fn gzip_original() -> (Registry, Pushed) {
    let src = Registry::start();
    let img = push_image(&src.addr, "t/orig", "1", &foreign_layers(), Comp::Gzip);
    (src, img)
}

#[test]
fn skopeo_zstd_chunked_image_is_lazy_and_identical() {
    if !require_root_fuse("skopeo_zstd_chunked_image_is_lazy_and_identical") {
        return;
    }
    let (_src, img) = gzip_original();
    let reg = Registry::start();
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .args(["--dest-compress-format", "zstd:chunked"])
        .arg(format!("docker://{}", img.reference))
        .arg(format!("docker://{}/t/skopeo:1", reg.addr)));
    for d in layer_descs(&format!("{}/t/skopeo:1", reg.addr)) {
        assert!(
            d["annotations"]["io.containers.zstd-chunked.manifest-checksum"].is_string(),
            "skopeo 1.9 writes the older annotations: {d}"
        );
    }
    assert_reads_like_original(&reg, "t/skopeo", &img.tars);
}

#[test]
fn podman_zstd_chunked_image_is_lazy_and_identical() {
    if !require_root_fuse("podman_zstd_chunked_image_is_lazy_and_identical") {
        return;
    }
    let (src, img) = gzip_original();
    let reg = Registry::start();
    let podman = Podman::new(&[&src.addr, &reg.addr]);
    podman.ok(&["pull", "-q", &img.reference]);
    podman.ok(&[
        "push",
        "--compression-format",
        "zstd:chunked",
        &img.reference,
        &format!("docker://{}/t/podman:1", reg.addr),
    ]);
    for d in layer_descs(&format!("{}/t/podman:1", reg.addr)) {
        assert!(
            toc_bytes(&d).is_some(),
            "podman wrote no TOC annotations: {d}"
        );
    }
    assert_reads_like_original(&reg, "t/podman", &img.tars);
}

/// Runs the stargz-snapshotter writer (tests/tools/stargz-writer) on each layer.
fn stargz_blobs(mode: &str, tars: &[Vec<u8>]) -> Vec<Blob> {
    let dir = tempfile::tempdir().unwrap();
    tars.iter()
        .enumerate()
        .map(|(i, tar)| {
            let (tin, tout) = (
                dir.path().join(format!("{i}.tar")),
                dir.path().join(format!("{i}.blob")),
            );
            std::fs::write(&tin, tar).unwrap();
            let out = run(Command::new(stargz_writer()).arg(mode).arg(&tin).arg(&tout));
            let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let media_type = if mode == "estargz" { "gzip" } else { "zstd" };
            Blob {
                data: std::fs::read(&tout).unwrap(),
                media_type: format!("application/vnd.oci.image.layer.v1.tar+{media_type}"),
                annotations: r["annotations"].clone(),
                diff_id: r["diffID"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

#[test]
fn stargz_snapshotter_images_are_lazy_and_identical() {
    if !require_root_fuse("stargz_snapshotter_images_are_lazy_and_identical") {
        return;
    }
    let tars: Vec<Vec<u8>> = foreign_layers().iter().map(|l| tar_of(l)).collect();
    let reg = Registry::start();
    for mode in ["zstdchunked", "estargz"] {
        let repo = format!("t/stargz-{mode}");
        let blobs = stargz_blobs(mode, &tars);
        push_blobs(&reg.addr, &repo, "1", &blobs);
        if mode == "estargz" {
            // stargz-snapshotter hides its landmark file and TOC entry: the original tree.
            assert_reads_like_original(&reg, &repo, &tars);
        } else {
            // In zstd:chunked the landmark is an ordinary file of the tar, as containers/storage
            // (the format's reference reader) shows it: the tree of the blob's own tar.
            let own: Vec<Vec<u8>> = blobs
                .iter()
                .map(|b| zstd::stream::decode_all(&b.data[..]).unwrap())
                .collect();
            assert!(own.iter().all(|t| sha(t) != sha(&tars[0])));
            assert_reads_like_original(&reg, &repo, &own);
        }
    }
}

#[test]
fn podman_partially_pulls_and_runs_converted_images() {
    if !require_root_fuse("podman_partially_pulls_and_runs_converted_images") {
        return;
    }
    let reg = Registry::start();
    let src = push_image(&reg.addr, "t/orig", "1", &runnable_layers(), Comp::Gzip);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    for format in ["zstd-chunked", "estargz"] {
        let repo = format!("t/conv-{format}");
        let dst = format!("{}/{repo}:1", reg.addr);
        ok(
            &root,
            &["convert", "--format", format, &src.reference, &dst],
        );
        let descs = layer_descs(&dst);
        if format == "estargz" {
            // stargz-snapshotter's own reader accepts every layer: footer, TOC digest, chunks.
            let dir = tempfile::tempdir().unwrap();
            for d in &descs {
                let toc = d["annotations"]["containerd.io/snapshot/stargz/toc.digest"]
                    .as_str()
                    .unwrap();
                let blob = dir.path().join("blob");
                run(Command::new("curl").arg("-sSfo").arg(&blob).arg(format!(
                    "http://{}/v2/{repo}/blobs/{}",
                    reg.addr,
                    d["digest"].as_str().unwrap()
                )));
                run(Command::new(stargz_writer())
                    .arg("verify")
                    .arg(&blob)
                    .arg(toc));
            }
        } else {
            for d in &descs {
                let a = &d["annotations"];
                for key in [
                    "io.containers.zstd-chunked.manifest-checksum",
                    "io.github.containers.zstd-chunked.manifest-checksum",
                ] {
                    assert!(a[key].is_string(), "{key} missing: {d}");
                }
            }
        }
        // A fresh podman each time: podman keys images by config, which zstd-chunked keeps.
        let podman = Podman::new(&[&reg.addr]);
        let out = podman.ok(&["--log-level", "debug", "pull", &dst]);
        let log = String::from_utf8_lossy(&out.stderr);
        let partial = log.matches("Retrieved partial blob").count();
        assert_eq!(
            partial,
            src.tars.len(),
            "{format}: podman pulled {partial} of {} layers partially:\n{}",
            src.tars.len(),
            log.lines()
                .filter(|l| l.contains("partial") || l.contains("blob"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let out = podman.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            &dst,
            "/bin/busybox",
            "cat",
            "/etc/os-release",
            "/data/tagged-link",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ID=strata-test\nVERSION_ID=2\ntagged",
            "{format}"
        );
    }
    // strata reads its own eStargz lazily, to the original tree (landmarks hidden).
    assert_reads_like_original(&reg, "t/conv-estargz", &src.tars);
}

/// The stargz-writer tool, built (once per test binary) with the Go module proxy.
fn stargz_writer() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/stargz-writer");
            let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("stargz-writer");
            run(Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&out)
                .arg(".")
                .current_dir(&src));
            out
        })
        .clone()
}

#[test]
fn multi_platform_image_shows_the_index_digest_it_was_pulled_by() {
    if !require_root_fuse("multi_platform_image_shows_the_index_digest_it_was_pulled_by") {
        return;
    }
    let reg = Registry::start();
    push_image(
        &reg.addr,
        "t/multi",
        "amd64",
        &runnable_layers(),
        Comp::Native,
    );
    let manifest = run(Command::new("curl").args([
        "-sSf",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/t/multi/manifests/amd64", reg.addr),
    ]));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
             "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("index.json");
    std::fs::write(&file, &index).unwrap();
    run(Command::new("curl")
        .args(["-sSf", "-X", "PUT", "-H"])
        .arg("Content-Type: application/vnd.oci.image.index.v1+json")
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}/v2/t/multi/manifests/1", reg.addr)));
    let root = state.path().join("root");
    let reference = format!("{}/t/multi:1", reg.addr);
    // How each layer will be read is logged at info level (the transcript is docker's).
    let out = strata_tests::strata::run(&root, &["--log-level", "info", "pull", &reference]);
    assert!(out.status.success());
    let pulled = String::from_utf8_lossy(&out.stderr);
    assert_eq!(pulled.matches("lazy: zstd:chunked").count(), 4, "{pulled}");

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&root, &["inspect", &reference])).unwrap();
    let img = &inspect[0];
    assert_eq!(
        img["RepoDigests"],
        serde_json::json!([format!("{}/t/multi@{}", reg.addr, sha(&index))])
    );
    assert_eq!(img["Strata"]["Manifest"], sha(&manifest));
    assert_eq!(img["Strata"]["Index"], sha(&index));
    let listed = ok(&root, &["images", "--digests"]);
    assert!(listed.contains(&sha(&index)), "{listed}");
    assert!(!listed.contains(&sha(&manifest)), "{listed}");
}

/// Serves `body` to every GET on 127.0.0.1 (a foreign layer's URL); counts requests.
fn serve_blob(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (format!("http://{addr}/layer.tar.gz"), hits)
}

#[test]
fn foreign_layer_is_fetched_from_its_url_and_runs() {
    if !require_root_fuse("foreign_layer_is_fetched_from_its_url_and_runs") {
        return;
    }
    use strata_tests::layers::{Item, file};
    let reg = Registry::start_allowing_foreign_urls();
    let scratch = tempfile::tempdir().unwrap();
    let gz = |tar: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, tar).unwrap();
        e.finish().unwrap()
    };
    let foreign_items: Vec<Item> = vec![
        strata_tests::layers::dir("etc"),
        file("etc/os-release", b"ID=foreign-base\n"),
    ];
    let foreign_tar = tar_of(&foreign_items);
    let foreign = gz(&foreign_tar);
    let (url, hits) = serve_blob(foreign.clone());
    let bb_tar = tar_of(&strata_tests::fixtures::busybox_layer());
    let bb = gz(&bb_tar);
    let bb_digest = strata_tests::layers::push_blob(&reg.addr, "t/foreign", &bb, scratch.path());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&foreign_tar), sha(&bb_tar)]},
    }))
    .unwrap();
    let cdigest = strata_tests::layers::push_blob(&reg.addr, "t/foreign", &config, scratch.path());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cdigest, "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
             "digest": sha(&foreign), "size": foreign.len(), "urls": [url]},
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
             "digest": bb_digest, "size": bb.len()},
        ],
    }))
    .unwrap();
    let mfile = scratch.path().join("manifest.json");
    std::fs::write(&mfile, &manifest).unwrap();
    run(Command::new("curl")
        .args(["-sSf", "-X", "PUT", "-H"])
        .arg("Content-Type: application/vnd.docker.distribution.manifest.v2+json")
        .arg("--data-binary")
        .arg(format!("@{}", mfile.display()))
        .arg(format!("http://{}/v2/t/foreign/manifests/1", reg.addr)));

    let root = scratch.path().join("root");
    let reference = format!("{}/t/foreign:1", reg.addr);
    let pulled = pull_paths(&root, &reference);
    assert!(pulled.contains("full: foreign layer"), "{pulled}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let out = ok(
        &root,
        &[
            "run",
            "--rm",
            &reference,
            "/bin/busybox",
            "cat",
            "/etc/os-release",
        ],
    );
    assert_eq!(out, "ID=foreign-base\n");
    let want = snapshot(&ReferenceTree::new(&[foreign_tar, bb_tar]).root);
    {
        let m = Mounted::new(&root, &reference, &scratch.path().join("mnt"));
        assert_same("foreign", &snapshot(&m.dir), &want);
    }

    // A URL that serves other bytes: the pull fails naming the layer and why; nothing is kept.
    let (bad_url, _) = serve_blob(b"not the layer".to_vec());
    let bad = String::from_utf8(manifest.clone())
        .unwrap()
        .replace(&url, &bad_url);
    std::fs::write(&mfile, &bad).unwrap();
    run(Command::new("curl")
        .args(["-sSf", "-X", "PUT", "-H"])
        .arg("Content-Type: application/vnd.docker.distribution.manifest.v2+json")
        .arg("--data-binary")
        .arg(format!("@{}", mfile.display()))
        .arg(format!("http://{}/v2/t/foreign/manifests/bad", reg.addr)));
    let fresh = scratch.path().join("fresh");
    let out = strata_tests::strata::run(&fresh, &["pull", &format!("{}/t/foreign:bad", reg.addr)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&sha(&foreign)) && err.contains("foreign layer") && err.contains("hashes to"),
        "{err}"
    );
}

#[test]
fn run_says_why_an_image_tree_cannot_be_built() {
    if !require_root_fuse("run_says_why_an_image_tree_cannot_be_built") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(&reg.addr, "t/gone", "1", &runnable_layers(), Comp::Gzip);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &img.reference]);
    // The registry loses a layer that was never streamed.
    let layer = layer_descs(&img.reference)[0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    run(Command::new("curl").args([
        "-sSf",
        "-X",
        "DELETE",
        &format!("http://{}/v2/t/gone/blobs/{layer}", reg.addr),
    ]));
    let out = strata_tests::strata::run(
        &root,
        &["run", "--rm", &img.reference, "/bin/busybox", "true"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    // run's error is "strata: …" followed by docker's hint.
    let last = err
        .lines()
        .rfind(|l| l.starts_with("strata: "))
        .unwrap_or("");
    assert!(
        err.ends_with("Run 'strata run --help' for more information\n"),
        "{err}"
    );
    assert!(
        last.contains("cannot be used") && last.contains(&layer) && last.contains("404"),
        "{err}"
    );
    assert!(!err.contains("Input/output error"), "{err}");
    // `mount` says the same and leaves no mount behind (a detached one logs the line).
    let mnt = state.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = strata_tests::strata::run(&root, &["mount", &img.reference, mnt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains("cannot be used") && last.contains(&layer),
        "{err}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "the failed mount is gone"
    );
}

#[test]
fn a_layer_with_an_untrusted_toc_streams_with_one_warning() {
    if !require_root_fuse("a_layer_with_an_untrusted_toc_streams_with_one_warning") {
        return;
    }
    let tars: Vec<Vec<u8>> = foreign_layers().iter().map(|l| tar_of(l)).collect();
    let blobs: Vec<Blob> = tars
        .iter()
        .enumerate()
        .map(|(i, tar)| {
            let mut data = Vec::new();
            let w = strata_formats::chunked::write_chunked(&tar[..], &mut data, 3).unwrap();
            let mut annotations = serde_json::to_value(&w.annotations).unwrap();
            if i == 1 {
                // The TOC checksum names other bytes: the TOC cannot be trusted.
                for k in [
                    "io.github.containers.zstd-chunked.manifest-checksum",
                    "io.containers.zstd-chunked.manifest-checksum",
                ] {
                    annotations[k] = serde_json::json!(sha(b"some other TOC"));
                }
            }
            Blob {
                data,
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
                annotations,
                diff_id: sha(tar),
            }
        })
        .collect();
    let bad_layer = sha(&blobs[1].data);
    let reg = Registry::start();
    let reference = push_blobs(&reg.addr, "t/untrusted", "1", &blobs);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let out = strata_tests::strata::run(&root, &["--log-level", "info", "pull", &reference]);
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains(&bad_layer), "{stderr}");
    assert_eq!(stderr.matches("lazy: zstd:chunked").count(), 3, "{stderr}");
    assert_eq!(
        stderr.matches("stream: no usable TOC").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stdout.matches("Pull complete").count(), 4, "{stdout}");
    let want = snapshot(&ReferenceTree::new(&tars).root);
    let m = Mounted::new(&root, &reference, &state.path().join("mnt"));
    assert_same("untrusted TOC", &snapshot(&m.dir), &want);
}
