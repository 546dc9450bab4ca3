//! Dockerfile semantics as docker's classic builder has them (issue 16): `.dockerignore`
//! exceptions, `USER name:group` groups, `ENTRYPOINT []`/`CMD []`, the predefined proxy ARGs,
//! `COPY --from` of the current or a later stage, a trailing `\` at end of file,
//! `COPY --chown=UID`, parse errors naming the line, and `build -`. Every expectation was
//! checked against Docker Engine v2.0.0-beta.24 (moby's v2 module, DOCKER_BUILDKIT=0) on
//! busybox with the same /etc/passwd and /etc/group as the golden base image.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use strata_tests::golden::push_bases;
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{bin, ok, run};

struct Env {
    _reg: Registry,
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    bb: String,
}

fn env() -> Env {
    let reg = Registry::start();
    push_bases(&reg.addr);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bb = format!("{}/bb:1", reg.addr);
    Env {
        _reg: reg,
        dir,
        root,
        bb,
    }
}

impl Env {
    /// Writes `files` into a fresh context `name` and returns its path.
    fn ctx(&self, name: &str, files: &[(&str, &str)]) -> String {
        let ctx = self.dir.path().join(name);
        for (p, content) in files {
            let p = ctx.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        ctx.to_str().unwrap().to_string()
    }

    /// `strata build ARGS`: (exit code, stdout, stderr).
    fn build(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        let out = run(&self.root, &all);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        println!("--- strata build {args:?}\n{o}{e}");
        (out.status.code().unwrap_or(-1), o, e)
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(&self.root, args)
    }
}

#[test]
fn dockerignore_exceptions_reinclude_files_under_an_excluded_dir() {
    if !require_root_fuse("dockerignore_exceptions_reinclude_files_under_an_excluded_dir") {
        return;
    }
    let e = env();
    let bb = &e.bb;
    let ctx = e.ctx(
        "ign",
        &[
            (
                "Dockerfile",
                &format!("FROM {bb}\nCOPY . /app\nCMD [\"find\", \"/app\", \"-type\", \"f\"]\n"),
            ),
            (
                ".dockerignore",
                "*.log\nsecret\n!secret/keep.txt\nDockerfile\n",
            ),
            ("a.txt", "a"),
            ("b.log", "b"),
            ("secret/keep.txt", "keep"),
            ("secret/drop.txt", "drop"),
            ("secret/deep/drop.txt", "drop"),
        ],
    );
    let (code, _, _) = e.build(&["-q", "-t", "ign:1", &ctx]);
    assert_eq!(code, 0);
    let out = e.ok(&["run", "--rm", "ign:1"]);
    let mut files: Vec<&str> = out.lines().collect();
    files.sort();
    // docker: /app/.dockerignore, /app/a.txt, /app/secret/keep.txt.
    assert_eq!(
        files,
        ["/app/.dockerignore", "/app/a.txt", "/app/secret/keep.txt"]
    );
}

#[test]
fn user_with_a_group_drops_supplementary_groups_and_the_primary_gid_is_listed() {
    if !require_root_fuse(
        "user_with_a_group_drops_supplementary_groups_and_the_primary_gid_is_listed",
    ) {
        return;
    }
    let e = env();
    let bb = &e.bb;
    // bb:1's /etc/group: app:x:1000:, staff:x:50:app.
    let cases = [
        (
            "app",
            "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)",
        ),
        (
            "1000",
            "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)",
        ),
        ("app:staff", "uid=1000(app) gid=50(staff) groups=50(staff)"),
        ("1000:1000", "uid=1000(app) gid=1000(app) groups=1000(app)"),
    ];
    for (i, (user, want)) in cases.iter().enumerate() {
        let ctx = e.ctx(
            &format!("user{i}"),
            &[(
                "Dockerfile",
                &format!("FROM {bb}\nUSER {user}\nRUN id > /tmp/id\nCMD [\"id\"]\n"),
            )],
        );
        let (code, _, _) = e.build(&["-q", "-t", "u:1", &ctx]);
        assert_eq!(code, 0);
        assert_eq!(e.ok(&["run", "--rm", "u:1"]).trim(), *want, "USER {user}");
        // RUN steps run with the same groups.
        let built = e.ok(&["run", "--rm", "u:1", "cat", "/tmp/id"]);
        assert_eq!(built.trim(), *want, "RUN under USER {user}");
        // And `run -u` the same.
        let ran = e.ok(&["run", "--rm", "-u", user, bb, "id"]);
        assert_eq!(ran.trim(), *want, "run -u {user}");
    }
    // root lists its own gid: groups=0(root).
    let root = e.ok(&["run", "--rm", bb, "id"]);
    assert_eq!(root.trim(), "uid=0(root) gid=0(root) groups=0(root)");
}

#[test]
fn empty_entrypoint_and_cmd_clear_the_values() {
    if !require_root_fuse("empty_entrypoint_and_cmd_clear_the_values") {
        return;
    }
    let e = env();
    let ctx = e.ctx(
        "clear",
        &[(
            "Dockerfile",
            &format!(
                "FROM {}\nENTRYPOINT [\"sh\"]\nCMD [\"x\"]\nENTRYPOINT []\nCMD []\n",
                e.bb
            ),
        )],
    );
    let (code, _, _) = e.build(&["-q", "-t", "clear:1", &ctx]);
    assert_eq!(code, 0);
    // docker: null|null.
    let got = e.ok(&[
        "inspect",
        "-f",
        "{{json .Config.Entrypoint}}|{{json .Config.Cmd}}",
        "clear:1",
    ]);
    assert_eq!(got.trim(), "null|null");
}

#[test]
fn proxy_args_are_predefined_and_left_out_of_history() {
    if !require_root_fuse("proxy_args_are_predefined_and_left_out_of_history") {
        return;
    }
    let e = env();
    let ctx = e.ctx(
        "proxy",
        &[(
            "Dockerfile",
            &format!(
                "FROM {}\nRUN echo \"h=$HTTP_PROXY l=$http_proxy n=$NO_PROXY a=$ALL_PROXY f=$ftp_proxy\" > /p\nCMD [\"cat\", \"/p\"]\n",
                e.bb
            ),
        )],
    );
    let (code, out, err) = e.build(&[
        "--build-arg",
        "HTTP_PROXY=hp",
        "--build-arg",
        "http_proxy=lp",
        "--build-arg",
        "NO_PROXY=np",
        "--build-arg",
        "ALL_PROXY=ap",
        "--build-arg",
        "ftp_proxy=fp",
        "-t",
        "proxy:1",
        &ctx,
    ]);
    assert_eq!(code, 0);
    // Not reported as unconsumed, as docker does not.
    assert!(
        !out.contains("not consumed") && !err.contains("not consumed"),
        "{out}{err}"
    );
    assert_eq!(
        e.ok(&["run", "--rm", "proxy:1"]).trim(),
        "h=hp l=lp n=np a=ap f=fp"
    );
    // docker keeps them out of the image: not in Env, not in the RUN's history line.
    let env = e.ok(&["inspect", "-f", "{{json .Config.Env}}", "proxy:1"]);
    assert!(!env.contains("PROXY") && !env.contains("proxy="), "{env}");
    let history = e.ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "proxy:1",
    ]);
    assert!(
        !history.contains("hp") && !history.contains("HTTP_PROXY="),
        "{history}"
    );
}

#[test]
fn copy_from_the_current_or_a_later_stage_is_an_error() {
    if !require_root_fuse("copy_from_the_current_or_a_later_stage_is_an_error") {
        return;
    }
    let e = env();
    let bb = &e.bb;
    // docker's classic builder takes such a name for an image and fails to pull it, exit 1.
    for (name, text) in [
        (
            "self",
            format!("FROM {bb} AS a\nCOPY --from=a /bin/sh /x\n"),
        ),
        (
            "later",
            format!("FROM {bb} AS a\nCOPY --from=b /bin/sh /x\nFROM {bb} AS b\n"),
        ),
    ] {
        let ctx = e.ctx(name, &[("Dockerfile", &text)]);
        let (code, _, err) = e.build(&["-t", "from:1", &ctx]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains("invalid from flag value"), "{name}: {err}");
        assert!(!run(&e.root, &["inspect", "from:1"]).status.success());
    }
}

#[test]
fn trailing_backslash_chown_uid_and_parse_errors_as_docker() {
    if !require_root_fuse("trailing_backslash_chown_uid_and_parse_errors_as_docker") {
        return;
    }
    let e = env();
    let bb = &e.bb;
    // A `\` ending the file is dropped: docker builds it.
    let ctx = e.ctx(
        "bs",
        &[("Dockerfile", &format!("FROM {bb}\nRUN echo hi > /hi \\"))],
    );
    let (code, _, _) = e.build(&["-q", "-t", "bs:1", &ctx]);
    assert_eq!(code, 0);
    assert_eq!(e.ok(&["run", "--rm", "bs:1", "cat", "/hi"]).trim(), "hi");

    // --chown=1001 without a group: 1001:1001.
    let ctx = e.ctx(
        "chown",
        &[
            ("f", "x\n"),
            (
                "Dockerfile",
                &format!("FROM {bb}\nCOPY --chown=1001 f /f\n"),
            ),
        ],
    );
    let (code, _, _) = e.build(&["-q", "-t", "chown:1", &ctx]);
    assert_eq!(code, 0);
    let owner = e.ok(&["run", "--rm", "chown:1", "stat", "-c", "%u:%g", "/f"]);
    assert_eq!(owner.trim(), "1001:1001");

    // docker: "dockerfile parse error on line 3: ENV requires at least one argument", exit 1.
    let ctx = e.ctx(
        "parse",
        &[("Dockerfile", &format!("FROM {bb}\nRUN true\nENV\n"))],
    );
    let (code, _, err) = e.build(&["-t", "parse:1", &ctx]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("dockerfile parse error on line 3: ENV requires at least one argument"),
        "{err}"
    );
}

#[test]
fn build_dash_reads_the_dockerfile_from_stdin() {
    if !require_root_fuse("build_dash_reads_the_dockerfile_from_stdin") {
        return;
    }
    let e = env();
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(&e.root)
        .args(["build", "-q", "-t", "stdin:1", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = format!("FROM {}\nCMD [\"echo\", \"from stdin\"]\n", e.bb);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // docker -q prints the image ID.
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));
    assert_eq!(e.ok(&["run", "--rm", "stdin:1"]).trim(), "from stdin");
}
