//! What the CLI fidelity tests share: a world with `bb:1` (also `app:1`) built on the base
//! image, and assertions on exit codes and stderr.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::Comp;
use strata_tests::strata::{bin, ok, run};
use strata_tests::world::World;

pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The base image plus `bb:1` (also tagged `app:1`) built from it with a label.
pub fn world() -> World {
    let w = World::start(&runnable_layers(), Comp::Native);
    let dir = w.state.path().join("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {}\nLABEL tier=web\nRUN echo built > /built\n", w.base),
    )
    .unwrap();
    ok(
        &w.root,
        &[
            "build",
            "-q",
            "-t",
            "bb:1",
            "-t",
            "app:1",
            dir.to_str().unwrap(),
        ],
    );
    w
}

/// Fails with `code`, and says `needle` on stderr.
pub fn fails(root: &Path, args: &[&str], code: i32, needle: &str) -> String {
    let o = run(root, args);
    let e = err(&o);
    assert_eq!(o.status.code(), Some(code), "strata {args:?}: {e}");
    assert!(
        e.contains(needle),
        "strata {args:?}: {e:?} lacks {needle:?}"
    );
    e
}

/// Runs strata with stdout on a pipe whose reader is already gone.
pub fn to_closed_pipe(root: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}
