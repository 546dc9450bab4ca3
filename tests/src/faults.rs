//! What the fault suites (`faults*.rs`) share: strata run with short deadlines, and looks at
//! processes and mounts that must not be left behind (D state, unserved mounts).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `strata --root ROOT ARGS...` with `env` set (deadlines, usually), its output.
pub fn strata_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(root, args, env).output().unwrap()
}

/// `strata --root ROOT ARGS...` with `env` set, started: stdout discarded, stderr piped.
pub fn spawn_strata(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    command(root, args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn command(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(crate::strata::bin());
    c.arg("--root")
        .arg(root)
        .args(args)
        .env_remove("STRATA_LOG")
        .env(
            "STRATA_LAYER_STORE_IDLE_SECS",
            crate::strata::store_idle_secs(),
        )
        .envs(env.iter().copied());
    c
}

/// Drops the page cache, so that the next read of a file goes to its filesystem.
pub fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Whether a read failed with EIO.
pub fn is_eio(r: std::io::Result<Vec<u8>>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

/// The state letter of process `pid` (`R`, `S`, `D`, `Z`...), `None` once it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Waits (at most `secs`) until `cond` holds; fails the test naming `what` past that.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "waited {secs}s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends signal `sig` (`TERM`, `INT`, `KILL`...) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{sig} {pid}");
}

/// Mount points under `dir` other than the layer store's (`dir/layers`), from this process's
/// mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let dir = dir.to_string_lossy().into_owned();
    let store = format!("{dir}/layers");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|p| p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir) && *p != store)
        .collect()
}

/// Whether `dir` is a mount point, from this process's mountinfo (without touching `dir`).
pub fn mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.as_str()))
}

/// Processes whose root directory lies under `dir` (a container's): its root's path, or, for a
/// root mounted in the container's own mount namespace only (whose path reads `/` from here),
/// the options of its root mount (an overlay's upper and lower directories).
pub fn rooted_under(dir: &Path) -> Vec<u32> {
    let text = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r.starts_with(dir))
                || std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|m| {
                    m.lines()
                        .any(|l| l.split(' ').nth(4) == Some("/") && l.contains(&text))
                })
        })
        .collect()
}

/// Processes in D state (uninterruptible) among `pids`, with their states.
pub fn in_d_state(pids: &[u32]) -> Vec<(u32, char)> {
    pids.iter()
        .filter_map(|p| proc_state(*p).map(|s| (*p, s)))
        .filter(|(_, s)| *s == 'D')
        .collect()
}

/// Waits (at most `secs`) until no process has its root under `dir`; fails naming the ones
/// left and their states.
pub fn wait_none_rooted_under(dir: &Path, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = rooted_under(dir);
        if left.is_empty() {
            return;
        }
        let states: Vec<_> = left.iter().map(|p| (*p, proc_state(*p))).collect();
        assert!(
            Instant::now() < end,
            "processes left under {dir:?}: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A registry with an image pushed, the fault proxy in front of it, and a state root (its
/// path canonical) that pulled the image (lazily) through the proxy. Kept whole while in use:
/// the registry stops when dropped, and `state` is deleted.
pub struct Pulled {
    /// The registry (stopped when dropped).
    pub registry: crate::registry::Registry,
    /// The proxy in front of it.
    pub proxy: crate::proxy::Proxy,
    /// The image, named through the proxy: `PROXY/REPO:1`.
    pub image: String,
    /// A directory for the test's state: the root and whatever else it needs.
    pub state: tempfile::TempDir,
    /// The state root, `state/root`.
    pub root: std::path::PathBuf,
}

/// `layers` pushed as native (zstd:chunked) `repo:1`, pulled through a fresh proxy into a
/// fresh root.
pub fn pulled(repo: &str, layers: &[Vec<crate::layers::Item>]) -> Pulled {
    let registry = crate::registry::Registry::start();
    crate::layers::push_image(
        &registry.addr,
        repo,
        "1",
        layers,
        crate::layers::Comp::Native,
    );
    let proxy = crate::proxy::Proxy::start(&registry.addr);
    let image = format!("{}/{repo}:1", proxy.addr);
    let state = tempfile::tempdir().unwrap();
    let root = state.path().join("root");
    crate::strata::ok(&root, &["pull", &image]);
    let root = root.canonicalize().unwrap();
    Pulled {
        registry,
        proxy,
        image,
        state,
        root,
    }
}
