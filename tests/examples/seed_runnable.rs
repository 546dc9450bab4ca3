//! Pushes the runnable test image (rich layers + busybox with applet links): `seed_runnable REGISTRY REPO:TAG`.
#![allow(clippy::print_stdout)]

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (repo, tag) = args[2].split_once(':').unwrap();
    let p = strata_tests::layers::push_image(
        &args[1],
        repo,
        tag,
        &strata_tests::fixtures::runnable_layers(),
        strata_tests::layers::Comp::Native,
    );
    println!("{}", p.reference);
}
