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
            &["run", "--rm", &reference, "/bin/busybox", "sha256sum", "/data/big"],
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
        let sum = ok(&fresh, &["run", "--rm", &lazy, "/bin/busybox", "sha256sum", "/data/big"]);
        assert!(sum.starts_with(&want), "{tag}: converted read {sum}");
    }
}
