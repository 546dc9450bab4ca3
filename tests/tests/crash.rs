//! Crash hygiene (issue 17): `kill -9` of pull, convert, commit, build, `run` and a detached
//! mount leaves temporaries and mounts that the next command removes; the state stays right.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::fixtures::runnable_layers;
use strata_tests::layers::{Comp, file, noise, push_image};
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{bin, ok, run};

fn spawn(root: &Path, args: &[&str]) -> Child {
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env(
            "STRATA_LAYER_STORE_IDLE_SECS",
            strata_tests::strata::store_idle_secs(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill_pid(pid: i32) {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Entries of `root/tmp`.
fn tmp_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until `cond` holds.
fn wait_for(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mount points under `dir` other than the layer store's (`dir/layers`, which ends on its own
/// once idle), from this process's mountinfo.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let store = dir.join("layers");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split(' ')
                .nth(4)
                .map(|p| PathBuf::from(p.replace("\\040", " ")))
        })
        .filter(|p| p.starts_with(&dir) && *p != store)
        .collect()
}

/// The pid of the process whose command line holds every one of `words`, other than `not`.
fn pid_with(words: &[&str]) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(bin().to_str().unwrap()) && words.iter().all(|w| cmd.contains(w)) {
            return Some(pid);
        }
    }
    None
}

/// An image with a 48 MiB file in a gzip layer: converting or streaming it takes a while.
fn push_big(reg: &Registry) -> String {
    let mut layers = runnable_layers();
    layers.push(vec![file("big/data", &noise(48 << 20, 9))]);
    push_image(&reg.addr, "t/crash", "1", &layers, Comp::Gzip).reference
}

/// `kill -9` of convert and commit while they write: `system df` shows the temporaries while
/// their owner lives; the next command removes them; nothing is listed that was not finished.
#[test]
fn killed_convert_and_commit_leave_no_temporaries() {
    if !require_root_fuse("killed_convert_and_commit_leave_no_temporaries") {
        return;
    }
    let reg = Registry::start();
    let image = push_big(&reg);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &image]);
    let images_before = ok(&root, &["images", "-q"]);

    let target = format!("{}/t/crash:converted", reg.addr);
    let mut convert = spawn(&root, &["convert", &image, &target]);
    wait_for("convert's temporary", 60, || {
        tmp_entries(&root)
            .iter()
            .any(|n| n.starts_with(&format!(".tmp-{}-", convert.id())))
    });
    let df = ok(&root, &["system", "df"]);
    assert!(df.contains("Temporary files"), "{df}");
    kill9(&mut convert);
    let df = ok(&root, &["system", "df"]);
    assert!(!df.contains("Temporary files"), "{df}");
    assert_eq!(tmp_entries(&root), Vec::<String>::new());
    assert_eq!(ok(&root, &["images", "-q"]), images_before);

    // Commit: a container with 64 MiB of new data, killed while its layer is written.
    ok(
        &root,
        &[
            "run",
            "--name",
            "big",
            &image,
            "sh",
            "-c",
            "cat /big/data /big/data > /new",
        ],
    );
    let mut commit = spawn(&root, &["commit", "big", "crash/committed:1"]);
    wait_for("commit's temporary", 60, || {
        tmp_entries(&root)
            .iter()
            .any(|n| n.starts_with(&format!(".tmp-{}-", commit.id())))
    });
    kill9(&mut commit);
    ok(&root, &["images"]);
    assert_eq!(tmp_entries(&root), Vec::<String>::new());
    assert_eq!(ok(&root, &["images", "-q"]), images_before);
    let ps = ok(&root, &["ps", "-a"]);
    assert!(ps.contains("Exited (0)") && ps.contains("big"), "{ps}");
    // The killed commands left nothing that stops them working now.
    ok(&root, &["commit", "big", "crash/committed:1"]);
    assert!(ok(&root, &["images"]).contains("crash/committed"));
}

/// A detached mount whose process is killed: a new mount on the same directory works (one line
/// says the orphaned one was unmounted) instead of "is already a strata mount".
#[test]
fn a_killed_detached_mount_is_taken_back() {
    if !require_root_fuse("a_killed_detached_mount_is_taken_back") {
        return;
    }
    let reg = Registry::start();
    let image = push_image(&reg.addr, "t/mnt", "1", &runnable_layers(), Comp::Native).reference;
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    ok(&root, &["mount", "--detach", &image, m]);
    let pid = pid_with(&["mount", m]).expect("the mount's server");
    kill_pid(pid);
    wait_for("the server to die", 10, || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    // The layer store serves the mount, not the killed process: it still reads, but nobody
    // holds it any more.
    assert!(mnt.join("bin/busybox").exists());

    let out = run(&root, &["mount", "--detach", &image, m]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("unmounted") && err.contains(m) && err.contains("server is gone"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read(mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    ok(&root, &["umount", m]);
    assert!(mounts_under(&mnt).is_empty());
}

/// `kill -9` of the process serving a container (detached run) and of a build in a RUN step:
/// the next command unmounts their dead roots with a line saying so; `ps -a` is right, and a
/// fresh run works.
#[test]
fn killed_runs_and_builds_leave_no_mounts() {
    if !require_root_fuse("killed_runs_and_builds_leave_no_mounts") {
        return;
    }
    let reg = Registry::start();
    let image = push_image(&reg.addr, "t/run", "1", &runnable_layers(), Comp::Native).reference;
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    let id = ok(
        &root,
        &["run", "-d", "--name", "sleeper", &image, "sleep", "300"],
    );
    let id = id.trim();
    let pid = pid_with(&["run", &format!("--cid={id}")]).expect("the container's server");
    assert!(!mounts_under(&root).is_empty());
    kill_pid(pid);
    wait_for("the server to die", 10, || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });

    // A build killed in a RUN step.
    let ctx = state.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {image}\nRUN echo started > /started && sleep 300\n"),
    )
    .unwrap();
    let mut build = spawn(
        &root,
        &["build", "-t", "crash/built", ctx.to_str().unwrap()],
    );
    wait_for("the build step", 60, || {
        std::fs::read_dir(root.join("containers"))
            .map(|d| d.flatten().any(|e| e.path().join("upper/started").exists()))
            .unwrap_or(false)
    });
    kill9(&mut build);

    let out = run(&root, &["ps", "-a"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let ps = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{err}");
    // The killed build's root at least (the run's dead root may already have been taken back
    // by `build`, the first command after its server died).
    assert!(
        err.lines()
            .any(|l| l.contains("unmounted") && l.contains("server is gone")),
        "{err}"
    );
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));
    assert!(ps.contains("sleeper") && ps.contains("Exited"), "{ps}");
    assert!(!ok(&root, &["images"]).contains("crash/built"));
    // Quiet afterwards: nothing left to unmount.
    let out = run(&root, &["ps", "-a"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ok(&root, &["run", "--rm", &image, "cat", "/data/owned"]),
        "mine"
    );
    ok(&root, &["rm", "-f", "sleeper"]);
}

/// A small deterministic pseudo-random sequence (the loop must be repeatable).
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

/// The `strata-*` cgroup directories of the containers named in `ids`, in every hierarchy
/// (a few levels deep: strata makes them beneath its own cgroup).
fn cgroups_of(ids: &std::collections::HashSet<String>) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_prefix("strata-") {
                Some(id) if ids.contains(id) => found.push(e.path()),
                Some(_) => {}
                None if depth < 4 => dirs.push((e.path(), depth + 1)),
                None => {}
            }
        }
    }
    found
}

/// The ids of the container directories of `root` (records, and what killed commands left).
fn container_ids(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// After every kill: the listing commands work, no temporary and no mount is left, and
/// `system df` shows no temporaries.
fn assert_clean(root: &Path, what: &str) {
    ok(root, &["images"]);
    ok(root, &["ps", "-a"]);
    let df = ok(root, &["system", "df"]);
    if df.contains("Temporary files") {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find {0} -name '.tmp-*' -o -name '.*.tmp' | xargs ls -la",
                root.display()
            ))
            .status();
    }
    assert!(!df.contains("Temporary files"), "after {what}: {df}");
    assert_eq!(tmp_entries(root), Vec::<String>::new(), "after {what}");
    assert!(
        mounts_under(root).is_empty(),
        "after {what}: {:?}",
        mounts_under(root)
    );
}

/// `kill -9` of pull, convert, commit, push, build and a detached mount's server at pseudo-random
/// moments, 20 times (STRATA_KILL_LOOP=N for more): after each, `images`, `ps -a` and
/// `system df` work and nothing is left behind; at the end a fresh run works and no strata
/// process of this root is left.
#[test]
fn kill_nine_at_random_moments() {
    if !require_root_fuse("kill_nine_at_random_moments") {
        return;
    }
    let rounds: u64 = std::env::var("STRATA_KILL_LOOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let reg = Registry::start();
    let image = push_big(&reg);
    let small = push_image(&reg.addr, "t/small", "1", &runnable_layers(), Comp::Native).reference;
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    ok(&root, &["pull", &small]);
    ok(&root, &["pull", "--all", &image]);
    ok(
        &root,
        &[
            "run",
            "--name",
            "src",
            &image,
            "sh",
            "-c",
            "cat /big/data > /new",
        ],
    );
    let committed = format!("{}/t/crash:committed", reg.addr);
    ok(&root, &["commit", "src", &committed]);
    let ctx = state.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {image}\nRUN cat /big/data /big/data > /twice\n"),
    )
    .unwrap();
    let mnt = state.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mnt.to_str().unwrap().to_string();
    let mut seed = 17u64;
    // Every container directory seen: none may keep a cgroup once its container is gone.
    let mut seen = std::collections::HashSet::new();
    for round in 0..rounds {
        let delay = Duration::from_millis(50 + next(&mut seed) % 2500);
        let what = ["pull", "convert", "commit", "push", "build", "mount"][(round % 6) as usize];
        eprintln!("round {round}: {what}, killed after {delay:?}");
        match what {
            "mount" => {
                // The server of a detached mount, killed while a reader streams a file.
                if run(&root, &["mount", "--detach", &image, &m])
                    .status
                    .success()
                {
                    let pid = pid_with(&["mount", &m]).expect("the mount's server");
                    let file = mnt.join("big/data");
                    let reader = std::thread::spawn(move || std::fs::read(file).map(|b| b.len()));
                    std::thread::sleep(delay);
                    kill_pid(pid);
                    let _ = reader.join();
                }
            }
            _ => {
                let tag = format!("{}/t/crash:r{round}", reg.addr);
                let ctx_dir = ctx.to_str().unwrap().to_string();
                let args: Vec<&str> = match what {
                    "pull" => {
                        let _ = run(&root, &["rmi", "-f", &image]);
                        vec!["pull", "--all", &image]
                    }
                    "convert" => vec!["convert", &image, &tag],
                    "commit" => vec!["commit", "src", &tag],
                    "push" => vec!["push", &committed],
                    _ => vec!["build", "--no-cache", "-t", &tag, &ctx_dir],
                };
                let mut child = spawn(&root, &args);
                std::thread::sleep(delay);
                kill9(&mut child);
            }
        }
        // A killed pull may have taken the image away: the next round's commands need it.
        assert_clean(&root, what);
        seen.extend(container_ids(&root));
        if what == "pull" {
            ok(&root, &["pull", "--all", &image]);
        }
    }
    // A build killed once its RUN step's container runs (its cgroups made), not at random.
    let step = format!("{}/t/crash:step", reg.addr);
    let mut child = spawn(
        &root,
        &["build", "--no-cache", "-t", &step, ctx.to_str().unwrap()],
    );
    wait_for("the build step's cgroups", 60, || {
        !cgroups_of(&container_ids(&root).into_iter().collect()).is_empty()
    });
    seen.extend(container_ids(&root));
    kill9(&mut child);
    // A mount point a killed server left is taken back by the next mount.
    ok(&root, &["mount", "--detach", &small, &m]);
    ok(&root, &["umount", &m]);
    // Record-less container directories of killed builds go once they are old enough.
    std::thread::sleep(Duration::from_secs(11));
    assert_clean(&root, "the loop");
    // No container runs now (`src` has exited): none of them has a cgroup left.
    assert_eq!(
        cgroups_of(&seen),
        Vec::<PathBuf>::new(),
        "cgroups left; containers now {:?}; ps -a {}",
        container_ids(&root),
        ok(&root, &["ps", "-a"])
    );
    for e in std::fs::read_dir(root.join("containers"))
        .unwrap()
        .flatten()
    {
        assert!(
            e.path().join("container.json").exists(),
            "{} has no record",
            e.path().display()
        );
    }
    assert_eq!(
        ok(&root, &["run", "--rm", &image, "cat", "/data/owned"]),
        "mine"
    );
    let ps = ok(&root, &["ps", "-a"]);
    assert!(ps.contains("src"), "{ps}");
    // A push killed midway is done again whole.
    ok(&root, &["push", &committed]);
    let again = tempfile::tempdir().unwrap();
    assert_eq!(
        ok(
            again.path(),
            &["run", "--rm", &committed, "cat", "/data/owned"]
        ),
        "mine"
    );
    // Nothing of this root is left running once its layer store has been idle (2 s here).
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_with(&[root.to_str().unwrap()]).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(pid) = pid_with(&[root.to_str().unwrap()]) {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let log = std::fs::read_to_string(root.join("layers.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        panic!(
            "a strata process of this root is left: {pid} {:?}; store log ends {tail:?}; mounts {:?}",
            String::from_utf8_lossy(&cmd).replace('\0', " "),
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(root.to_str().unwrap()))
                .collect::<Vec<_>>()
        );
    }
}
