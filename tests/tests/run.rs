//! `strata run` end to end with a real busybox: output, exit codes, env, workdir, user,
//! hostname, network, bind mounts, the private writable layer, signals, --rm, and failed starts
//! that leave nothing behind.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Comp, push_image};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{bin, ok, run};

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Mounts at or below `dir` other than the layer store's (`dir/layers`, which ends on its own
/// once idle).
fn mounts_under(dir: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let store = format!(" {}/layers ", dir.display());
    info.lines()
        .filter(|l| l.contains(&*dir.to_string_lossy()) && !l.contains(&store))
        .count()
}

struct Setup {
    _reg: Registry,
    image: String,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(repo: &str) -> Self {
        let reg = Registry::start();
        let img = push_image(&reg.addr, repo, "1", &runnable_layers(), Comp::Native);
        let state = tempfile::tempdir().unwrap();
        Self {
            _reg: reg,
            image: img.reference,
            state,
        }
    }

    fn root(&self) -> std::path::PathBuf {
        self.state.path().join("root")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        run(&self.root(), &all)
    }
}

#[test]
fn run_echo_exit_codes_env_workdir_user_hostname() {
    if !require_root_fuse("run_echo_exit_codes_env_workdir_user_hostname") {
        return;
    }
    let s = Setup::new("t/run");
    let img = s.image.as_str();
    let o = s.run(&["--rm", img, "sh", "-c", "echo hello docker"]);
    assert_eq!(
        (o.status.code(), text(&o).as_str()),
        (Some(0), "hello docker\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        s.run(&["--rm", img, "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    let o = s.run(&["--rm", img, "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("executable file not found"));
    assert_eq!(
        s.run(&["--rm", img, "/etc/os-release"]).status.code(),
        Some(126)
    );

    let o = s.run(&[
        "--rm",
        "-e",
        "GREETING=hi",
        "-e",
        "PATH=/bin:/usr/bin",
        img,
        "sh",
        "-c",
        "echo $GREETING:$PATH",
    ]);
    assert_eq!(text(&o), "hi:/bin:/usr/bin\n");
    let o = s.run(&["--rm", "-w", "/srv/app", img, "sh", "-c", "pwd"]);
    assert_eq!(text(&o), "/srv/app\n");
    // `me` comes from the image's /etc/passwd; its /etc is 0700, so `id` cannot print names.
    let o = s.run(&["--rm", "-u", "me", img, "id"]);
    assert!(text(&o).starts_with("uid=1000 gid=1000"), "{}", text(&o));
    let o = s.run(&["--rm", "-u", "4242:4343", img, "id"]);
    assert!(text(&o).starts_with("uid=4242 gid=4343"), "{}", text(&o));
    let o = s.run(&[
        "--rm",
        "--hostname",
        "box",
        img,
        "sh",
        "-c",
        "hostname; cat /etc/hostname",
    ]);
    assert_eq!(text(&o), "box\nbox\n");
    let o = s.run(&["--rm", "--network", "none", img, "ls", "/sys/class/net"]);
    assert_eq!(text(&o).split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let o = s.run(&["--rm", "--entrypoint", "/bin/ls", img, "/data/empty"]);
    assert_eq!(text(&o), "/data/empty\n");
    assert_eq!(
        ok(&s.root(), &["ps", "-aq"]),
        "",
        "--rm left containers behind"
    );
}

#[test]
fn writable_layer_is_private_and_kept() {
    if !require_root_fuse("writable_layer_is_private_and_kept") {
        return;
    }
    let s = Setup::new("t/rw");
    let img = s.image.as_str();
    let o = s.run(&[
        "--name",
        "writer",
        img,
        "sh",
        "-c",
        "echo changed >> /etc/os-release; rm /etc/passwd; echo new > /hello; cat /etc/os-release",
    ]);
    assert_eq!(
        text(&o),
        "ID=strata-test\nVERSION_ID=2\nchanged\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A second container sees the image as it was.
    let o = s.run(&[
        "--rm",
        img,
        "sh",
        "-c",
        "cat /etc/os-release; ls /etc/passwd /hello 2>&1 | wc -l",
    ]);
    assert_eq!(text(&o), "ID=strata-test\nVERSION_ID=2\n2\n");
    // The first container's changes are in its own upper layer.
    let ps = ok(&s.root(), &["ps", "-a"]);
    assert!(ps.contains("writer") && ps.contains("Exited (0)"), "{ps}");
    let dir = std::fs::read_dir(s.root().join("containers"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(dir.join("upper/hello")).unwrap(),
        "new\n"
    );
    assert_eq!(
        mounts_under(&s.root()),
        0,
        "a finished container left mounts"
    );
    // Names are unique.
    let o = s.run(&["--name", "writer", img, "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already in use"));
    ok(&s.root(), &["rm", "writer"]);
    assert_eq!(ok(&s.root(), &["ps", "-aq"]), "");
}

#[test]
fn bind_mounts_and_symlinks_never_escape() {
    if !require_root_fuse("bind_mounts_and_symlinks_never_escape") {
        return;
    }
    let s = Setup::new("t/binds");
    let img = s.image.as_str();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from host\n").unwrap();
    let v = format!("{}:/mnt/host", host.path().display());
    let o = s.run(&[
        "--rm",
        "-v",
        &v,
        img,
        "sh",
        "-c",
        "cat /mnt/host/in.txt; echo back > /mnt/host/out.txt",
    ]);
    assert_eq!(text(&o), "from host\n");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).unwrap(),
        "back\n"
    );
    let ro = format!("{}:/mnt/host:ro", host.path().display());
    let o = s.run(&[
        "--rm",
        "-v",
        &ro,
        img,
        "sh",
        "-c",
        "echo x > /mnt/host/no.txt",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!host.path().join("no.txt").exists());
    // The image's etc/dangling -> ../nowhere: the bind lands inside the container, never at the
    // host's /nowhere.
    let target = format!("{}:/etc/dangling", host.path().display());
    let o = s.run(&[
        "--rm",
        "-v",
        &target,
        img,
        "sh",
        "-c",
        "cat /nowhere/in.txt",
    ]);
    assert_eq!(
        text(&o),
        "from host\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !Path::new("/nowhere").exists(),
        "a bind mount escaped the rootfs"
    );
}

#[test]
fn failed_starts_leave_nothing_behind() {
    if !require_root_fuse("failed_starts_leave_nothing_behind") {
        return;
    }
    let s = Setup::new("t/fail");
    let img = s.image.as_str();
    for args in [
        vec!["-u", "nobody-here", img, "true"],
        vec!["-v", "/does/not/exist:/x", img, "true"],
        vec!["127.0.0.1:1/no/such:image", "true"],
    ] {
        let o = s.run(&args);
        assert_eq!(
            o.status.code(),
            Some(125),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            ok(&s.root(), &["ps", "-aq"]),
            "",
            "{args:?} left a container record"
        );
        assert_eq!(mounts_under(&s.root()), 0, "{args:?} left a mount");
    }
}

#[test]
fn signals_reach_the_container() {
    if !require_root_fuse("signals_reach_the_container") {
        return;
    }
    let s = Setup::new("t/sig");
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(s.root())
        .args([
            "run",
            "--rm",
            &s.image,
            "sh",
            "-c",
            "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    std::thread::sleep(Duration::from_millis(200));
    nix_kill(child.id(), 15);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got TERM\n");
    assert_eq!(status.code(), Some(42));
}

fn nix_kill(pid: u32, sig: i32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn detached_logs_stop_kill_diff() {
    if !require_root_fuse("detached_logs_stop_kill_diff") {
        return;
    }
    let s = Setup::new("t/detach");
    let img = s.image.as_str();
    let script = "echo started $PORT $(pwd); echo data > /srv/new; rm /etc/os-release; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done";
    let o = s.run(&[
        "-d",
        "--name",
        "web",
        "-e",
        "PORT=8080",
        "-w",
        "/srv",
        img,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = text(&o).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ps = ok(&s.root(), &["ps"]);
    assert!(ps.contains("web") && ps.contains("Up"), "{ps}");
    // "Up" is recorded when the helper starts; the command's first line follows once PID 1 has
    // set up the container (slower on a loaded machine): wait for it, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ok(&s.root(), &["logs", "web"]).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ok(&s.root(), &["logs", "web"]), "started 8080 /srv\n");
    ok(&s.root(), &["stop", "web"]);
    assert_eq!(ok(&s.root(), &["logs", "web"]), "started 8080 /srv\nbye\n");
    let ps = ok(&s.root(), &["ps", "-a"]);
    assert!(ps.contains("Exited (0)"), "{ps}");
    let diff = ok(&s.root(), &["diff", "web"]);
    assert_eq!(diff, "C /etc\nD /etc/os-release\nA /srv\nA /srv/new\n");
    assert_eq!(
        mounts_under(&s.root()),
        0,
        "a stopped container left mounts"
    );

    // kill: PID 1 without a handler; SIGKILL ends it.
    let o = s.run(&["-d", "--name", "sleeper", img, "sleep", "60"]);
    assert_eq!(o.status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    ok(&s.root(), &["kill", "sleeper"]);
    // The exit is recorded once the container's mounts and cgroups are gone: wait, bounded.
    let killed = |ps: &str| {
        ps.lines()
            .any(|l| l.contains("sleeper") && l.contains("Exited (137)"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ps = ok(&s.root(), &["ps", "-a"]);
    while !killed(&ps) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        ps = ok(&s.root(), &["ps", "-a"]);
    }
    assert!(killed(&ps), "{ps}");
    // rm refuses a running container without -f.
    let o = s.run(&["-d", "--name", "busy", img, "sleep", "60"]);
    assert_eq!(o.status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    let o = run(&s.root(), &["rm", "busy"]);
    assert_ne!(o.status.code(), Some(0));
    ok(&s.root(), &["rm", "-f", "busy"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mounts_under(&s.root()) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mounts_under(&s.root()), 0);
}

#[test]
fn tty_gives_the_container_a_terminal() {
    if !require_root_fuse("tty_gives_the_container_a_terminal") {
        return;
    }
    let s = Setup::new("t/tty");
    ok(&s.root(), &["pull", &s.image]);
    // `script` gives strata a terminal of its own, 40 rows by 100 columns.
    let inner = format!(
        "stty rows 40 cols 100; {} --root {} run --rm -it {} /bin/busybox sh -c 'busybox tty; busybox stty size; exit 7'; echo strata-exit=$?",
        bin().display(),
        s.root().display(),
        s.image
    );
    let o = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).replace(['\r', '\0'], "");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("40 100"), "window size not passed on: {out}");
    assert!(out.contains("strata-exit=7"), "{out}");
    // Without -t the container has no terminal, and no descriptor of strata's leaks in.
    let o = s.run(&["--rm", &s.image, "/bin/busybox", "ls", "/proc/self/fd"]);
    assert_eq!(
        text(&o).split_whitespace().collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
}
