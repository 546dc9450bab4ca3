//! docker's verbs around containers, asserted of strata: commit's -c/-p/-m, run's refusals,
//! pull/push status lines, restart, system prune/df, cp and exec. Ported from moby's
//! integration-cli where it says so (docker_cli_commit_test.go, docker_cli_run_test.go,
//! docker_cli_cp_*_test.go).
#![allow(clippy::print_stderr, clippy::print_stdout)]

mod fidelity_common;

use std::path::Path;
use std::process::{Command, Stdio};

use fidelity_common::{err, fails, out, world};
use strata_tests::require_root_fuse;
use strata_tests::strata::{bin, ok, run};

#[test]
fn commit_changes_comment_pause_and_history() {
    if !require_root_fuse("commit_changes_comment_pause_and_history") {
        return;
    }
    // Ported from moby's TestCommitChange, TestCommitWithMessage (docker_cli_commit_test.go).
    let w = world();
    let root = &w.root;
    ok(
        root,
        &["run", "--name", "c1", "bb:1", "sh", "-c", "echo x > /f"],
    );
    let changes = [
        "ENV A=1 B=2",
        "ENV C \"x y\"",
        "ENV D=$A-$C",
        "LABEL k v",
        "LABEL \"a b\"=\"c d\"",
        "ONBUILD RUN echo hi",
        "EXPOSE 8080",
        "WORKDIR /opt",
        "CMD [\"/bin/sh\"]",
        "USER 1000",
        "VOLUME /data",
    ];
    let mut args = vec!["commit", "-m", "my message"];
    for c in &changes {
        args.extend(["-c", c]);
    }
    args.extend(["c1", "committed:1"]);
    ok(root, &args);
    let f = |t: &str| {
        ok(root, &["inspect", "-f", t, "committed:1"])
            .trim()
            .to_string()
    };
    let env: Vec<String> = serde_json::from_str(&f("{{json .Config.Env}}")).unwrap();
    let tail: Vec<&str> = env.iter().rev().take(4).rev().map(String::as_str).collect();
    assert_eq!(tail, ["A=1", "B=2", "C=x y", "D=1-x y"], "{env:?}");
    let labels: serde_json::Value = serde_json::from_str(&f("{{json .Config.Labels}}")).unwrap();
    assert_eq!(
        labels,
        serde_json::json!({"tier": "web", "k": "v", "a b": "c d"})
    );
    assert_eq!(f("{{json .Config.OnBuild}}"), r#"["RUN echo hi"]"#);
    assert_eq!(f("{{json .Config.ExposedPorts}}"), r#"{"8080/tcp":{}}"#);
    assert_eq!(f("{{.Config.WorkingDir}} {{.Config.User}}"), "/opt 1000");
    assert_eq!(f("{{json .Config.Cmd}}"), r#"["/bin/sh"]"#);
    assert_eq!(f("{{json .Config.Volumes}}"), r#"{"/data":{}}"#);
    assert_eq!(f("{{.Comment}}"), "my message");
    let hist = ok(
        root,
        &["history", "--format", "{{.Comment}}", "committed:1"],
    );
    assert_eq!(hist.lines().next(), Some("my message"));
    // What commit does not take is refused, and nothing is stored.
    let before = ok(root, &["images", "-aq"]);
    fails(
        root,
        &["commit", "-c", "RUN rm -rf /", "c1", "x:2"],
        1,
        "Error response from daemon: RUN is not a valid change command",
    );
    fails(
        root,
        &["commit", "-c", "ENV", "c1", "x:2"],
        1,
        "invalid change",
    );
    assert_eq!(ok(root, &["images", "-aq"]), before);

    // A running container is paused by default while committed, then goes on.
    ok(
        root,
        &[
            "run",
            "-d",
            "--name",
            "busy",
            "bb:1",
            "sh",
            "-c",
            "while :; do date > /now; sleep 0.1; done",
        ],
    );
    // `run -d` returns before the loop's first write: wait for it (bounded; exec waits for
    // the container's program itself).
    let t0 = std::time::Instant::now();
    while !run(root, &["exec", "busy", "cat", "/now"]).status.success()
        && t0.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ok(root, &["commit", "busy", "snap:1"]);
    ok(root, &["commit", "--pause=false", "busy", "snap:2"]);
    ok(root, &["commit", "-p", "busy", "snap:3"]);
    assert_eq!(
        ok(root, &["ps", "--format", "{{.Names}} {{.State}}"]),
        "busy running\n"
    );
    let o = run(root, &["run", "--rm", "snap:1", "cat", "/now"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(!out(&o).is_empty());
    ok(root, &["kill", "busy"]);
}

#[test]
fn run_refusals_pull_and_push_messages() {
    if !require_root_fuse("run_refusals_pull_and_push_messages") {
        return;
    }
    let w = world();
    let root = &w.root;
    // Ported from moby's TestRunUserByIDBig, TestRunUserByIDNegative, TestRunUserByIDZero.
    for u in ["2147483648", "-1", "0:2147483648"] {
        fails(
            root,
            &["run", "--rm", "-u", u, "bb:1", "id"],
            125,
            "uids and gids must be in range 0-2147483647",
        );
    }
    assert_eq!(
        ok(root, &["run", "--rm", "-u", "0", "bb:1", "id", "-u"]),
        "0\n"
    );
    assert_eq!(
        ok(
            root,
            &["run", "--rm", "-u", "1000:1000", "bb:1", "id", "-u"]
        ),
        "1000\n"
    );
    // -it with no terminal on stdin: refused at once (docker/cli's CheckTty), nothing created.
    let t = std::time::Instant::now();
    let e = fails(
        root,
        &["run", "-it", "bb:1", "sh"],
        1,
        "the input device is not a TTY",
    );
    assert_eq!(e.trim(), "the input device is not a TTY");
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(ok(root, &["ps", "-aq"]), "");

    // Pull status lines as docker's, then the reference pulled.
    let fresh = w.state.path().join("fresh");
    let first = ok(&fresh, &["pull", &w.base]);
    assert!(
        first.ends_with(&format!(
            "Status: Downloaded newer image for {0}\n{0}\n",
            w.base
        )),
        "{first}"
    );
    let again = ok(&fresh, &["pull", &w.base]);
    assert!(
        again.ends_with(&format!(
            "Status: Image is up to date for {0}\n{0}\n",
            w.base
        )),
        "{again}"
    );
    let repo_digest = ok(
        &fresh,
        &["inspect", "-f", "{{index .RepoDigests 0}}", &w.base],
    );
    let repo_digest = repo_digest.trim();
    let other = w.state.path().join("other");
    let by_digest = ok(&other, &["pull", repo_digest]);
    assert!(
        by_digest
            .lines()
            .next()
            .unwrap()
            .starts_with(&format!("{repo_digest}: Pulling from")),
        "{by_digest}"
    );
    assert!(by_digest.ends_with(&format!(
        "Status: Downloaded newer image for {repo_digest}\n{repo_digest}\n"
    )));
    // run pulls what it lacks, and says so as docker does.
    let third = w.state.path().join("third");
    let o = run(&third, &["run", "--rm", &w.base, "sh", "-c", "exit 0"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains(&format!("Unable to find image '{}' locally", w.base)),
        "{e}"
    );
    assert!(
        e.contains(&format!("Status: Downloaded newer image for {}", w.base)),
        "{e}"
    );

    // Push: the base layers are mounted from their repository on the same registry.
    let target = format!("{}/t/other:1", w.proxy.addr);
    ok(root, &["tag", "bb:1", &target]);
    let pushed = ok(root, &["push", &target]);
    assert!(pushed.contains(": Mounted from t/base"), "{pushed}");
    assert!(pushed.contains(": Pushed"), "{pushed}");
}

/// `kill -9` of a detached container's supervisor and its process: the container reads as
/// exited (255, no finish time known) in `ps -a` and `inspect` alike, never as running with a
/// dead pid.
#[test]
fn a_killed_supervisor_reads_as_exited_everywhere() {
    if !require_root_fuse("a_killed_supervisor_reads_as_exited_everywhere") {
        return;
    }
    let w = world();
    let root = &w.root;
    ok(root, &["run", "-d", "--name", "k1", "bb:1", "sleep", "60"]);
    let id = ok(root, &["inspect", "-f", "{{.Id}}", "k1"]);
    // The supervisor is the detached `strata run --cid=ID` process (its pid is not the
    // container's, which `State.Pid` shows).
    let found = std::process::Command::new("pgrep")
        .args(["-f", &format!("run --cid={}", id.trim())])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&found.stdout).to_string();
    let pid: i32 = pids.lines().next().unwrap_or("").trim().parse().unwrap();
    let inner: i32 = ok(root, &["inspect", "-f", "{{.State.Pid}}", "k1"])
        .trim()
        .parse()
        .unwrap();
    // Supervisor and container both gone (as after an OOM kill of the pair): nobody records
    // the exit.
    for p in [pid, inner] {
        // SAFETY: kill(2) on a pid this test started; no memory is involved.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let state = ok(
        root,
        &[
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.Pid}} {{.State.ExitCode}}",
            "k1",
        ],
    );
    assert_eq!(state, "false 0 255\n");
    let ps = ok(root, &["ps", "-a", "--format", "{{.Names}}|{{.Status}}"]);
    assert!(ps.contains("k1|Exited (255)\n"), "{ps:?}");
    ok(root, &["rm", "-f", "k1"]);
}

#[test]
fn restart_system_prune_and_help() {
    if !require_root_fuse("restart_system_prune_and_help") {
        return;
    }
    let w = world();
    let root = &w.root;
    ok(
        root,
        &[
            "run",
            "-d",
            "--name",
            "r1",
            "bb:1",
            "sh",
            "-c",
            "echo started; sleep 60",
        ],
    );
    let logs_say = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let logs = ok(root, &["logs", "r1"]);
            if logs.matches("started").count() >= n {
                return logs;
            }
            assert!(std::time::Instant::now() < deadline, "logs: {logs:?}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    logs_say(1);
    let started = |root| ok(root, &["inspect", "-f", "{{.State.StartedAt}}", "r1"]);
    let first = started(root);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(ok(root, &["restart", "-t", "1", "r1"]), "r1\n");
    logs_say(2);
    // As docker: a restart is a new start (RFC 3339 times of one zone compare as text).
    let second = started(root);
    assert!(second > first, "StartedAt {first:?} then {second:?}");
    assert_eq!(
        ok(root, &["ps", "--format", "{{.Names}} {{.State}}"]),
        "r1 running\n"
    );
    fails(root, &["restart", "nope"], 1, "No such container: nope");

    // system prune: asks first; a stopped container and a dangling image go, the running
    // one and named images stay.
    ok(
        root,
        &[
            "run",
            "--name",
            "done",
            "bb:1",
            "sh",
            "-c",
            "echo data > /data.txt",
        ],
    );
    ok(root, &["tag", "bb:1", "gone:1"]);
    // An untagged commit is a dangling image.
    ok(root, &["commit", "done"]);
    let mut declined = Command::new(bin())
        .args(["--root", root.to_str().unwrap(), "system", "prune"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    declined.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let o = declined.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(out(&o).contains("Are you sure you want to continue? [y/N]"));
    assert_eq!(ok(root, &["ps", "-aq"]).lines().count(), 2);
    let dangling = ok(root, &["images", "-q", "-f", "dangling=true"]);
    assert_eq!(dangling.lines().count(), 1, "{dangling}");
    // `image prune` asks too, as docker's; a stdin at its end answers no.
    let asked = ok(root, &["image", "prune"]);
    assert!(
        asked.contains("Are you sure you want to continue? [y/N]"),
        "{asked}"
    );
    let still = ok(root, &["images", "-q", "-f", "dangling=true"]);
    assert_eq!(still, dangling, "image prune removed without an answer");
    // system df says what pruning gives back.
    let reclaimable = |kind: &str| -> String {
        let df = ok(root, &["system", "df"]);
        let row = df
            .lines()
            .find(|l| l.starts_with(kind))
            .unwrap()
            .to_string();
        let cells: Vec<&str> = row
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), 5, "{df}");
        cells[4].to_string()
    };
    assert!(reclaimable("Images").ends_with("%)"));
    assert!(
        !reclaimable("Images").starts_with("0B"),
        "the dangling image is reclaimable"
    );
    assert!(
        !reclaimable("Containers").starts_with("0B"),
        "the stopped container is"
    );
    let pruned = ok(root, &["system", "prune", "-f"]);
    assert!(pruned.contains("Deleted Containers:"), "{pruned}");
    assert!(
        pruned.contains(&format!("Deleted: sha256:{}", dangling.trim())),
        "{pruned}"
    );
    assert!(pruned.contains("Total reclaimed space:"), "{pruned}");
    assert_eq!(ok(root, &["ps", "-a", "--format", "{{.Names}}"]), "r1\n");
    assert_eq!(ok(root, &["images", "-q", "-f", "dangling=true"]), "");
    assert!(ok(root, &["images"]).contains("gone"));
    // Nothing to give back of the running container's layer (its own directory, as docker
    // 28 counts a writable snapshot): docker prints the share.
    assert_eq!(reclaimable("Containers"), "0B (0%)");
    ok(root, &["kill", "r1"]);

    // Every command says what it does.
    let help = ok(root, &["--help"]);
    assert!(
        !help.contains("Arguments of") && !help.contains("subcommands"),
        "{help}"
    );
    for cmd in ["build", "builder", "restart", "system"] {
        let h = ok(root, &[cmd, "--help"]);
        let first = h.lines().next().unwrap();
        assert!(
            !first.starts_with("Arguments") && !first.starts_with('`'),
            "{cmd}: {first}"
        );
    }
}

#[test]
fn cp_both_ways_inside_the_container_root() {
    if !require_root_fuse("cp_both_ways_inside_the_container_root") {
        return;
    }
    // docker cp's path rules (docker_cli_cp_*_test.go: TestCpFromCaseA..., TestCpToCaseA...).
    let w = world();
    let root = &w.root;
    let host = w.state.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let h = |p: &str| host.join(p);
    let hs = |p: &str| h(p).to_str().unwrap().to_string();
    ok(
        root,
        &[
            "run",
            "--name",
            "cp1",
            "bb:1",
            "sh",
            "-c",
            "mkdir -p /d/sub /etc; echo in > /d/sub/f; ln -s /etc /d/link",
        ],
    );
    ok(root, &["cp", "cp1:/d/sub/f", &hs("out.txt")]);
    assert_eq!(std::fs::read_to_string(h("out.txt")).unwrap(), "in\n");
    std::fs::create_dir(h("existing")).unwrap();
    ok(root, &["cp", "cp1:/d", &hs("existing")]);
    assert_eq!(
        std::fs::read_to_string(h("existing/d/sub/f")).unwrap(),
        "in\n"
    );
    assert_eq!(
        std::fs::read_link(h("existing/d/link")).unwrap(),
        Path::new("/etc")
    );
    ok(root, &["cp", "cp1:/d/.", &hs("fresh")]);
    assert_eq!(std::fs::read_to_string(h("fresh/sub/f")).unwrap(), "in\n");
    fails(
        root,
        &["cp", "cp1:/nope", &hs("x")],
        1,
        "Could not find the file /nope",
    );

    // Into the container: a symlink in the path resolves inside its root, never the host's.
    let unique = format!("strata-cp-{}.txt", std::process::id());
    std::fs::write(h(&unique), "from host\n").unwrap();
    ok(root, &["cp", &hs(&unique), "cp1:/d/link/"]);
    assert!(
        !Path::new("/etc").join(&unique).exists(),
        "wrote to the host's /etc"
    );
    ok(
        root,
        &["cp", &format!("cp1:/etc/{unique}"), &hs("back.txt")],
    );
    assert_eq!(
        std::fs::read_to_string(h("back.txt")).unwrap(),
        "from host\n"
    );

    // A running container sees what is copied in at once.
    ok(root, &["run", "-d", "--name", "cp2", "bb:1", "sleep", "60"]);
    ok(root, &["cp", &hs(&unique), "cp2:/"]);
    let o = run(root, &["diff", "cp2"]);
    assert!(out(&o).contains(&format!("A /{unique}")), "{}", out(&o));
    ok(root, &["cp", &format!("cp2:/{unique}"), &hs("running.txt")]);
    assert_eq!(
        std::fs::read_to_string(h("running.txt")).unwrap(),
        "from host\n"
    );
    ok(root, &["kill", "cp2"]);
}

#[test]
fn exec_joins_a_running_container() {
    if !require_root_fuse("exec_joins_a_running_container") {
        return;
    }
    let w = world();
    let root = &w.root;
    ok(
        root,
        &[
            "run",
            "-d",
            "--name",
            "ex",
            "-e",
            "FROM_RUN=yes",
            "--hostname",
            "box",
            "bb:1",
            "sleep",
            "60",
        ],
    );
    // Its pid namespace (PID 1 is the container's sleep), its hostname and root, its env.
    let o = ok(
        root,
        &[
            "exec",
            "-e",
            "X=1",
            "-w",
            "/etc",
            "-u",
            "1000:1000",
            "ex",
            "sh",
            "-c",
            "cat /proc/1/cmdline | busybox tr '\\0' ' '; echo; busybox hostname; pwd; id -u; id -g; echo $X $FROM_RUN; cat /built",
        ],
    );
    let lines: Vec<&str> = o.lines().collect();
    assert!(lines[0].starts_with("sleep 60"), "{o}");
    assert_eq!(
        &lines[1..],
        ["box", "/etc", "1000", "1000", "1 yes", "built"],
        "{o}"
    );
    // Exit codes as docker exec's.
    assert_eq!(
        run(root, &["exec", "ex", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    fails(
        root,
        &["exec", "ex", "no-such-cmd"],
        127,
        "executable file not found",
    );
    fails(
        root,
        &["exec", "-w", "/no/dir", "ex", "pwd"],
        126,
        "/no/dir",
    );
    fails(
        root,
        &["exec", "-it", "ex", "sh"],
        1,
        "the input device is not a TTY",
    );
    fails(
        root,
        &["exec", "nope", "true"],
        1,
        "No such container: nope",
    );
    // A terminal from the container's devpts with -t.
    let inner = format!(
        "{} --root {} exec -it ex sh -c 'tty; exit 3'; echo strata-exit=$?",
        bin().display(),
        root.display()
    );
    let o = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).replace(['\r', '\0'], "");
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("strata-exit=3"), "{text}");
    ok(root, &["kill", "ex"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok(root, &["ps", "-q"]).is_empty() {
        assert!(std::time::Instant::now() < deadline, "ex did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    fails(root, &["exec", "ex", "true"], 1, "is not running");
}
