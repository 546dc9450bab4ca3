//! Issue 17: a `strata mount` serving its own mount, killed by SIGTERM or SIGKILL while a reader
//! waits for a stalled registry. The reader is never left in D state waiting for the read's
//! deadline, and no unserved mount stays: SIGTERM unmounts (aborting the waiting request),
//! after SIGKILL the next mount on the directory takes the dead one back with a line saying so.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::fixtures::rich_layers;
use strata_tests::layers::{Comp, push_image};
use strata_tests::proxy::{Fault, Proxy};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::ok;

/// A read deadline far longer than any wait below: a reader that is let go was let go by the
/// kill, not by the deadline.
const LONG_DEADLINE_SECS: &str = "120";

/// `strata mount IMAGE DIR` in the foreground, served by this process (no layer store).
fn spawn_mount(root: &Path, image: &str, dir: &Path) -> Child {
    Command::new(strata_tests::strata::bin())
        .arg("--root")
        .arg(root)
        .args(["mount", "--prefetch", "none", image])
        .arg(dir)
        .env_remove("STRATA_LOG")
        .env("STRATA_LAYER_STORE", "0")
        .env("STRATA_READ_TIMEOUT_SECS", LONG_DEADLINE_SECS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded by `secs`) until `cond` holds.
fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "waited {secs}s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `dir` is a mount point, from this process's mountinfo (without touching `dir`).
fn mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.as_str()))
}

/// The state letter of process `pid`, `None` once it is gone (or reaped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Sends SIGTERM to `child`.
fn term(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// `cat FILE`, started once the registry stalls; asserted to be waiting.
fn waiting_reader(file: &Path) -> Child {
    let mut reader = Command::new("cat")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(reader.try_wait().unwrap(), None, "the reader waits");
    reader
}

/// The reader ends (with an error) well before the deadline; never left in D state.
fn assert_let_go(reader: &mut Child, what: &str) {
    let pid = reader.id();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = reader.try_wait().unwrap() {
            assert!(!status.success(), "{what}: the reader read a stalled file");
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: the reader is still there (state {:?})",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_mount_server_leaves_no_waiting_reader_and_no_dead_mount() {
    if !require_root_fuse("a_killed_mount_server_leaves_no_waiting_reader_and_no_dead_mount") {
        return;
    }
    let reg = Registry::start();
    push_image(&reg.addr, "t/kill", "1", &rich_layers(false), Comp::Native);
    let proxy = Proxy::start(&reg.addr);
    let reference = format!("{}/t/kill:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &reference]);
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let busybox = mnt.join("bin/busybox");

    // SIGTERM: the server unmounts, aborting the request its reader waits on, and ends.
    let mut server = spawn_mount(&root, &reference, &mnt);
    wait_for("the mount", 60, || busybox.exists());
    proxy.set(Fault::Stall);
    let mut reader = waiting_reader(&busybox);
    term(&server);
    assert_let_go(&mut reader, "SIGTERM");
    wait_for("the server to end", 20, || {
        server.try_wait().unwrap().is_some()
    });
    assert!(!mounted(&mnt), "SIGTERM left {} mounted", mnt.display());

    // SIGKILL: the kernel ends the connection with the server; the reader is let go, and the
    // next mount on the directory takes the dead mount back, saying so.
    proxy.set(Fault::None);
    let mut server = spawn_mount(&root, &reference, &mnt);
    wait_for("the mount", 60, || busybox.exists());
    proxy.set(Fault::Stall);
    let mut reader = waiting_reader(&mnt.join("data/sparse"));
    server.kill().unwrap();
    server.wait().unwrap();
    assert_let_go(&mut reader, "SIGKILL");
    proxy.set(Fault::None);
    let again = spawn_mount(&root, &reference, &mnt);
    // (The dead mount may answer a stat from cached attributes until it is taken back: read.)
    wait_for("the mount again", 60, || std::fs::read(&busybox).is_ok());
    assert_eq!(
        std::fs::read(&busybox).unwrap(),
        strata_tests::layers::noise(300_000, 1)
    );
    term(&again);
    let out = again.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unmounted") && err.contains("server is gone"),
        "the dead mount was not taken back with a line: {err}"
    );
    assert!(!mounted(&mnt), "{} is still mounted", mnt.display());
}

/// Processes whose root directory lies under `dir` (a container's, on its mount).
fn rooted_under(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r.starts_with(dir))
        })
        .collect()
}

/// Mount points under `dir` other than the layer store's, from this process's mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let store = format!("{dir}/layers");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&dir) && *p != store)
        .collect()
}

/// `strata run` serving its container's image itself, killed by SIGKILL while it (setting the
/// container up) and its container wait for a stalled registry: the next command aborts the
/// dead lower's connection, so that no process is left waiting (the deadline is two minutes),
/// and unmounts the dead root.
#[test]
fn a_killed_run_leaves_no_waiting_process_and_no_mount() {
    if !require_root_fuse("a_killed_run_leaves_no_waiting_process_and_no_mount") {
        return;
    }
    let reg = Registry::start();
    let layers = strata_tests::fixtures::runnable_layers();
    push_image(&reg.addr, "t/killrun", "1", &layers, Comp::Native);
    let proxy = Proxy::start(&reg.addr);
    let image = format!("{}/t/killrun:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &image]);
    let root = root.canonicalize().unwrap();
    proxy.set(Fault::Stall);
    let mut run = Command::new(strata_tests::strata::bin())
        .arg("--root")
        .arg(&root)
        .args(["run", "--rm", &image, "cat", "/data/owned"])
        .env_remove("STRATA_LOG")
        .env("STRATA_LAYER_STORE", "0")
        .env("STRATA_READ_TIMEOUT_SECS", LONG_DEADLINE_SECS)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The run itself reads its root (setting the container up) through the lower it serves.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(run.try_wait().unwrap(), None, "the run waits");
    run.kill().unwrap();
    // Its server threads die; a thread of its own waiting on that lower cannot, until the next
    // command (finding its owner dead) aborts the connection.
    let out = strata_tests::strata::run(&root, &["ps", "-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the killed run to end", 20, || {
        run.try_wait().unwrap().is_some()
    });
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let left = rooted_under(&root);
        if left.is_empty() {
            break;
        }
        let states: Vec<_> = left.iter().map(|p| (*p, proc_state(*p))).collect();
        assert!(Instant::now() < end, "container processes left: {states:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mounts_under(&root), Vec::<String>::new());
    proxy.set(Fault::None);
    assert_eq!(
        ok(&root, &["run", "--rm", &image, "cat", "/data/owned"]),
        "mine"
    );
}
