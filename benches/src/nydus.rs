//! Nydus, compared mount to mount: `nydusd` serving a RAFS v6 image from the registry as a
//! bare FUSE mount, beside `strata mount` of the native image, the workload run by `chroot`
//! in both. nydus-snapshotter does not build here (`../shared/peers/README.md`), so this is
//! the fairest comparison available: no containerd, no overlay, no namespaces on either side.
//!
//! The image is made once per benchmark from the gzip image's layers with Nydus's own tool
//! (`nydus-image create -t targz-rafs --fs-version 6` per layer, then `nydus-image merge`);
//! its data blobs and merged bootstrap are pushed as blobs of `REG/bench/nydus`. Each cold start
//! fetches the bootstrap through the shaped link (what a snapshotter pulls before mounting),
//! starts `nydusd` with an empty blob cache and the registry backend (no prefetch, its default
//! read amplification), and runs the workload.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sh;

/// The scenario names this module adds to the table.
pub const NYDUS: &str = "Nydus (nydusd mount, chroot)";
pub const STRATA_MOUNT: &str = "strata mount (chroot)";

const REPO: &str = "bench/nydus";

/// A Nydus image made and pushed: where its tools are, and its bootstrap's blob digest.
pub struct Nydus {
    bin: PathBuf,
    bootstrap: String,
}

/// Finds `nydusd` and `nydus-image` in `dir` (or on PATH); `Err` names what is missing.
pub fn discover(dir: Option<&Path>) -> Result<PathBuf, String> {
    let dirs: Vec<PathBuf> = match dir {
        Some(d) => vec![d.to_path_buf()],
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect(),
    };
    dirs.into_iter()
        .find(|d| d.join("nydusd").is_file() && d.join("nydus-image").is_file())
        .ok_or_else(|| format!("{NYDUS} (nydusd, nydus-image)"))
}

fn run(c: &mut Command) -> Result<String, String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{c:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The gzip image's layer blobs, base first, from an OCI layout `dir` (skopeo's copy).
fn layers(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let read = |p: PathBuf| -> Result<serde_json::Value, String> {
        let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
    };
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = read(dir.join("index.json"))?;
    let m = index["manifests"][0]["digest"]
        .as_str()
        .ok_or("index.json: no manifest")?;
    let manifest = read(blob(m))?;
    Ok(manifest["layers"]
        .as_array()
        .ok_or("manifest: no layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str())
        .map(blob)
        .collect())
}

/// Makes the Nydus image from `REG/bench/py:gzip` under `work` and pushes its blobs to
/// `REG/bench/nydus` (unshaped registry).
pub fn prepare(bin: &Path, work: &Path, registry: &str) -> Result<Nydus, String> {
    let src = work.join("nydus-src");
    let (blobs, boots) = (work.join("nydus-blobs"), work.join("nydus-boots"));
    for d in [&src, &blobs, &boots] {
        let _ = std::fs::remove_dir_all(d);
    }
    for d in [&boots, &blobs] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{registry}/bench/py:gzip"))
        .arg(format!("oci:{}:latest", src.display())))?;
    let mut bootstraps = Vec::new();
    for layer in layers(&src)? {
        let (tmp, out) = (boots.join("tmp"), work.join("nydus-out.json"));
        run(Command::new(bin.join("nydus-image"))
            .args(["create", "-t", "targz-rafs", "--fs-version", "6", "-D"])
            .arg(&blobs)
            .arg("--bootstrap")
            .arg(&tmp)
            .arg("--output-json")
            .arg(&out)
            .arg(&layer))?;
        let o: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", out.display()))?;
        let id = o["blobs"]
            .as_array()
            .and_then(|b| b.last())
            .and_then(|b| b.as_str())
            .ok_or_else(|| format!("{}: no blob id", out.display()))?;
        // merge takes each layer's blob id from its bootstrap's file name (peers/README.md).
        let named = boots.join(id);
        std::fs::rename(&tmp, &named).map_err(|e| e.to_string())?;
        bootstraps.push(named);
    }
    let merged = work.join("nydus-merged.boot");
    run(Command::new(bin.join("nydus-image"))
        .args(["merge", "-D"])
        .arg(&blobs)
        .arg("--bootstrap")
        .arg(&merged)
        .args(&bootstraps))?;
    for e in std::fs::read_dir(&blobs)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        push_blob(registry, &e.path())?;
    }
    let bootstrap = push_blob(registry, &merged)?;
    Ok(Nydus {
        bin: bin.to_path_buf(),
        bootstrap,
    })
}

/// Pushes `file` as a blob of `REG/bench/nydus` (distribution's two-step upload) and returns
/// its digest.
fn push_blob(registry: &str, file: &Path) -> Result<String, String> {
    let sum = run(Command::new("sha256sum").arg(file))?;
    let digest = format!(
        "sha256:{}",
        sum.split_whitespace().next().unwrap_or_default()
    );
    let head = run(Command::new("curl")
        .args(["-sSf", "-i", "-X", "POST"])
        .arg(format!("http://{registry}/v2/{REPO}/blobs/uploads/")))?;
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .ok_or("upload: no Location")?;
    let url = if location.starts_with('/') {
        format!("http://{registry}{location}")
    } else {
        location
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    run(Command::new("curl")
        .args([
            "-sSf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{url}{sep}digest={digest}")))?;
    Ok(digest)
}

/// A running `nydusd`: killed and its mount removed when dropped.
pub struct Daemon {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// True when `dir` is a mount point in this mount namespace.
fn mounted(dir: &Path) -> bool {
    let d = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*d)))
}

impl Nydus {
    /// One cold start through `link`: bootstrap fetched, `nydusd` started with an empty cache
    /// under `dir`, the mount awaited (at most 30 s), `python3 -c code` run by chroot.
    /// Returns the daemon, to be stopped after the clock.
    pub fn cold_start(&self, dir: &Path, link: &str, code: &str) -> Daemon {
        let boot = dir.join("image.boot");
        sh(Command::new("curl")
            .args(["-sSf", "-o"])
            .arg(&boot)
            .arg(format!("http://{link}/v2/{REPO}/blobs/{}", self.bootstrap)));
        let (mnt, cache) = (dir.join("mnt"), dir.join("cache"));
        std::fs::create_dir_all(&mnt).expect("mnt");
        std::fs::create_dir_all(&cache).expect("cache");
        let config = serde_json::json!({
            "device": {
                "backend": {"type": "registry", "config": {
                    "scheme": "http", "host": link, "repo": REPO,
                    "timeout": 30, "connect_timeout": 5, "retry_limit": 2}},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}}
            },
            "mode": "direct", "digest_validate": false, "iostats_files": false,
            "enable_xattr": true, "fs_prefetch": {"enable": false}
        });
        let conf = dir.join("nydusd.json");
        std::fs::write(&conf, config.to_string()).expect("config");
        let log = std::fs::File::create(dir.join("nydusd.log")).expect("log");
        let child = Command::new(self.bin.join("nydusd"))
            .arg("--config")
            .arg(&conf)
            .arg("--bootstrap")
            .arg(&boot)
            .arg("--mountpoint")
            .arg(&mnt)
            // Its default asks for 1,000,000 open files and fails with EPERM here.
            .args(["--rlimit-nofile", "0", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("nydusd");
        let daemon = Daemon {
            child,
            mnt: mnt.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mounted(&mnt) {
            assert!(
                Instant::now() < deadline,
                "nydusd did not mount in 30 s: see {}",
                dir.join("nydusd.log").display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        sh(Command::new("chroot")
            .arg(&mnt)
            .args(["python3", "-c", code])
            .stdout(Stdio::null()));
        daemon
    }
}
