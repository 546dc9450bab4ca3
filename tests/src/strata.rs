//! Running the `strata` binary built by `cargo build`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `strata` binary next to the test executable (`target/<profile>/strata`).
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("strata");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// Runs `strata --root ROOT ARGS...`.
pub fn run(root: &Path, args: &[&str]) -> Output {
    run_env(root, args, &[])
}

/// [`run`] with `envs` (name, value) added to its environment.
pub fn run_env(root: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("STRATA_LOG")
        .env("STRATA_LAYER_STORE_IDLE_SECS", store_idle_secs())
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

/// How long a test's layer store stays up idle (`STRATA_LAYER_STORE_IDLE_SECS`, default 2):
/// short, so that a test's store is gone soon after the test.
pub fn store_idle_secs() -> String {
    std::env::var("STRATA_LAYER_STORE_IDLE_SECS").unwrap_or_else(|_| "2".into())
}

/// Runs strata and asserts success; returns stdout.
pub fn ok(root: &Path, args: &[&str]) -> String {
    let out = run(root, args);
    assert!(
        out.status.success(),
        "strata {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A detached strata mount, unmounted when dropped.
pub struct Mounted {
    /// The mount point.
    pub dir: PathBuf,
    root: PathBuf,
}

impl Mounted {
    /// `strata mount --detach IMAGE DIR`.
    pub fn new(root: &Path, image: &str, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        ok(root, &["mount", "--detach", image, dir.to_str().unwrap()]);
        Self {
            dir: dir.to_path_buf(),
            root: root.to_path_buf(),
        }
    }
}

impl Mounted {
    /// A mount already made (e.g. with other options) at `dir`, to be unmounted when dropped.
    pub fn adopt(root: &Path, dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            root: root.to_path_buf(),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let out = run(&self.root, &["umount", self.dir.to_str().unwrap()]);
        if !out.status.success() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
