//! What docker's own CLI tests assert, asserted of strata: exit codes and error lines, usage
//! errors, closed pipes, `--format` templates, `images` filters, tag names and `rmi` conflicts.
//! Ported from moby's integration-cli (docker_cli_images_test.go: TestImagesFilterLabelMatch,
//! TestImagesFilterSinceAndBefore, TestImagesFilterSpaceTrimCase, TestImagesEnsureDanglingImage*;
//! docker_cli_tag_test.go: TestTagInvalidPrefixedRepo, TestTagInvalidUnprefixedRepo;
//! docker_cli_rmi_test.go: TestRmiImgIDForce, TestRmiContainerImageNotFound; docker_cli_inspect
//! _test.go: TestInspectImage; docker_cli_history_test.go: TestHistoryHumanOptionFalse) and from
//! docker/cli's exit codes (125 for flag errors and `run`, 1 otherwise).
#![allow(clippy::print_stderr, clippy::print_stdout)]

mod fidelity_common;

use std::os::unix::process::ExitStatusExt;

use fidelity_common::{err, fails, out, to_closed_pipe, world};
use strata_tests::require_root_fuse;
use strata_tests::strata::{ok, run};

#[test]
fn exit_codes_usage_errors_and_closed_pipes() {
    if !require_root_fuse("exit_codes_usage_errors_and_closed_pipes") {
        return;
    }
    let w = world();
    let root = &w.root;
    // Errors of image commands exit 1, as docker's CLI.
    fails(root, &["rmi", "nope:1"], 1, "No such image: nope:1");
    fails(root, &["tag", "nope:1", "x:1"], 1, "No such image: nope:1");
    fails(root, &["inspect", "nope:1"], 1, "No such object: nope:1");
    fails(root, &["history", "nope:1"], 1, "No such image: nope:1");
    fails(root, &["pull", "UPPER/Case:1"], 1, "invalid reference");
    fails(root, &["build", "/no/such/context"], 1, "/no/such/context");
    fails(
        root,
        &["images", "--format", "{{.Repository"],
        1,
        "template",
    );
    // A bad flag: docker/cli's FlagErrorFunc exits 125, with cobra's words, the usage line
    // and a hint (recorded: tests/golden 06-run/exit-125-flag).
    let e = fails(root, &["images", "--bogus"], 125, "--bogus");
    assert_eq!(
        e,
        "unknown flag: --bogus\n\nUsage:  strata images [OPTIONS] [REPOSITORY[:TAG]]\n\nRun 'strata images --help' for more information\n"
    );
    let e = fails(
        root,
        &["run", "--bogus", "bb:1"],
        125,
        "unknown flag: --bogus",
    );
    assert!(
        e.contains("Run 'strata run --help' for more information"),
        "{e}"
    );
    fails(
        root,
        &["ps", "-Z"],
        125,
        "unknown shorthand flag: 'Z' in -Z",
    );
    let e = fails(root, &["image", "prune", "--bogus"], 125, "--bogus");
    assert!(e.contains("See 'strata image prune --help'."), "{e}");
    // A wrong count of arguments exits 1 with docker/cli's three parts (Docker Engine
    // v2.0.0-beta.24's client: the count, the usage line, a hint).
    let tag_usage = "strata: 'strata tag' requires 2 arguments\n\nUsage:  strata tag SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]\n\nRun 'strata tag --help' for more information\n";
    assert_eq!(fails(root, &["tag", "bb:1"], 1, ""), tag_usage);
    assert_eq!(fails(root, &["tag", "a", "b", "c"], 1, ""), tag_usage);
    let e = fails(
        root,
        &["rmi"],
        1,
        "'strata rmi' requires at least 1 argument",
    );
    assert!(
        e.ends_with("See 'strata rmi --help' for more information\n"),
        "{e}"
    );
    // run keeps 125 for its own errors, 127/126 for the command's.
    fails(root, &["run", "--rm", "nope:1", "true"], 125, "");
    assert_eq!(
        run(root, &["run", "--rm", "bb:1", "/no/such/cmd"])
            .status
            .code(),
        Some(127)
    );
    // --help is not an error.
    let o = run(root, &["images", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(out(&o).contains("--filter"));

    // Output to a reader that went away ends quietly, as docker's does (by SIGPIPE).
    for args in [
        vec!["inspect", "bb:1"],
        vec!["history", "bb:1"],
        vec!["images"],
        vec!["images", "--format", "{{json .}}"],
        vec!["ps", "-a"],
    ] {
        let o = to_closed_pipe(root, &args);
        assert_ne!(o.status.code(), Some(101), "{args:?}: {}", err(&o));
        assert_eq!(o.status.signal(), Some(13), "{args:?}: {:?}", o.status);
        assert_eq!(err(&o), "", "{args:?}");
    }
}

#[test]
fn format_templates_and_image_filters() {
    if !require_root_fuse("format_templates_and_image_filters") {
        return;
    }
    let w = world();
    let root = &w.root;
    let base_repo = w.base.rsplit_once(':').unwrap().0.to_string();

    let names = ok(root, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, vec![w.base.as_str(), "app:1", "bb:1"]);
    for line in ok(root, &["images", "--format", "{{json .}}"]).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["ID"].as_str().unwrap().len() == 12, "{line}");
    }
    let table = ok(
        root,
        &["images", "--format", "table {{.Repository}}\\t{{.Tag}}"],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("REPOSITORY") && lines[0].ends_with("TAG"));
    assert!(lines.iter().any(|l| l.split_whitespace().eq(["bb", "1"])));
    let id = ok(root, &["inspect", "--format", "{{.Id}}", "bb:1"]);
    let full: serde_json::Value = serde_json::from_str(&ok(root, &["inspect", "bb:1"])).unwrap();
    assert_eq!(id.trim(), full[0]["Id"].as_str().unwrap());
    assert_eq!(
        ok(
            root,
            &["inspect", "-f", "{{index .Config.Labels \"tier\"}}", "bb:1"]
        ),
        "web\n"
    );
    assert_eq!(
        ok(root, &["inspect", "-f", "{{json .RepoTags}}", "bb:1"]).trim(),
        r#"["app:1","bb:1"]"#
    );
    fails(root, &["inspect", "-f", "{{.Bogus}}", "bb:1"], 1, "Bogus");

    // history: --format, -q, --no-trunc, --human=false.
    let hist = ok(
        root,
        &["history", "--format", "{{.ID}}|{{.CreatedBy}}", "bb:1"],
    );
    let first = hist.lines().next().unwrap();
    assert!(
        first.starts_with(&id.trim()["sha256:".len()..][..12]),
        "{hist}"
    );
    assert!(hist.contains("echo built"), "{hist}");
    let q = ok(root, &["history", "-q", "bb:1"]);
    assert_eq!(q.lines().count(), hist.lines().count());
    let no_trunc = ok(root, &["history", "--no-trunc", "-q", "bb:1"]);
    assert_eq!(no_trunc.lines().next().unwrap(), id.trim());
    let raw = ok(
        root,
        &[
            "history",
            "--human=false",
            "--format",
            "{{.Size}} {{.CreatedAt}}",
            "bb:1",
        ],
    );
    for l in raw.lines() {
        let (size, at) = l.split_once(' ').unwrap();
        assert!(size.bytes().all(|b| b.is_ascii_digit()), "{raw}");
        // The fixture's base layers carry no creation time.
        assert!(
            at == "N/A" || at.ends_with('Z') && at.contains('T'),
            "{raw}"
        );
    }
    assert!(raw.lines().next().unwrap().ends_with('Z'), "{raw}");
    // ps --format.
    ok(root, &["run", "--name", "c1", "bb:1", "sh", "-c", "exit 0"]);
    assert_eq!(
        ok(
            root,
            &["ps", "-a", "--format", "{{.Names}} {{.State}} {{.Image}}"]
        ),
        "c1 exited bb:1\n"
    );

    // Filters, validated as docker's daemon validates them.
    fails(
        root,
        &["images", "-f", "dangling=bogus"],
        1,
        "Error response from daemon: invalid filter 'dangling=[bogus]'",
    );
    fails(
        root,
        &["images", "-f", "color=red"],
        1,
        "invalid filter 'color'",
    );
    // A flag error on docker's CLI (recorded: tests/golden 02-images/f-no-equals): exit 125.
    fails(
        root,
        &["images", "-f", "dangling"],
        125,
        "bad format of filter",
    );
    let q = |args: &[&str]| {
        let mut all = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
        all.extend_from_slice(args);
        let mut v: Vec<String> = ok(root, &all).lines().map(String::from).collect();
        v.sort();
        v
    };
    let tagged = q(&["-f", "dangling=false"]);
    assert_eq!(tagged.len(), 3);
    for f in [
        "Dangling=false",
        " dangling=false",
        "dangling=false ",
        "dangling = false",
    ] {
        assert_eq!(q(&["-f", f]), tagged, "{f:?}");
    }
    assert!(q(&["-f", "dangling=true"]).is_empty());
    assert_eq!(q(&["-f", "label=tier"]), vec!["app:1", "bb:1"]);
    assert_eq!(q(&["-f", "label=tier=web"]), vec!["app:1", "bb:1"]);
    assert!(q(&["-f", "label=tier=db"]).is_empty());
    assert_eq!(q(&["-f", "before=bb:1"]), vec![w.base.clone()]);
    assert_eq!(
        q(&["-f", &format!("since={}", w.base)]),
        vec!["app:1", "bb:1"]
    );
    fails(
        root,
        &["images", "-f", "since=nope:9"],
        1,
        "No such image: nope:9",
    );
    // Reference patterns: path.Match on the familiar name, with and without the tag.
    assert_eq!(q(&["app*"]), vec!["app:1"]);
    assert_eq!(q(&["-f", "reference=bb"]), vec!["bb:1"]);
    assert_eq!(q(&["bb:1"]), vec!["bb:1"]);
    assert!(q(&["bb:2"]).is_empty());
    assert!(
        q(&["base*"]).is_empty(),
        "a * stays within one path component"
    );
    assert_eq!(q(&["*/t/base"]), vec![w.base.clone()]);
    assert_eq!(q(&[&base_repo]), vec![w.base.clone()]);
    // An image a container keeps after its last name went is dangling.
    ok(root, &["rmi", "app:1"]);
    let o = ok(root, &["rmi", "-f", "bb:1"]);
    assert_eq!(o, "Untagged: bb:1\n");
    assert_eq!(q(&["-f", "dangling=true"]), vec!["<none>:<none>"]);
    assert_eq!(q(&["-f", "dangling=false"]), vec![w.base.clone()]);
}

#[test]
fn tag_names_and_rmi_conflicts() {
    if !require_root_fuse("tag_names_and_rmi_conflicts") {
        return;
    }
    let w = world();
    let root = &w.root;
    // Names docker refuses.
    fails(root, &["tag", "bb:1", "-foo"], 125, "");
    fails(
        root,
        &["tag", "bb:1", "--", "-foo"],
        1,
        "invalid reference format",
    );
    fails(root, &["tag", "bb:1", "Foo:1"], 1, "must be lowercase");
    let digest = format!("x/y@sha256:{}", "ab".repeat(32));
    fails(
        root,
        &["tag", "bb:1", &digest],
        1,
        "refusing to create a tag with a digest reference",
    );
    let images = ok(root, &["images"]);
    assert!(
        !images.contains("x/y") && !images.contains("-foo"),
        "{images}"
    );
    ok(root, &["tag", "bb:1", "x/y:2"]);
    ok(root, &["rmi", "x/y:2"]);

    // rmi -f by id of an image a running container uses: refused, nothing untagged.
    let id = ok(root, &["inspect", "-f", "{{.Id}}", "bb:1"])
        .trim()
        .to_string();
    let short = &id["sha256:".len()..][..12];
    ok(
        root,
        &["run", "-d", "--name", "busy", "bb:1", "sleep", "60"],
    );
    let e = fails(
        root,
        &["rmi", "-f", short],
        1,
        "(cannot be forced) - image is being used by running container",
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    let images = ok(root, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        images.contains("bb:1") && images.contains("app:1"),
        "{images}"
    );
    // Not forced, an exited container's image is refused too; forced, it goes.
    ok(root, &["kill", "busy"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok(root, &["ps", "-q"]).is_empty() {
        assert!(std::time::Instant::now() < deadline, "busy did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fails(
        root,
        &["rmi", short],
        1,
        "(must be forced) - image is referenced in multiple repositories",
    );
    ok(root, &["rmi", "app:1"]);
    fails(
        root,
        &["rmi", short],
        1,
        "(must be forced) - image is being used by stopped container",
    );
    let o = ok(root, &["rmi", "-f", short]);
    assert!(o.contains("Untagged: bb:1"), "{o}");
    assert!(o.contains(&format!("Deleted: {id}")), "{o}");
    assert!(!ok(root, &["images", "-q"]).contains(short));
}
