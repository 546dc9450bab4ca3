//! `commit` and `tag`: a container's changes become one native layer on top of its image,
//! with OCI whiteouts and opaque directories, without fetching the base layers.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::process::Command;

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Comp, push_image};
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{ok, run};

#[test]
fn commit_makes_a_lazy_image_of_the_changes() {
    if !require_root_fuse("commit_makes_a_lazy_image_of_the_changes") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/base", "1", &runnable_layers(), Comp::Native);
    let proxy = Proxy::start(&reg.addr);
    let base = format!("{}/t/base:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
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
    assert_eq!(img["RootFS"]["diff_ids"].as_array().unwrap().len(), 5);
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
