//! Clear errors for bad input (issue 17): the cause and the layer or file, one line, no raw
//! bytes, a non-zero exit, nothing stored.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Blob, Comp, noise, push_blobs, push_image};
use strata_tests::proxy::{Fault, Proxy};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{ok, run};

/// One line of printable text: no raw bytes.
fn assert_clean_line(err: &str) {
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(
        err.trim_end()
            .chars()
            .all(|c| !c.is_control() && c != char::REPLACEMENT_CHARACTER),
        "{err:?}"
    );
}

#[test]
fn import_refuses_binary_and_empty_files_plainly() {
    if !require_root_fuse("import_refuses_binary_and_empty_files_plainly") {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let bin = state.path().join("bin.dat");
    std::fs::write(&bin, &std::fs::read("/bin/busybox").unwrap()[..3000]).unwrap();
    let empty = state.path().join("empty.dat");
    std::fs::write(&empty, b"").unwrap();
    let text = state.path().join("notes.txt");
    std::fs::write(&text, b"hello, not a tar\n").unwrap();
    for (file, want) in [
        (&bin, "not a tar archive"),
        (&empty, "empty"),
        (&text, "not a tar archive"),
    ] {
        let out = run(&root, &["import", file.to_str().unwrap(), "x/imported:1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(want) && err.contains(file.to_str().unwrap()),
            "{err}"
        );
        assert_clean_line(&err);
    }
    assert_eq!(ok(&root, &["images", "-q"]), "");
}

/// A gzip layer whose content is not a tar (its digest is right: the registry is not lying,
/// the image is broken): pull --all and run fail with one line naming the layer, no garbage.
#[test]
fn a_corrupted_layer_is_named_without_tar_garbage() {
    if !require_root_fuse("a_corrupted_layer_is_named_without_tar_garbage") {
        return;
    }
    let reg = Registry::start();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &noise(100_000, 3)).unwrap();
    let blob = gz.finish().unwrap();
    let diff_id = strata_tests::layers::sha(&noise(100_000, 3));
    let layer = strata_tests::layers::sha(&blob);
    let image = push_blobs(
        &reg.addr,
        "t/corrupt",
        "1",
        &[Blob {
            data: blob,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            annotations: serde_json::json!({}),
            diff_id,
        }],
    );
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    for args in [
        vec!["pull", "--all", image.as_str()],
        vec!["run", "--rm", image.as_str(), "true"],
    ] {
        let out = run(&root, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        let last = last_error_line(&err);
        assert!(last.contains(&layer[7..19]), "{args:?}: {err}");
        assert!(last.contains("not a tar archive"), "{args:?}: {err}");
        assert_clean_line(last);
    }
}

/// A layer that cannot be read when a container starts (its registry is down): the error
/// names the layer and the registry, not "creating /proc: Input/output error".
#[test]
fn an_unreadable_layer_at_start_is_named() {
    if !require_root_fuse("an_unreadable_layer_at_start_is_named") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/gone", "1", &runnable_layers(), Comp::Native);
    push_image(&reg.addr, "t/gone", "gz", &runnable_layers(), Comp::Gzip);
    let proxy = Proxy::start(&reg.addr);
    let image = format!("{}/t/gone:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &image]);
    proxy.set(Fault::Refuse);
    let out = run(&root, &["run", "--rm", &image, "cat", "/data/owned"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("creating /proc"), "{err}");
    assert!(err.contains("sha256:") && err.contains("503"), "{err}");

    // A gzip layer not streamed yet: the image's tree cannot be built; one line says why.
    proxy.set(Fault::None);
    let gz = format!("{}/t/gone:gz", proxy.addr);
    ok(&root, &["pull", &gz]);
    proxy.set(Fault::Refuse);
    let out = run(&root, &["run", "--rm", &gz, "cat", "/data/owned"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    let last = last_error_line(&err);
    assert!(!err.contains("creating /proc"), "{err}");
    assert!(
        last.contains("sha256:") && last.contains("503") && last.contains("cannot be used"),
        "{err}"
    );
}

/// The last line of an error report, before docker's "Run 'strata run --help' …" hint that
/// `run` ends with.
fn last_error_line(err: &str) -> &str {
    err.lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("Run '"))
        .unwrap_or("")
}
