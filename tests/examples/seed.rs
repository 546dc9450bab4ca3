//! Pushes the rich test image into a registry:
//! `seed REGISTRY REPO:TAG [gzip|zstd|native] [big] [busybox]`.
//! `big` adds a 64 MiB data file; `busybox` adds the host's static busybox as `bin/busybox`.
#![allow(clippy::print_stdout)]

use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, Item, dir, file, push_image};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: seed REGISTRY REPO:TAG [gzip|zstd|native] [big] [busybox]";
    let registry = args.get(1).expect(usage);
    let (repo, tag) = args.get(2).and_then(|s| s.split_once(':')).expect(usage);
    let comp = match args.get(3).map(String::as_str) {
        Some("zstd") => Comp::Zstd,
        Some("native") => Comp::Native,
        _ => Comp::Gzip,
    };
    let flag = |f: &str| args.iter().skip(3).any(|a| a == f);
    let mut layers = rich_layers(flag("big"));
    if flag("busybox") {
        let bb =
            std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
        layers.push(vec![
            dir("bin"),
            Item::File {
                path: b"bin/busybox".to_vec(),
                mode: 0o755,
                data: bb,
                uid: 0,
                gid: 0,
                xattrs: vec![],
            },
            file("etc/motd", b"hello from strata\n"),
        ]);
    }
    let p = push_image(registry, repo, tag, &layers, comp);
    println!(
        "{} ({} layers, {} bytes compressed)",
        p.reference,
        p.tars.len(),
        p.blob_bytes
    );
}
