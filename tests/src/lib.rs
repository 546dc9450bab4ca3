//! End-to-end test harness: a real `docker-registry` on 127.0.0.1 with a random port, test
//! images built from files the tests write (pushed with curl, not with strata), a counting and
//! fault-injecting proxy in front of the registry, the `strata` binary, and an independent
//! reference extraction (GNU tar + kernel overlayfs) to compare mounts against.
#![allow(clippy::print_stderr, clippy::print_stdout)]

pub mod estargz;
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
