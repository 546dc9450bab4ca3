//! `commit` and `tag`: a container's changes become one native layer on top of its image,
//! with OCI whiteouts and opaque directories, without fetching the base layers.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Comp, push_image};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{ok, run};
use strata_tests::world::World;

fn world(comp: Comp) -> World {
    World::start(&runnable_layers(), comp)
}

#[test]
fn commit_makes_a_lazy_image_of_the_changes() {
    if !require_root_fuse("commit_makes_a_lazy_image_of_the_changes") {
        return;
    }
    let World {
        reg,
        proxy,
        state: _state,
        root,
        base,
    } = world(Comp::Native);
    let script = "echo 'test docker commit' > /hellodocker; rm /etc/os-release; rm -r /var/lib; mkdir -p /var/lib; echo x > /var/lib/new; ln /hellodocker /hello-link";
    ok(&root, &["run", "--name", "c1", &base, "sh", "-c", script]);
    proxy.reset();
    let new = format!("{}/me/hello:v1", reg.addr);
    let id = ok(
        &root,
        &[
            "commit",
            "-m",
            "add hello",
            "--author",
            "ops <ops@example.invalid>",
            "-c",
            "CMD [\"cat\",\"/hellodocker\"]",
            "c1",
            &new,
        ],
    );
    assert!(
        id.trim().starts_with("sha256:") && id.trim().len() == 71,
        "{id}"
    );
    assert_eq!(
        proxy.counts().0,
        0,
        "commit fetched from the registry: {:?}",
        proxy.stats.log.lock().unwrap()
    );

    assert_eq!(ok(&root, &["run", "--rm", &new]), "test docker commit\n");
    let o = run(
        &root,
        &[
            "run",
            "--rm",
            &new,
            "sh",
            "-c",
            "ls /var/lib; ls /etc/os-release 2>&1 | wc -l; [ /hellodocker -ef /hello-link ] && echo linked",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "new\n1\nlinked\n");

    let v: serde_json::Value = serde_json::from_str(&ok(&root, &["inspect", &new])).unwrap();
    let img = &v[0];
    assert_eq!(img["Id"].as_str().unwrap(), id.trim());
    assert_eq!(
        img["Config"]["Cmd"],
        serde_json::json!(["cat", "/hellodocker"])
    );
    assert_eq!(img["Author"], "ops <ops@example.invalid>");
    assert_eq!(img["RootFS"]["Layers"].as_array().unwrap().len(), 5);
    let layers = img["Strata"]["Layers"].as_array().unwrap();
    let top = layers.last().unwrap();
    assert_eq!(top["Format"]["kind"], "zstd-chunked");
    let blob = root.join("cache/blobs").join(
        top["Digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | tar -t", blob.display()))
        .output()
        .unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "hellodocker",
        "etc/.wh.os-release",
        "var/lib/.wh..wh..opq",
        "var/lib/new",
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "{want} missing from the layer:\n{list}"
        );
    }
    assert!(
        !list
            .lines()
            .any(|l| l.starts_with("proc") || l.starts_with("etc/hosts")),
        "{list}"
    );

    // tag: same image id under another name.
    ok(&root, &["tag", &new, "me/other:2"]);
    let images = ok(&root, &["images"]);
    let short = &id.trim()["sha256:".len().."sha256:".len() + 12];
    assert_eq!(
        images.lines().filter(|l| l.contains(short)).count(),
        2,
        "{images}"
    );
}

#[test]
fn commit_push_round_trip_through_other_clients() {
    if !require_root_fuse("commit_push_round_trip_through_other_clients") {
        return;
    }
    let World {
        reg,
        proxy,
        state,
        root,
        base,
    } = world(Comp::Gzip);
    ok(
        &root,
        &[
            "run",
            "--name",
            "c1",
            &base,
            "sh",
            "-c",
            "echo pushed > /hellodocker; rm /etc/os-release; rm -r /var/lib; mkdir /var/lib",
        ],
    );
    let new = format!("{}/me/hello:v1", proxy.addr);
    ok(&root, &["commit", "-m", "round trip", "c1", &new]);
    ok(&root, &["push", &new]);

    // Pushing again uploads nothing: existence checks and the manifest only.
    proxy.reset();
    ok(&root, &["push", &new]);
    let log = proxy.stats.log.lock().unwrap().clone();
    let uploads: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("/blobs/uploads/") || (l.starts_with("PUT") && l.contains("/blobs/"))
        })
        .collect();
    assert!(
        uploads.is_empty(),
        "second push uploaded blobs: {uploads:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("PUT") && l.contains("/manifests/v1")),
        "{log:?}"
    );

    // Another client copies it and an independent extraction shows the change.
    let layout = state.path().join("oci");
    let st = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/me/hello:v1", reg.addr))
        .arg(format!("oci:{}:v1", layout.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(mdigest)).unwrap())
            .unwrap();
    let tars: Vec<Vec<u8>> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let blob = std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(l["digest"].as_str().unwrap().trim_start_matches("sha256:")),
            )
            .unwrap();
            let mut out = Vec::new();
            if l["mediaType"].as_str().unwrap().ends_with("zstd") {
                out = zstd::stream::decode_all(&blob[..]).unwrap();
            } else {
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut out)
                    .unwrap();
            }
            out
        })
        .collect();
    let tree = strata_tests::walk::ReferenceTree::new(&tars);
    assert_eq!(
        std::fs::read_to_string(tree.root.join("hellodocker")).unwrap(),
        "pushed\n"
    );
    assert!(
        !tree.root.join("etc/os-release").exists(),
        "a deletion came back"
    );
    assert_eq!(
        std::fs::read_dir(tree.root.join("var/lib"))
            .unwrap()
            .count(),
        0,
        "opaque dir not opaque"
    );

    // And strata runs the pushed image lazily from a fresh state.
    let fresh = state.path().join("fresh");
    assert_eq!(
        ok(
            &fresh,
            &[
                "run",
                "--rm",
                &format!("{}/me/hello:v1", reg.addr),
                "cat",
                "/hellodocker"
            ]
        ),
        "pushed\n"
    );
}

#[test]
fn export_then_import_and_bad_tarballs() {
    if !require_root_fuse("export_then_import_and_bad_tarballs") {
        return;
    }
    // Keep the proxy: the base image is pulled through it.
    let World {
        reg,
        proxy: _proxy,
        state,
        root,
        base,
    } = world(Comp::Native);
    ok(
        &root,
        &[
            "run",
            "--name",
            "c1",
            &base,
            "sh",
            "-c",
            "echo exported > /x; rm /etc/os-release",
        ],
    );
    let tar_path = state.path().join("c1.tar");
    ok(&root, &["export", "-o", tar_path.to_str().unwrap(), "c1"]);
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.lines().any(|l| l == "x") && list.lines().any(|l| l == "bin/busybox"),
        "{list}"
    );
    assert!(
        !list.lines().any(|l| l == "etc/os-release"),
        "a deleted file was exported"
    );

    let id = ok(
        &root,
        &[
            "import",
            "-c",
            "CMD [\"/bin/cat\",\"/x\"]",
            tar_path.to_str().unwrap(),
            "imported:1",
        ],
    );
    assert!(id.starts_with("sha256:"));
    assert_eq!(ok(&root, &["run", "--rm", "imported:1"]), "exported\n");
    // From a URL too (the registry serves the tarball as a plain blob).
    let scratch = tempfile::tempdir().unwrap();
    let digest = strata_tests::layers::push_blob(
        &reg.addr,
        "t/files",
        &std::fs::read(&tar_path).unwrap(),
        scratch.path(),
    );
    let url = format!("http://{}/v2/t/files/blobs/{digest}", reg.addr);
    ok(
        &root,
        &[
            "import",
            "-c",
            "CMD [\"/bin/cat\",\"/x\"]",
            &url,
            "from-url:1",
        ],
    );
    assert_eq!(ok(&root, &["run", "--rm", "from-url:1"]), "exported\n");

    // A tarball with a `..` entry is refused with one line, and nothing is stored.
    let mut h = tar::Header::new_gnu();
    let name = b"../escape";
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    let evil = state.path().join("evil.tar");
    std::fs::write(&evil, b.into_inner().unwrap()).unwrap();
    let before = ok(&root, &["images", "-q"]);
    let o = run(&root, &["import", evil.to_str().unwrap(), "evil:1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.trim().lines().count() == 1 && err.contains("../escape"),
        "{err}"
    );
    assert_eq!(ok(&root, &["images", "-q"]), before);
}

#[test]
fn commit_of_a_running_container_and_search() {
    if !require_root_fuse("commit_of_a_running_container_and_search") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/base", "1", &runnable_layers(), Comp::Native);
    push_image(
        &reg.addr,
        "other/thing",
        "1",
        &runnable_layers(),
        Comp::Native,
    );
    let base = format!("{}/t/base:1", reg.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    // Each value is written whole then renamed: a pause between `>` truncating the file and
    // `echo` writing it would otherwise commit an empty counter.
    let loop_script = "i=0; while true; do i=$((i+1)); echo $i > /counter.new; mv /counter.new /counter; sleep 0.05; done";
    ok(
        &root,
        &[
            "run",
            "-d",
            "--name",
            "busy",
            &base,
            "sh",
            "-c",
            loop_script,
        ],
    );
    // The loop's first write, waited for (bounded): a loaded machine takes more than 0.8 s.
    let t0 = std::time::Instant::now();
    while !strata_tests::strata::run(&root, &["exec", "busy", "cat", "/counter"])
        .status
        .success()
        && t0.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ok(&root, &["commit", "busy", "snap:1"]);
    // The container was paused, not stopped: it keeps running.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(ok(&root, &["ps"]).contains("busy"));
    let n: u64 = ok(&root, &["run", "--rm", "snap:1", "cat", "/counter"])
        .trim()
        .parse()
        .unwrap();
    assert!(n > 0);
    ok(&root, &["rm", "-f", "busy"]);

    let found = ok(&root, &["search", &format!("{}/base", reg.addr)]);
    assert_eq!(found, format!("NAME\n{}/t/base\n", reg.addr));
}

#[test]
fn save_then_load_without_the_registry() {
    if !require_root_fuse("save_then_load_without_the_registry") {
        return;
    }
    let World {
        reg: _reg,
        proxy,
        state,
        root,
        base,
    } = world(Comp::Gzip);
    ok(
        &root,
        &["run", "--name", "c1", &base, "sh", "-c", "echo saved > /s"],
    );
    ok(&root, &["commit", "c1", "me/saved:1"]);
    let archive = state.path().join("saved.tar");
    ok(
        &root,
        &["save", "-o", archive.to_str().unwrap(), "me/saved:1"],
    );
    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    // A fresh state loads it and runs it with the registry gone.
    proxy.set(strata_tests::proxy::Fault::Refuse);
    proxy.reset();
    let fresh = state.path().join("fresh");
    assert_eq!(
        ok(&fresh, &["load", "-i", archive.to_str().unwrap()]),
        "Loaded image: me/saved:1\n"
    );
    assert_eq!(
        ok(
            &fresh,
            &["run", "--rm", "me/saved:1", "cat", "/s", "/etc/os-release"]
        ),
        "saved\nID=strata-test\nVERSION_ID=2\n"
    );
    assert_eq!(proxy.counts().0, 0, "a loaded image read from the registry");
}

#[test]
fn large_layers_are_pushed_in_chunks() {
    if !require_root_fuse("large_layers_are_pushed_in_chunks") {
        return;
    }
    let World {
        reg: _reg,
        proxy,
        state,
        root,
        base,
    } = world(Comp::Native);
    ok(
        &root,
        &[
            "run",
            "--name",
            "c1",
            &base,
            "sh",
            "-c",
            "busybox head -c 40000000 /dev/urandom > /big; busybox md5sum /big > /big.md5",
        ],
    );
    let new = format!("{}/me/big:1", proxy.addr);
    ok(&root, &["commit", "c1", &new]);
    proxy.reset();
    ok(&root, &["push", &new]);
    let log = proxy.stats.log.lock().unwrap().clone();
    let patches = log.iter().filter(|l| l.starts_with("PATCH")).count();
    assert!(
        patches >= 3,
        "a 40 MB layer went up in {patches} PATCH requests: {log:?}"
    );
    let fresh = state.path().join("fresh");
    let out = ok(
        &fresh,
        &[
            "run",
            "--rm",
            &new,
            "sh",
            "-c",
            "busybox md5sum /big; cat /big.md5",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0], lines[1],
        "the pushed layer reads back differently"
    );
}

#[test]
fn push_to_a_refusing_registry_fails_with_one_line() {
    if !require_root_fuse("push_to_a_refusing_registry_fails_with_one_line") {
        return;
    }
    let reg = Registry::start();
    let locked = Registry::start_with_htpasswd("alice", "secret");
    push_image(&reg.addr, "t/base", "1", &runnable_layers(), Comp::Native);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(
        &root,
        &[
            "run",
            "--name",
            "c1",
            &format!("{}/t/base:1", reg.addr),
            "sh",
            "-c",
            "echo hi > /f",
        ],
    );
    let target = format!("{}/me/x:1", locked.addr);
    ok(&root, &["commit", "c1", &target]);
    let o = run(&root, &["push", &target]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("401"), "{err}");
    assert!(
        ok(&root, &["images"]).contains("me/x"),
        "a failed push lost the image"
    );
}

#[test]
fn interrupted_push_restarts_cleanly_and_bad_commits() {
    if !require_root_fuse("interrupted_push_restarts_cleanly_and_bad_commits") {
        return;
    }
    let World {
        reg,
        proxy,
        state,
        root,
        ..
    } = world(Comp::Native);
    let o = run(&root, &["commit", "no-such-container", "x:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such container"));

    ok(
        &root,
        &[
            "run",
            "--name",
            "c1",
            &format!("{}/t/base:1", reg.addr),
            "sh",
            "-c",
            "busybox head -c 30000000 /dev/urandom > /big",
        ],
    );
    let target = format!("{}/me/interrupted:1", proxy.addr);
    ok(&root, &["commit", "c1", &target]);
    proxy.set(strata_tests::proxy::Fault::Delay(
        std::time::Duration::from_millis(300),
    ));
    let mut child = Command::new(strata_tests::strata::bin())
        .arg("--root")
        .arg(&root)
        .args(["push", &target])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    proxy.set(strata_tests::proxy::Fault::None);
    ok(&root, &["push", &target]);
    let fresh = state.path().join("fresh");
    assert_eq!(
        ok(
            &fresh,
            &["run", "--rm", &target, "sh", "-c", "busybox wc -c < /big"]
        )
        .trim(),
        "30000000"
    );
}
