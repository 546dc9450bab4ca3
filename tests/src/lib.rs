//! End-to-end test harness: a real `docker-registry` on 127.0.0.1 with a random port, test
//! images built from files the tests write (pushed with curl, not with strata), a counting and
//! fault-injecting proxy in front of the registry, the `strata` binary, and an independent
//! reference extraction (GNU tar + kernel overlayfs) to compare mounts against.
#![allow(clippy::print_stderr, clippy::print_stdout)]

pub mod containerd;
pub mod estargz;
pub mod faults;
pub mod fixtures;
pub mod golden;
pub mod layers;
pub mod podman;
pub mod proxy;
pub mod registry;
pub mod strata;
pub mod walk;
pub mod world;

use std::path::Path;

/// Whether this environment can run the root/FUSE/registry tests. Without them a test prints why
/// and returns; under CI (`CI=true`) a missing capability fails the test instead.
pub fn require_root_fuse(test: &str) -> bool {
    let mut missing = Vec::new();
    // SAFETY-free check: geteuid has no preconditions.
    if !nix_is_root() {
        missing.push("root");
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse");
    }
    if !Path::new(registry::REGISTRY_BIN).exists() {
        missing.push("docker-registry (apt-get install docker-registry)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: a missing capability is a failure)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// sha256 digest string of bytes.
pub fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// One line of `/proc/self/mountinfo`: mount point, filesystem type, source, super options.
#[derive(Debug, Clone)]
pub struct MountLine {
    /// Mount point.
    pub point: std::path::PathBuf,
    /// Filesystem type (`overlay`, `fuse.strata`, ...).
    pub fstype: String,
    /// Source.
    pub source: String,
    /// Super block options (overlayfs' `lowerdir=...` among them).
    pub options: String,
}

/// The mounts of this machine's mount namespace, in mount order.
pub fn mounts() -> Vec<MountLine> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let point = f.get(4)?.replace("\\040", " ").replace("\\134", "\\");
            Some(MountLine {
                point: point.into(),
                fstype: f.get(sep + 1)?.to_string(),
                source: f.get(sep + 2)?.to_string(),
                options: f.get(sep + 3).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// The filesystem type of the topmost mount at `dir`, if `dir` is a mount point.
pub fn mount_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == dir)
        .map(|m| m.fstype)
}
