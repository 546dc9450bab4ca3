//! Pushes the rich test image into a registry: `seed REGISTRY REPO:TAG [gzip|zstd|native] [big]`.
#![allow(clippy::print_stdout)]

use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, push_image};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let registry = args
        .get(1)
        .expect("usage: seed REGISTRY REPO:TAG [gzip|zstd|native] [big]");
    let (repo, tag) = args
        .get(2)
        .and_then(|s| s.split_once(':'))
        .expect("REPO:TAG");
    let comp = match args.get(3).map(String::as_str) {
        Some("zstd") => Comp::Zstd,
        Some("native") => Comp::Native,
        _ => Comp::Gzip,
    };
    let big = args.get(4).is_some_and(|a| a == "big");
    let p = push_image(registry, repo, tag, &rich_layers(big), comp);
    println!("{} ({} bytes of layers)", p.reference, p.blob_bytes);
}
