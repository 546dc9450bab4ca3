//! Issue 22's kinds of failure, each with inputs built here: sparse files in every tar dialect
//! (kind 4), platform selection from an index (kind 5), archives as `docker save` writes them
//! (kind 8) and two images sharing one config (kind 1).
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::process::Command;

use strata_tests::fixtures::busybox_layer;
use strata_tests::layers::{Comp, push_tars, sha, tar_of};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};

/// `data/big`: 10 MiB, "ABCD" at 5,000,000 and "END!" at its end, holes elsewhere.
fn sparse_source(dir: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let f = std::fs::File::create(dir.join("data/big")).unwrap();
    f.set_len(10 << 20).unwrap();
    f.write_at(b"ABCD", 5_000_000).unwrap();
    f.write_at(b"END!", (10 << 20) - 4).unwrap();
    std::fs::read(dir.join("data/big")).unwrap()
}

/// Kind 4: layers written by `tar -S` in the GNU format and PAX 0.0, 0.1 and 1.0 pull, mount,
/// run and convert to the exact original file.
#[test]
fn sparse_files_in_every_tar_dialect() {
    if !require_root_fuse("sparse_files_in_every_tar_dialect") {
        return;
    }
    let reg = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let want = sha(&sparse_source(src.path()))
        .trim_start_matches("sha256:")
        .to_string();
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let dialects: [(&str, &[&str]); 4] = [
        ("gnu", &["--format=gnu"]),
        ("pax00", &["--format=pax", "--sparse-version=0.0"]),
        ("pax01", &["--format=pax", "--sparse-version=0.1"]),
        ("pax10", &["--format=pax", "--sparse-version=1.0"]),
    ];
    for (tag, format) in dialects {
        let out = Command::new("tar")
            .args(format)
            .args(["-S", "-cf", "-", "-C"])
            .arg(src.path())
            .arg("data")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.len() < 1 << 20, "{tag}: not written sparse");
        let pushed = push_tars(
            &reg.addr,
            "t/sparse",
            tag,
            vec![tar_of(&busybox_layer()), out.stdout],
            Comp::Gzip,
        );
        let reference = pushed.reference;
        ok(&root, &["pull", &reference]);
        let sum = ok(
            &root,
            &[
                "run",
                "--rm",
                &reference,
                "/bin/busybox",
                "sha256sum",
                "/data/big",
            ],
        );
        assert!(sum.starts_with(&want), "{tag}: run read {sum}, want {want}");
        let m = Mounted::new(&root, &reference, &state.path().join(format!("mnt-{tag}")));
        assert_eq!(
            sha(&std::fs::read(m.dir.join("data/big")).unwrap()),
            format!("sha256:{want}"),
            "{tag}: mount"
        );
        drop(m);

        // Converted to the native format and read lazily from a fresh state root.
        let lazy = format!("{reference}-lazy");
        ok(&root, &["convert", &reference, &lazy]);
        let fresh = state.path().join(format!("fresh-{tag}"));
        let sum = ok(
            &fresh,
            &[
                "run",
                "--rm",
                &lazy,
                "/bin/busybox",
                "sha256sum",
                "/data/big",
            ],
        );
        assert!(sum.starts_with(&want), "{tag}: converted read {sum}");
    }
}

/// A tar of `(path, bytes)` files.
fn tar_files(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, p, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn hex(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

fn config_of(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/busybox", "cat", "/hello"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": diff_ids.iter().map(|_| serde_json::json!({"created_by": "test"})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// The archive `docker save` wrote before Docker 25: `<id>.json`, `<layer id>/layer.tar`,
/// `manifest.json` (RepoTags null when untagged) and `repositories`.
fn legacy_archive(hello: &[u8], repo_tags: Option<Vec<&str>>) -> (Vec<u8>, String) {
    let layers = [tar_of(&busybox_layer()), tar_files(&[("hello", hello)])];
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = config_of(&diff_ids);
    let id = sha(&config);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layer_paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let dir = format!("{}{i}", &hex(&diff_ids[i])[..60]);
        files.push((format!("{dir}/VERSION"), b"1.0".to_vec()));
        files.push((format!("{dir}/layer.tar"), l.clone()));
        layer_paths.push(format!("{dir}/layer.tar"));
    }
    files.push((format!("{}.json", hex(&id)), config));
    let manifest = serde_json::json!([{
        "Config": format!("{}.json", hex(&id)),
        "RepoTags": repo_tags,
        "Layers": layer_paths,
    }]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    if let Some(tags) = &repo_tags {
        let (repo, tag) = tags[0].rsplit_once(':').unwrap();
        let repos = serde_json::json!({repo: {tag: hex(&id)}});
        files.push(("repositories".into(), serde_json::to_vec(&repos).unwrap()));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), &d[..])).collect();
    (tar_files(&refs), id)
}

/// An OCI layout whose index.json points at an image index, as docker's containerd image
/// store and nerdctl write it: the index lists linux/amd64 (present), linux/arm64 and an
/// attestation manifest (blobs left out, as docker leaves them out).
fn nested_index_archive(hello: &[u8], annotations: serde_json::Value) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut put = |b: Vec<u8>| {
        let d = sha(&b);
        blobs.push((format!("blobs/sha256/{}", hex(&d)), b));
        d
    };
    let layers = [tar_of(&busybox_layer()), tar_files(&[("hello", hello)])];
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let mut descs = Vec::new();
    for l in &layers {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, l).unwrap();
        let blob = gz.finish().unwrap();
        let size = blob.len();
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(blob), "size": size}));
    }
    let config = config_of(&diff_ids);
    let csize = config.len();
    let cd = put(config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": descs,
    }))
    .unwrap();
    let msize = manifest.len();
    let md = put(manifest);
    let absent = |n: u8| sha(&[n]);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent(1), "size": 100,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent(2), "size": 100,
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": md}},
        ],
    }))
    .unwrap();
    let isize = index.len();
    let id = put(index);
    let top = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": isize, "annotations": annotations}],
    });
    blobs.push(("index.json".into(), serde_json::to_vec(&top).unwrap()));
    blobs.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    let refs: Vec<(&str, &[u8])> = blobs.iter().map(|(p, d)| (p.as_str(), &d[..])).collect();
    tar_files(&refs)
}

fn load(root: &Path, archive: &[u8], dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, archive).unwrap();
    ok(root, &["load", "-i", p.to_str().unwrap()])
}

/// Kind 8: `load` reads what `docker save` writes and prints what `docker load` prints
/// (`Loaded image: NAME`, `Loaded image ID: sha256:...` when untagged; docker's documented
/// output since 1.x, unchanged in Docker 25+/29). The formats follow moby's
/// image/tarexport (legacy manifest.json, RepoTags null when untagged) and Docker 25+/
/// containerd image store (index.json → image index, `io.containerd.image.name`). Compared by
/// hand with a live engine (dockerd v2.0.0-beta.24, containerd 2.2.3, docker CLI 28.2.2, built
/// by ../shared/peers): `docker save bb:1` → `strata load` printed `Loaded image: bb:1` and ran;
/// `strata save` → `docker load` printed `Loaded image: me/roundtrip:2` and `docker run` ran;
/// tests/golden/roundtrip records the same round trips.
#[test]
fn load_reads_docker_save_archives_and_save_writes_manifest_json() {
    if !require_root_fuse("load_reads_docker_save_archives_and_save_writes_manifest_json") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let dir = state.path();

    // Before Docker 25, tagged: named from RepoTags, runs.
    let (archive, _) = legacy_archive(b"legacy\n", Some(vec!["me/legacy:1", "me/legacy:latest"]));
    assert_eq!(
        load(&root, &archive, dir, "legacy.tar"),
        "Loaded image: me/legacy:1\nLoaded image: me/legacy:latest\n"
    );
    assert_eq!(ok(&root, &["run", "--rm", "me/legacy:1"]), "legacy\n");

    // Untagged (RepoTags null): its ID is printed, and runs by ID.
    let (archive, id) = legacy_archive(b"untagged\n", None);
    assert_eq!(
        load(&root, &archive, dir, "untagged.tar"),
        format!("Loaded image ID: {id}\n")
    );
    assert_eq!(ok(&root, &["run", "--rm", &id[7..19]]), "untagged\n");

    // A layer whose content does not match the config's diff_id is refused.
    let (mut archive, _) = legacy_archive(b"good\n", Some(vec!["me/bad:1"]));
    let at = archive.windows(5).rposition(|w| w == b"good\n").unwrap();
    archive[at] = b'b';
    let p = dir.join("bad.tar");
    std::fs::write(&p, &archive).unwrap();
    let out = strata_tests::strata::run(&root, &["load", "-i", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("layer.tar"));
    assert!(
        strata_tests::strata::run(&root, &["inspect", "me/bad:1"])
            .status
            .code()
            != Some(0)
    );

    // The containerd image store / nerdctl: index.json → image index.
    let archive = nested_index_archive(
        b"nested\n",
        serde_json::json!({"io.containerd.image.name": "docker.io/library/nested:2", "org.opencontainers.image.ref.name": "2"}),
    );
    assert_eq!(
        load(&root, &archive, dir, "nested.tar"),
        "Loaded image: nested:2\n"
    );
    assert_eq!(ok(&root, &["run", "--rm", "nested:2"]), "nested\n");
    // Only the OCI ref name, as a whole reference.
    let archive = nested_index_archive(
        b"refname\n",
        serde_json::json!({"org.opencontainers.image.ref.name": "127.0.0.1:5999/me/ref:3"}),
    );
    assert_eq!(
        load(&root, &archive, dir, "ref.tar"),
        "Loaded image: 127.0.0.1:5999/me/ref:3\n"
    );

    // `strata save` writes docker's manifest.json beside the OCI layout; with index.json taken
    // out, manifest.json alone loads the image (what `docker load` reads).
    let saved = dir.join("saved.tar");
    ok(&root, &["save", "-o", saved.to_str().unwrap(), "nested:2"]);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut a = tar::Archive::new(std::fs::File::open(&saved).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        // Directory entries (`blobs/`, as docker's archive has them) are made again by the
        // files below them.
        if e.header().entry_type().is_dir() {
            assert!(p == "blobs/" || p == "blobs/sha256/", "{p}");
            continue;
        }
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        files.push((p, v));
    }
    let manifest = &files.iter().find(|(p, _)| p == "manifest.json").unwrap().1;
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    assert_eq!(m[0]["RepoTags"], serde_json::json!(["nested:2"]));
    let config_path = m[0]["Config"].as_str().unwrap();
    assert!(config_path.starts_with("blobs/sha256/"), "{m}");
    for l in m[0]["Layers"].as_array().unwrap() {
        assert!(
            files.iter().any(|(p, _)| p == l.as_str().unwrap()),
            "{l} missing"
        );
    }
    assert!(files.iter().any(|(p, _)| p == "index.json"));
    files.retain(|(p, _)| p != "index.json");
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), &d[..])).collect();
    let fresh = dir.join("fresh");
    assert_eq!(
        load(&fresh, &tar_files(&refs), dir, "docker-only.tar"),
        "Loaded image: nested:2\n"
    );
    assert_eq!(ok(&fresh, &["run", "--rm", "nested:2"]), "nested\n");
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    out.stdout
}

fn inspect(root: &Path, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&ok(root, &["inspect", name])).unwrap();
    v[0].clone()
}

fn fails(root: &Path, args: &[&str]) -> String {
    let out = strata_tests::strata::run(root, args);
    assert!(!out.status.success(), "strata {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Kind 1: images that share a config — an image, its `strata convert` output, the same image
/// under a Docker-format manifest, and a profiled one — in one state root. Containers remember
/// their manifest: commit and start work; rmi by id follows docker (several names: must be
/// forced); inspect, history and images stay right.
#[test]
fn images_sharing_a_config() {
    if !require_root_fuse("images_sharing_a_config") {
        return;
    }
    let reg = Registry::start();
    let pushed = strata_tests::layers::push_image(
        &reg.addr,
        "t/shared",
        "1",
        &strata_tests::fixtures::runnable_layers(),
        Comp::Gzip,
    );
    let orig = pushed.reference;
    // The same image under a Docker-format manifest.
    let m: serde_json::Value = serde_json::from_slice(&curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{}/v2/t/shared/manifests/1", reg.addr),
    ]))
    .unwrap();
    let mut dm = m.clone();
    dm["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json".into();
    dm["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
    for l in dm["layers"].as_array_mut().unwrap() {
        l["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
        l.as_object_mut().unwrap().remove("annotations");
    }
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.docker.distribution.manifest.v2+json",
        "--data-binary",
        &serde_json::to_string(&dm).unwrap(),
        &format!("http://{}/v2/t/shared/manifests/docker", reg.addr),
    ]);
    let docker = format!("{}/t/shared:docker", reg.addr);
    let lazy = format!("{}/t/shared:lazy", reg.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &orig]);
    ok(&root, &["convert", &orig, &lazy]);
    ok(&root, &["pull", &lazy]);
    ok(&root, &["pull", &docker]);
    let id = inspect(&root, &orig)["Id"].as_str().unwrap().to_string();
    for r in [&lazy, &docker] {
        assert_eq!(inspect(&root, r)["Id"], id.as_str(), "{r}");
    }
    let short = &id[7..19];
    let images = ok(&root, &["images"]);
    assert_eq!(images.matches(short).count(), 3, "{images}");

    // A container of each: commit and start of the exited container work.
    for (name, image) in [("c-orig", &orig), ("c-lazy", &lazy), ("c-docker", &docker)] {
        ok(
            &root,
            &[
                "run",
                "--name",
                name,
                image,
                "sh",
                "-c",
                &format!("echo {name} > /who"),
            ],
        );
        let target = format!("me/{name}:1");
        ok(&root, &["commit", name, &target]);
        assert_eq!(
            ok(&root, &["run", "--rm", &target, "cat", "/who"]),
            format!("{name}\n")
        );
        ok(&root, &["start", "-a", name]);
        let c = inspect(&root, name);
        assert_eq!(
            (
                c["State"]["Status"].as_str(),
                c["State"]["ExitCode"].as_i64()
            ),
            (Some("exited"), Some(0)),
            "{name}"
        );
    }

    // A profiled image (a new manifest, same config) adds a fourth name to the id.
    ok(
        &root,
        &[
            "profile",
            "--tag",
            "me/profiled:1",
            &lazy,
            "cat",
            "/etc/os-release",
        ],
    );
    assert_eq!(inspect(&root, "me/profiled:1")["Id"], id.as_str());

    // rmi by id: several names → must be forced, as docker says; nothing removed.
    let err = fails(&root, &["rmi", short]);
    assert!(
        err.contains(&format!(
            "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
        )),
        "{err}"
    );
    // inspect and history by id still work.
    ok(&root, &["inspect", short]);
    let hist = ok(&root, &["history", short]);
    assert!(hist.contains(short), "{hist}");
    // Untagging one name of a used image: its container keeps it.
    let err = fails(&root, &["rmi", &lazy]);
    assert!(err.contains("is using its referenced image"), "{err}");
    ok(&root, &["rm", "c-lazy"]);
    let out = ok(&root, &["rmi", &lazy]);
    assert!(out.starts_with("Untagged: "), "{out}");
    // The other images of that id are untouched and still run.
    assert!(!ok(&root, &["run", "--rm", &docker, "cat", "/etc/os-release"]).is_empty());
    ok(&root, &["start", "-a", "c-orig"]);
    ok(&root, &["commit", "c-docker", "me/again:1"]);

    // Forced, with no container left: every name of the id goes, and the id with them.
    ok(&root, &["rm", "c-orig", "c-docker"]);
    let out = ok(&root, &["rmi", "-f", short]);
    assert_eq!(out.matches("Untagged: ").count(), 3, "{out}");
    assert!(out.ends_with(&format!("Deleted: {id}\n")), "{out}");
    assert!(!ok(&root, &["images"]).contains(short));
    // What was committed from them stays and runs.
    assert_eq!(
        ok(&root, &["run", "--rm", "me/c-lazy:1", "cat", "/who"]),
        "c-lazy\n"
    );
}

/// Pushes an index of `entries` (platform, tag of an image already pushed) as `repo:tag`.
fn push_index(reg: &str, repo: &str, tag: &str, entries: &[(&str, &str)]) -> String {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(platform, image_tag)| {
            let bytes = curl(&[
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!("http://{reg}/v2/{repo}/manifests/{image_tag}"),
            ]);
            let parts: Vec<&str> = platform.split('/').collect();
            let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
            if let Some(v) = parts.get(2) {
                p["variant"] = (*v).into();
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(&bytes), "size": bytes.len(), "platform": p,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.index.v1+json",
        "--data-binary",
        &serde_json::to_string(&index).unwrap(),
        &format!("http://{reg}/v2/{repo}/manifests/{tag}"),
    ]);
    format!("{reg}/{repo}:{tag}")
}

/// Kind 5: the manifest chosen from an index follows containerd's platform matching. The two
/// arm cases are what dockerd v29 beta with containerd 2.2.3 pulls (issue 22); the others
/// follow containerd's platforms module (normalization, compatible variants, best match
/// whatever the order). Unit tests in oci/src/platform.rs cover more cases.
#[test]
fn platform_selection_from_an_index() {
    if !require_root_fuse("platform_selection_from_an_index") {
        return;
    }
    let reg = Registry::start();
    for v in ["v5", "v6", "v7", "arm64", "amd64"] {
        push_tars(
            &reg.addr,
            "t/multi",
            v,
            vec![
                tar_of(&busybox_layer()),
                tar_files(&[("which", v.as_bytes())]),
            ],
            Comp::Gzip,
        );
    }
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let which = |index: &str, platform: &str| {
        ok(&root, &["pull", "--platform", platform, index]);
        ok(&root, &["run", "--rm", index, "cat", "/which"])
    };
    let i75 = push_index(
        &reg.addr,
        "t/multi",
        "i75",
        &[("linux/arm/v7", "v7"), ("linux/arm/v5", "v5")],
    );
    assert_eq!(which(&i75, "linux/arm/v6"), "v5");
    let i567 = push_index(
        &reg.addr,
        "t/multi",
        "i567",
        &[
            ("linux/arm/v5", "v5"),
            ("linux/arm/v6", "v6"),
            ("linux/arm/v7", "v7"),
        ],
    );
    assert_eq!(which(&i567, "linux/arm"), "v7");
    assert_eq!(which(&i567, "linux/arm/v6"), "v6");
    let mixed = push_index(
        &reg.addr,
        "t/multi",
        "mixed",
        &[
            ("linux/arm/v7", "v7"),
            ("linux/aarch64", "arm64"),
            ("linux/x86_64", "amd64"),
        ],
    );
    assert_eq!(which(&mixed, "linux/arm64/v8"), "arm64");
    assert_eq!(which(&mixed, "linux/amd64"), "amd64");
    let out = strata_tests::strata::run(&root, &["pull", "--platform", "linux/s390x", &mixed]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("linux/s390x")
            && err.contains("available: linux/arm/v7, linux/arm64, linux/amd64"),
        "{err}"
    );
}
