//! The lazy mount end to end: a real registry, real FUSE mounts, compared with an independent
//! extraction (GNU tar + kernel overlayfs) for every layer format.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use strata_tests::fixtures::{BIG_BYTES, BIG_PATH, big, rich_layers};
use strata_tests::layers::{Comp, Item, push_image};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};
use strata_tests::walk::{ReferenceTree, assert_same, snapshot};

#[test]
fn mount_matches_independent_extraction_for_every_format() {
    if !require_root_fuse("mount_matches_independent_extraction_for_every_format") {
        return;
    }
    let reg = Registry::start();
    let layers = rich_layers(false);
    let gz = push_image(&reg.addr, "t/rich", "gzip", &layers, Comp::Gzip);
    let zst = push_image(&reg.addr, "t/rich", "zstd", &layers, Comp::Zstd);
    let native = push_image(&reg.addr, "t/rich", "native", &layers, Comp::Native);
    let converted = format!("{}/t/rich:converted", reg.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["convert", &gz.reference, &converted]);

    let reference = ReferenceTree::new(&gz.tars);
    let want = snapshot(&reference.root);
    assert!(want.len() > 30, "reference tree too small: {}", want.len());
    for image in [&gz.reference, &zst.reference, &native.reference, &converted] {
        ok(&root, &["pull", image]);
        let m = Mounted::new(&root, image, &state.path().join("mnt"));
        // Served by the layer store: overlayfs over its per-layer directories, whiteouts in
        // overlayfs' form (so this also compares the kernel's union of the store's layers).
        let fstype = strata_tests::mount_type(&m.dir);
        assert_eq!(fstype.as_deref(), Some("overlay"), "{image}");
        let got = snapshot(&m.dir);
        assert_same(image, &got, &want);
    }
}

#[test]
fn estargz_mount_matches_independent_extraction() {
    if !require_root_fuse("estargz_mount_matches_independent_extraction") {
        return;
    }
    let reg = Registry::start();
    // eStargz TOCs are JSON strings: names that are not UTF-8 cannot be represented.
    let layers: Vec<Vec<Item>> = rich_layers(false)
        .into_iter()
        .map(|l| {
            l.into_iter()
                .filter(
                    |i| !matches!(i, Item::File { path, .. } if std::str::from_utf8(path).is_err()),
                )
                .collect()
        })
        .collect();
    let img = push_image(&reg.addr, "t/esgz", "1", &layers, Comp::Estargz);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &img.reference]);
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&root, &["inspect", &img.reference])).unwrap();
    for l in inspect[0]["Strata"]["Layers"].as_array().unwrap() {
        assert_eq!(l["Format"]["kind"], "estargz", "{l}");
    }
    let reference = ReferenceTree::new(&img.tars);
    let m = Mounted::new(&root, &img.reference, &state.path().join("mnt"));
    assert_same("estargz", &snapshot(&m.dir), &snapshot(&reference.root));
}

#[test]
fn big_file_random_reads() {
    if !require_root_fuse("big_file_random_reads") {
        return;
    }
    let reg = Registry::start();
    let img = push_image(&reg.addr, "t/big", "1", &rich_layers(true), Comp::Native);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let m = Mounted::new(&root, &img.reference, &state.path().join("mnt"));
    let data = big();
    let f = std::fs::File::open(m.dir.join(BIG_PATH)).unwrap();
    let mut x = 12345u64;
    for _ in 0..50 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 16) as usize % BIG_BYTES;
        let len = ((x >> 40) as usize % 300_000).min(BIG_BYTES - off);
        let mut buf = vec![0u8; len];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off as u64).unwrap();
        assert!(
            buf == data[off..off + len],
            "content differs at {off}+{len}"
        );
    }
}
