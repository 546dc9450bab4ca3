//! `build`: Dockerfiles built on lazily mounted parents from the real registry, every step
//! committed as a native layer, with the build cache.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use strata_tests::fixtures::{BIG_BYTES, busybox_layer, rich_layers, runnable_layers};
use strata_tests::layers::{Comp, sha, tar_of};
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok, run};
use strata_tests::world::World;

fn world(layers: Vec<Vec<strata_tests::layers::Item>>) -> World {
    World::start(&layers, Comp::Native)
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (p, content) in files {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

fn build(root: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let out = run(root, &all);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    println!("--- strata build {args:?}\n{o}{e}");
    (out.status.success(), o, e)
}

fn config(root: &Path, image: &str) -> serde_json::Value {
    let out = ok(root, &["inspect", image]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    if v.is_array() { v[0].clone() } else { v }
}

#[test]
fn every_instruction_builds_and_onbuild_triggers_run_in_the_child() {
    if !require_root_fuse("every_instruction_builds_and_onbuild_triggers_run_in_the_child") {
        return;
    }
    let w = world(runnable_layers());
    let root = &w.root;
    // The parent with ONBUILD triggers.
    let pctx = w.state.path().join("parent");
    write(
        &pctx,
        &[(
            "Dockerfile",
            &format!(
                "FROM {}\nONBUILD RUN echo from-trigger > /trigger.txt\nONBUILD LABEL triggered=yes\n",
                w.base
            ),
        )],
    );
    let (okay, _, _) = build(root, &["-t", "onbase:1", pctx.to_str().unwrap()]);
    assert!(okay);
    let parent = config(root, "onbase:1");
    assert_eq!(
        parent["Config"]["OnBuild"],
        serde_json::json!([
            "RUN echo from-trigger > /trigger.txt",
            "LABEL triggered=yes"
        ])
    );

    // A context with files, an ignored file, a tar.gz and a Dockerfile using everything.
    let ctx = w.state.path().join("ctx");
    write(
        &ctx,
        &[
            ("files/a", "file a\n"),
            ("files/deep/b", "file b\n"),
            ("one.txt", "1\n"),
            ("two.txt", "2\n"),
            ("ignored.txt", "must not be copied\n"),
            (".dockerignore", "ignored.txt\n*.md\n"),
            ("notes.md", "ignored too\n"),
        ],
    );
    let inner = tar_of(&[
        strata_tests::layers::dir("inner"),
        strata_tests::layers::file("inner/file", b"from the archive\n"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &inner).unwrap();
    std::fs::write(ctx.join("archive.tar.gz"), gz.finish().unwrap()).unwrap();
    let base_cfg = config(root, &w.base);
    let blob_id = base_cfg["Id"].as_str().unwrap().to_string();
    let url = format!("http://{}/v2/t/base/blobs/{blob_id}", w.reg.addr);
    let dockerfile = format!(
        r#"# escape=\
ARG PARENT=onbase:1
FROM --platform=linux/amd64 $PARENT AS final
ARG VERSION=1
ARG UNSET_DEFAULT
LABEL org.example.version=$VERSION "multi word"="a b"
MAINTAINER Strata Tests <t@example.invalid>
ENV APP_HOME=/srv/app
ENV PATH_EXTRA ${{VERSION:-0}}-extra
ENV GREETING="hello world" ALT=${{UNSET_DEFAULT:+set}}
WORKDIR $APP_HOME
WORKDIR sub
COPY --chown=1000:1000 files/ ./files/
COPY *.txt /globbed/
ADD archive.tar.gz /unpacked/
ADD {url} /downloaded/
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt"]
# a comment between instructions
RUN echo "$GREETING v$VERSION" > /run.txt \
    && pwd > /pwd.txt
SHELL ["/bin/sh", "-c"]
EXPOSE 8080 53/udp
VOLUME ["/data"]
USER 1000:1000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD cat /run.txt
ENTRYPOINT ["/bin/cat"]
CMD ["/run.txt"]
"#
    );
    write(&ctx, &[("Dockerfile", &dockerfile)]);
    let (okay, out, _) = build(
        root,
        &[
            "-t",
            "me/all:v1",
            "-t",
            "me/all:latest",
            "--build-arg",
            "VERSION=2",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(okay);
    assert!(
        // docker counts the ARG before FROM as step 1.
        out.contains("Step 1/25 : ARG PARENT=onbase:1\nStep 2/25 : FROM --platform=linux/amd64 $PARENT AS final"),
        "{out}"
    );
    assert!(out.contains("# Executing 2 build triggers"), "{out}");
    assert!(out.contains(" ---> Running in "), "{out}");
    assert!(
        out.contains(" ---> Removed intermediate container "),
        "{out}"
    );
    assert!(
        out.starts_with("Sending build context to Docker daemon  "),
        "{out}"
    );
    assert!(
        out.contains("Successfully tagged me/all:v1")
            && out.contains("Successfully tagged me/all:latest"),
        "{out}"
    );

    let c = config(root, "me/all:v1");
    let cc = &c["Config"];
    assert_eq!(cc["Labels"]["org.example.version"], "2");
    assert_eq!(cc["Labels"]["multi word"], "a b");
    assert_eq!(cc["Labels"]["triggered"], "yes");
    assert_eq!(c["Author"], "Strata Tests <t@example.invalid>");
    let env: Vec<String> = serde_json::from_value(cc["Env"].clone()).unwrap();
    for want in [
        "APP_HOME=/srv/app",
        "PATH_EXTRA=2-extra",
        "GREETING=hello world",
        "ALT=",
    ] {
        assert!(env.contains(&want.to_string()), "{want} not in {env:?}");
    }
    assert!(
        !env.iter().any(|e| e.starts_with("VERSION=")),
        "ARG leaked into ENV: {env:?}"
    );
    assert_eq!(cc["WorkingDir"], "/srv/app/sub");
    assert!(
        cc["ExposedPorts"].get("8080/tcp").is_some() && cc["ExposedPorts"].get("53/udp").is_some()
    );
    assert!(cc["Volumes"].get("/data").is_some());
    assert_eq!(cc["User"], "1000:1000");
    assert_eq!(cc["StopSignal"], "SIGTERM");
    assert_eq!(
        cc["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "cat /run.txt"], "Interval": 5_000_000_000i64, "Retries": 2})
    );
    assert_eq!(cc["Entrypoint"], serde_json::json!(["/bin/cat"]));
    assert_eq!(cc["Cmd"], serde_json::json!(["/run.txt"]));
    assert_eq!(cc["Shell"], serde_json::json!(["/bin/sh", "-c"]));
    assert!(
        cc.get("OnBuild").is_none_or(|v| v.is_null()),
        "triggers inherited: {cc}"
    );

    // History: one entry per step after FROM (and per trigger), layers only for RUN/COPY/ADD.
    let history_len = |img: &str| ok(root, &["history", img]).lines().count() - 1;
    let hist = ok(root, &["history", "me/all:v1"]);
    let parent_len = history_len("onbase:1");
    assert_eq!(parent_len, history_len(&w.base) + 2);
    // The two triggers, then 23 instructions after FROM.
    assert_eq!(history_len("me/all:v1"), parent_len + 2 + 23, "{hist}");
    let newest = hist.lines().nth(1).unwrap();
    assert!(newest.contains("CMD [\"/run.txt\"]"), "{newest}");
    let layers = c["RootFS"]["Layers"].as_array().unwrap().len();
    let base_layers = base_cfg["RootFS"]["Layers"].as_array().unwrap().len();
    // trigger RUN + COPY x2 + ADD x2 + RUN x2.
    assert_eq!(layers, base_layers + 7);

    // The filesystem, seen through a read-only mount of the image.
    let mnt = Mounted::new(root, "me/all:v1", &w.state.path().join("mnt"));
    let d = &mnt.dir;
    let read = |p: &str| std::fs::read_to_string(d.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("trigger.txt"), "from-trigger\n");
    assert_eq!(read("srv/app/sub/files/a"), "file a\n");
    assert_eq!(read("srv/app/sub/files/deep/b"), "file b\n");
    let m = std::fs::metadata(d.join("srv/app/sub/files/deep/b")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    assert_eq!(read("globbed/one.txt"), "1\n");
    assert_eq!(read("globbed/two.txt"), "2\n");
    assert!(!d.join("globbed/ignored.txt").exists());
    assert_eq!(read("unpacked/inner/file"), "from the archive\n");
    let dl = std::fs::read(d.join("downloaded").join(&blob_id)).unwrap();
    assert_eq!(sha(&dl), blob_id, "downloaded bytes");
    assert_eq!(
        std::fs::metadata(d.join("downloaded").join(&blob_id))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(read("exec.txt"), "exec-form\n");
    assert_eq!(read("run.txt"), "hello world v2\n");
    assert_eq!(read("pwd.txt"), "/srv/app/sub\n");
    drop(mnt);

    // The default command runs as the image says.
    assert_eq!(ok(root, &["run", "--rm", "me/all:v1"]), "hello world v2\n");
}

#[test]
fn unchanged_steps_come_from_the_cache_and_a_changed_file_invalidates_from_its_step() {
    if !require_root_fuse(
        "unchanged_steps_come_from_the_cache_and_a_changed_file_invalidates_from_its_step",
    ) {
        return;
    }
    let w = world(runnable_layers());
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    write(
        &ctx,
        &[
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
            (
                "Dockerfile",
                &format!(
                    "FROM {}\nENV X=1\nCOPY a.txt /a.txt\nRUN cat /a.txt > /a2.txt\nCOPY b.txt /b.txt\nRUN cat /a2.txt /b.txt > /ab.txt\nCMD [\"cat\", \"/ab.txt\"]\n",
                    w.base
                ),
            ),
        ],
    );
    let c = ctx.to_str().unwrap();
    let (okay, first, _) = build(root, &["-t", "c:1", c]);
    assert!(okay);
    assert!(!first.contains("Using cache"));
    // Each step: whether it came from the cache.
    let cached = |out: &str| -> Vec<bool> {
        out.split("Step ")
            .skip(2)
            .map(|s| s.contains("---> Using cache"))
            .collect()
    };
    let (okay, second, _) = build(root, &["-t", "c:2", c]);
    assert!(okay);
    assert_eq!(cached(&second), vec![true; 6], "{second}");
    assert_eq!(config(root, "c:1")["Id"], config(root, "c:2")["Id"]);
    std::fs::write(ctx.join("b.txt"), "B changed\n").unwrap();
    let (okay, third, _) = build(root, &["-t", "c:3", c]);
    assert!(okay);
    assert_eq!(
        cached(&third),
        vec![true, true, true, false, false, false],
        "{third}"
    );
    assert_eq!(ok(root, &["run", "--rm", "c:3"]), "a\nB changed\n");
    let (okay, fourth, _) = build(root, &["--no-cache", "-q", "-t", "c:4", c]);
    assert!(okay);
    assert!(
        fourth.trim().starts_with("sha256:") && !fourth.contains("Step"),
        "{fourth}"
    );
    // Intermediate images are kept for the cache but not listed; prune keeps them while
    // their tagged images exist.
    let listed = ok(root, &["images", "-q"]).lines().count();
    let all = ok(root, &["images", "-a", "-q"]).lines().count();
    assert!(all > listed + 5, "images {listed}, images -a {all}");
    ok(root, &["image", "prune", "-f"]);
    let (okay, again, _) = build(root, &["-t", "c:5", c]);
    assert!(okay);
    assert_eq!(cached(&again), vec![true; 6], "{again}");
    ok(root, &["builder", "prune"]);
    let (okay, after, _) = build(root, &["-t", "c:6", c]);
    assert!(okay);
    assert!(!after.contains("Using cache"), "{after}");
}

#[test]
fn multi_stage_copies_a_binary_into_a_small_final_image_that_pushes_and_runs_lazily() {
    if !require_root_fuse(
        "multi_stage_copies_a_binary_into_a_small_final_image_that_pushes_and_runs_lazily",
    ) {
        return;
    }
    let w = world(runnable_layers());
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    write(
        &ctx,
        &[(
            "Dockerfile",
            &format!(
                "FROM {} AS builder\nRUN mkdir -p /out && cp /bin/busybox /out/tool && echo built > /out/stamp\n\nFROM scratch\nCOPY --from=builder /out/tool /bin/busybox\nCOPY --from=0 /out/stamp /stamp\nENTRYPOINT [\"/bin/busybox\"]\nCMD [\"cat\", \"/stamp\"]\n",
                w.base
            ),
        )],
    );
    let target = format!("{}/me/small:1", w.reg.addr);
    let (okay, out, _) = build(root, &["-t", &target, ctx.to_str().unwrap()]);
    assert!(okay, "{out}");
    let c = config(root, &target);
    assert_eq!(c["RootFS"]["Layers"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(ok(root, &["run", "--rm", &target]), "built\n");
    // --target stops at the builder.
    let (okay, _, _) = build(
        root,
        &[
            "--target",
            "builder",
            "-t",
            "only-builder",
            ctx.to_str().unwrap(),
        ],
    );
    assert!(okay);
    assert!(
        config(root, "only-builder")["RootFS"]["Layers"]
            .as_array()
            .unwrap()
            .len()
            > 2
    );
    // Pushed, then run lazily from an empty state root.
    ok(root, &["push", &target]);
    let fresh = w.state.path().join("fresh");
    assert_eq!(ok(&fresh, &["run", "--rm", &target]), "built\n");
}

#[test]
fn building_from_a_large_base_fetches_only_what_the_steps_read() {
    if !require_root_fuse("building_from_a_large_base_fetches_only_what_the_steps_read") {
        return;
    }
    let mut layers = rich_layers(true);
    layers.push(busybox_layer());
    let w = world(layers);
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    write(
        &ctx,
        &[
            ("f.txt", "from the context\n"),
            (
                "Dockerfile",
                &format!(
                    "FROM {}\nCOPY f.txt /f.txt\nRUN cat /etc/os-release /f.txt > /both.txt\n",
                    w.base
                ),
            ),
        ],
    );
    w.proxy.reset();
    let (okay, _, _) = build(root, &["-t", "lazy:1", ctx.to_str().unwrap()]);
    assert!(okay);
    let (requests, bytes) = w.proxy.counts();
    println!("build from a base with a {BIG_BYTES}-byte file: {requests} requests, {bytes} bytes");
    // busybox (~2 MB) is read to run the shell; the 64 MiB file never.
    assert!(
        bytes < 6 << 20,
        "fetched {bytes} bytes: {:?}",
        w.proxy.stats.log.lock().unwrap()
    );
    let m = Mounted::new(root, "lazy:1", &w.state.path().join("mnt"));
    let both = std::fs::read_to_string(m.dir.join("both.txt")).unwrap();
    assert!(
        both.contains("ID=strata-test") && both.ends_with("from the context\n"),
        "{both}"
    );
}

#[test]
fn bad_dockerfiles_fail_with_their_line_and_tag_nothing() {
    if !require_root_fuse("bad_dockerfiles_fail_with_their_line_and_tag_nothing") {
        return;
    }
    let w = world(runnable_layers());
    let root = &w.root;
    let ctx = w.state.path().join("ctx");
    write(&ctx, &[("ok.txt", "ok\n")]);
    std::fs::write(w.state.path().join("outside.txt"), "secret\n").unwrap();
    let b = &w.base;
    let cases: Vec<(String, usize, &str)> = vec![
        (format!("FROM {b}\nFOO bar\n"), 2, "unknown instruction"),
        ("RUN echo no from\n".into(), 1, "FROM"),
        (
            format!("FROM {b}\nENV A=\"unterminated\n"),
            2,
            "unterminated",
        ),
        (format!("FROM {b}\nARG bad-name=1\n"), 2, "ARG"),
        (
            format!("FROM {b}\nCOPY ../outside.txt /x\n"),
            2,
            "outside the build context",
        ),
        (format!("FROM {b}\nCOPY missing.txt /x\n"), 2, "not found"),
        (
            format!("FROM {b}\nCOPY ok.txt /ok\nRUN echo before\nRUN exit 7\nRUN echo never\n"),
            4,
            "non-zero code: 7",
        ),
    ];
    for (text, line, needle) in &cases {
        std::fs::write(ctx.join("Dockerfile"), text).unwrap();
        let (okay, out, err) = build(root, &["-t", "bad:1", ctx.to_str().unwrap()]);
        assert!(!okay, "{text}");
        let last = err.lines().last().unwrap_or("");
        // As docker: a parse error names its line; a failing step is the last "Step" shown.
        let instruction = text.lines().nth(line - 1).unwrap();
        let last_step = out.lines().rfind(|l| l.starts_with("Step "));
        let named = last.contains(&format!("line {line}"))
            || last_step.is_some_and(|s| s.ends_with(&format!(" : {instruction}")));
        assert!(named && last.contains(needle), "{text}: {out}{err}");
        assert!(
            !run(root, &["inspect", "bad:1"]).status.success(),
            "bad:1 was tagged"
        );
    }
    // The steps before the failing RUN were kept in the cache.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {b}\nCOPY ok.txt /ok\nRUN echo before\n"),
    )
    .unwrap();
    let (okay, out, _) = build(root, &["-t", "good:1", ctx.to_str().unwrap()]);
    assert!(okay);
    assert_eq!(out.matches("Using cache").count(), 2, "{out}");
    assert!(
        ok(root, &["ps", "-a", "-q"]).trim().is_empty(),
        "build containers left behind"
    );
}
