//! A podman (Debian's 4.3) with its own root, runroot and configuration in a temp dir: overlay
//! storage with partial (zstd:chunked) pulls enabled, runc on cgroupfs, 127.0.0.1 registries
//! allowed over plain HTTP. Never the system's storage or services.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A private podman; its mounts are undone when dropped.
pub struct Podman {
    dir: tempfile::TempDir,
    /// storage.conf's options apply: no `--storage-driver` flag (podman drops the driver
    /// options of storage.conf when the flag is given).
    own_options: std::sync::atomic::AtomicBool,
}

impl Podman {
    /// Sets up the configuration; `registries` are reachable over plain HTTP.
    pub fn new(registries: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let regs: String = registries
            .iter()
            .map(|r| format!("[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"))
            .collect();
        std::fs::write(
            p.join("registries.conf"),
            format!("unqualified-search-registries = []\n{regs}"),
        )
        .unwrap();
        std::fs::write(
            p.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/root\"\n\
                 [storage.options]\npull_options = {{enable_partial_images = \"true\", use_hard_links = \"false\"}}\n",
                p.display()
            ),
        )
        .unwrap();
        // No default ulimits: a test machine's hard limits may be below podman's defaults.
        std::fs::write(
            p.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
        )
        .unwrap();
        Self {
            dir,
            own_options: false.into(),
        }
    }

    /// Replaces the `[storage.options]` of this instance's storage.conf with `options` (TOML
    /// lines), e.g. `additionallayerstores = ["DIR:ref"]`; commands then leave out
    /// `--root`, `--runroot` and `--storage-driver` (storage.conf names the same), with which
    /// podman would ignore them.
    pub fn set_storage_options(&self, options: &str) {
        self.own_options
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let p = self.dir.path();
        std::fs::write(
            p.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{0}/run\"\ngraphroot = \"{0}/root\"\n\
                 [storage.options]\n{options}\n",
                p.display()
            ),
        )
        .unwrap();
    }

    /// This instance's storage root (`--root`).
    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `podman` command with this instance's root and configuration.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"));
        // storage.conf names the same root and runroot; with any of these flags podman
        // leaves storage.conf's driver options out.
        if !self.own_options.load(std::sync::atomic::Ordering::SeqCst) {
            c.arg("--root")
                .arg(self.path("root"))
                .arg("--runroot")
                .arg(self.path("run"))
                .args(["--storage-driver", "overlay"]);
        }
        c
    }

    /// Runs podman with `args`; panics with its stderr on failure.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().expect("podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af"]).output();
        unmount_under(self.dir.path());
    }
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
}
