//! A container's root and its inspect JSON as docker 28 has them (recorded: tests/golden
//! 03-inspect/container-keys, 03-inspect/c-size, 10-import-export/export-o): docker's init
//! entries (`/.dockerenv`, `/etc/mtab` → `/proc/mounts`, `/dev/console`, ...) are in the
//! container's root and its `export`, but not in what `commit` makes of it nor in `SizeRw`;
//! `export` names directories `dir/`; inspect has docker's keys with strata's true values.
#![allow(clippy::print_stderr, clippy::print_stdout)]

mod fidelity_common;

use fidelity_common::{out, world};
use strata_tests::require_root_fuse;
use strata_tests::strata::{ok, run};

#[test]
fn init_entries_export_commit_and_inspect_as_docker() {
    if !require_root_fuse("init_entries_export_commit_and_inspect_as_docker") {
        return;
    }
    let w = world();
    let root = &w.root;
    // Inside: docker's init entries, the image's /etc kept as it was.
    let o = run(
        root,
        &[
            "run",
            "--name",
            "c1",
            "bb:1",
            "sh",
            "-c",
            "test -f /.dockerenv && readlink /etc/mtab && echo x > /x",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", fidelity_common::err(&o));
    assert_eq!(out(&o), "/proc/mounts\n");

    // export: the init entries and directories named `dir/`, as docker's tar.
    let tar = w.state.path().join("c1.tar");
    ok(root, &["export", "-o", tar.to_str().unwrap(), "c1"]);
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&tar).unwrap())
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect();
    for want in [
        ".dockerenv",
        "dev/",
        "dev/console",
        "dev/pts/",
        "dev/shm/",
        "etc/",
        "etc/mtab",
        "x",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n == "etc"), "{names:?}");

    // SizeRw: the container's own change (the root of its layer and /x, a block each), not
    // the init entries.
    let size: u64 = ok(root, &["inspect", "-s", "-f", "{{.SizeRw}}", "c1"])
        .trim()
        .parse()
        .unwrap();
    assert!(size > 0 && size <= 3 * 4096, "SizeRw {size}");

    // commit keeps /x and leaves the init entries to the next container.
    ok(root, &["commit", "c1", "committed:1"]);
    let saved = w.state.path().join("committed.tar");
    ok(
        root,
        &["save", "-o", saved.to_str().unwrap(), "committed:1"],
    );
    let last_layer = top_layer_names(&saved);
    assert!(last_layer.iter().any(|n| n == "x"), "{last_layer:?}");
    for absent in [".dockerenv", "etc/mtab", "dev/console", "dev/pts/", "dev/"] {
        assert!(
            !last_layer.iter().any(|n| n == absent),
            "{absent} in the committed layer {last_layer:?}"
        );
    }

    // inspect: docker's sections, with the container's true settings.
    let j: serde_json::Value = serde_json::from_str(&ok(root, &["inspect", "c1"])).unwrap();
    let c = &j[0];
    assert_eq!(c["HostConfig"]["NetworkMode"], "host");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert_eq!(c["Config"]["AttachStdout"], true);
    assert_eq!(c["Config"]["OpenStdin"], false);
    assert_eq!(c["Mounts"], serde_json::json!([]));
    assert!(c["NetworkSettings"]["Networks"]["host"].is_object(), "{c}");
    let hosts = c["HostsPath"].as_str().unwrap();
    assert!(std::path::Path::new(hosts).is_file(), "HostsPath {hosts}");
    assert!(
        c["ImageManifestDescriptor"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(c.get("Strata").is_none(), "{c}");
}

/// The entry names of the last layer of the single image in a `save` archive.
fn top_layer_names(archive: &std::path::Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(std::fs::File::open(archive).unwrap())
        .unpack(dir.path())
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let layer = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(dir.path().join(layer)).unwrap();
    let plain = match bytes.get(..4) {
        Some([0x28, 0xb5, 0x2f, 0xfd]) => zstd::decode_all(&bytes[..]).unwrap(),
        Some([0x1f, 0x8b, ..]) => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut v)
                .unwrap();
            v
        }
        _ => bytes,
    };
    tar::Archive::new(&plain[..])
        .entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}
