//! Issue 17: a `strata mount` serving its own mount, killed by SIGTERM or SIGKILL while a reader
//! waits for a stalled registry. The reader is never left in D state waiting for the read's
//! deadline, and no unserved mount stays: SIGTERM unmounts (aborting the waiting request),
//! after SIGKILL the next mount on the directory takes the dead one back with a line saying so.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::faults::{
    in_d_state, mounted, mounts_under, proc_state, pulled, rooted_under, signal, spawn_strata,
    wait_for, wait_none_rooted_under,
};
use strata_tests::fixtures::rich_layers;
use strata_tests::proxy::Fault;
use strata_tests::require_root_fuse;
use strata_tests::strata::ok;

/// A read deadline far longer than any wait below: a reader that is let go was let go by the
/// kill, not by the deadline.
const LONG_DEADLINE_SECS: &str = "120";

/// The environment of a strata serving its own mounts (no layer store), with the long deadline.
const OWN_SERVER: &[(&str, &str)] = &[
    ("STRATA_LAYER_STORE", "0"),
    ("STRATA_READ_TIMEOUT_SECS", LONG_DEADLINE_SECS),
];

/// `strata mount IMAGE DIR` in the foreground, served by this process (no layer store).
fn spawn_mount(root: &Path, image: &str, dir: &Path) -> Child {
    let dir = dir.to_str().unwrap();
    spawn_strata(
        root,
        &["mount", "--prefetch", "none", image, dir],
        OWN_SERVER,
    )
}

/// Sends SIGTERM to `child`.
fn term(child: &Child) {
    signal(child.id(), "TERM");
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
    let w = pulled("t/kill", &rich_layers(false));
    let (proxy, reference, root) = (&w.proxy, w.image.clone(), w.root.clone());
    let state = &w.state;
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

/// `strata run` serving its container's image itself, killed by SIGKILL while it (setting the
/// container up) and its container wait for a stalled registry: the next command aborts the
/// dead lower's connection, so that no process is left waiting (the deadline is two minutes),
/// and unmounts the dead root.
#[test]
fn a_killed_run_leaves_no_waiting_process_and_no_mount() {
    if !require_root_fuse("a_killed_run_leaves_no_waiting_process_and_no_mount") {
        return;
    }
    let w = pulled("t/killrun", &strata_tests::fixtures::runnable_layers());
    let (proxy, image, root) = (&w.proxy, w.image.clone(), w.root.clone());
    proxy.set(Fault::Stall);
    let mut run = spawn_strata(
        &root,
        &["run", "--rm", &image, "cat", "/data/owned"],
        OWN_SERVER,
    );
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
    wait_none_rooted_under(&root, 20);
    assert_eq!(mounts_under(&root), Vec::<String>::new());
    proxy.set(Fault::None);
    assert_eq!(
        ok(&root, &["run", "--rm", &image, "cat", "/data/owned"]),
        "mine"
    );
}

/// The container's command: a cold read in the background (of a file whose registry stalls),
/// and exit 7 on SIGTERM or SIGINT, which `strata run` forwards to it (a PID 1 without a
/// handler ignores both, as under docker).
const TRAPPING: &str = "trap 'exit 7' TERM INT; cat /data/sparse > /dev/null & wait";

/// Starts `strata run --name NAME IMAGE sh -c CMD` with `env`; asserts that after a while it
/// still runs, its container's processes waiting for the stalled registry.
fn stalled_run(root: &Path, name: &str, image: &str, cmd: &str, env: &[(&str, &str)]) -> Child {
    let mut run = spawn_strata(root, &["run", "--name", name, image, "sh", "-c", cmd], env);
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(run.try_wait().unwrap(), None, "{name}: the run waits");
    if rooted_under(root).is_empty() {
        run.kill().unwrap();
        let out = run.wait_with_output().unwrap();
        let log = std::fs::read_to_string(root.join("layers.log")).unwrap_or_default();
        panic!(
            "{name}: no container process; run said {}; store log: {log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run
}

/// The processes whose command line names `root` (strata's, for that state root).
fn strata_pids(root: &Path) -> Vec<u32> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&root))
        })
        .collect()
}

/// After a stopped run: no container process is left (none in D state), no mount under the
/// root, and `ps -a` shows the container exited with `code`.
fn assert_run_gone(root: &Path, name: &str, code: &str) {
    wait_none_rooted_under(root, 20);
    // Nor is a strata process of this root (its layer store) waiting in D state.
    let stuck = in_d_state(&strata_pids(root));
    assert!(
        stuck.is_empty(),
        "{name}: strata processes in D state: {stuck:?}"
    );
    assert_eq!(
        mounts_under(root),
        Vec::<String>::new(),
        "{name}: mounts left"
    );
    let ps = ok(root, &["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    let line = ps.lines().find(|l| l.starts_with(name)).unwrap_or("");
    assert!(line.contains(&format!("Exited ({code})")), "{name}: {ps}");
}

/// Issue 17: `strata run` in the foreground stopped by SIGTERM or SIGINT while its container
/// waits on a cold read of a stalled registry (the read deadline is two minutes): it forwards
/// the signal, its container ends, the waiting read is let go at once, and the run exits
/// promptly with the container's code — served by the layer store or by the run itself. Killed
/// by SIGKILL, its container (reading through the layer store) is let go promptly too. Nothing
/// is left in D state or mounted; `ps -a` is right and the next run works.
#[test]
fn a_run_stopped_by_a_signal_while_a_read_stalls_ends_promptly() {
    if !require_root_fuse("a_run_stopped_by_a_signal_while_a_read_stalls_ends_promptly") {
        return;
    }
    let w = pulled("t/termrun", &strata_tests::fixtures::runnable_layers());
    let (proxy, image, root) = (&w.proxy, w.image.clone(), w.root.clone());
    // What a container start and `sh` read is cached: only /data/sparse is cold.
    ok(&root, &["run", "--rm", &image, "sh", "-c", "true"]);
    let long = ("STRATA_READ_TIMEOUT_SECS", LONG_DEADLINE_SECS);
    let store: &[(&str, &str)] = &[long];
    for (sig, env) in [("TERM", store), ("INT", OWN_SERVER)] {
        let name = format!("stopped-{sig}");
        proxy.set(Fault::Stall);
        let mut run = stalled_run(&root, &name, &image, TRAPPING, env);
        signal(run.id(), sig);
        wait_for(&format!("the run to end after SIG{sig}"), 20, || {
            run.try_wait().unwrap().is_some()
        });
        let out = run.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "SIG{sig}: {err}");
        proxy.set(Fault::None);
        assert_run_gone(&root, &name, "7");
    }
    // SIGKILL: the run cannot forward anything; its container, whose read waits in the layer
    // store, is let go all the same.
    proxy.set(Fault::Stall);
    let mut run = stalled_run(&root, "killed", &image, "cat /data/sparse", store);
    run.kill().unwrap();
    run.wait().unwrap();
    wait_none_rooted_under(&root, 20);
    proxy.set(Fault::None);
    ok(&root, &["ps", "-a"]);
    assert_eq!(
        mounts_under(&root),
        Vec::<String>::new(),
        "SIGKILL: mounts left"
    );
    assert_eq!(
        ok(&root, &["run", "--rm", &image, "cat", "/data/owned"]),
        "mine"
    );
}
