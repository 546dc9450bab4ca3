//! The round trip with the real SOCI snapshotter: a container runs lazily under
//! `soci-snapshotter-grpc` (containerd 2.x) from the SOCI index strata wrote, and strata runs
//! lazily what `soci convert` wrote, compared with an independent extraction. The peers are not
//! CI components: `/work/shared/peers/build.sh` builds them and `STRATA_PEERS` names the
//! directory holding `soci`, `soci-snapshotter-grpc`, `ctr-remote`, `containerd`, `ctr` and
//! `containerd-shim-runc-v2` (or its parent with a `bin/`). Without it these tests say so and
//! pass.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use strata_tests::fixtures::{BIG_PATH, big, busybox_layer, rich_layers};
use strata_tests::layers::{Blob, push_blobs, tar_of};
use strata_tests::proxy::Proxy;
use strata_tests::registry::Registry;
use strata_tests::require_root_fuse;
use strata_tests::strata::{Mounted, ok};
use strata_tests::walk::{ReferenceTree, assert_same, snapshot};

/// The peers' binaries, or `None` (said) when `STRATA_PEERS` is unset.
fn peers(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("STRATA_PEERS") else {
        eprintln!(
            "{test}: skipped: STRATA_PEERS is unset (the SOCI snapshotter is a peer built by \
             /work/shared/peers/build.sh, not a CI component)"
        );
        return None;
    };
    let dir = PathBuf::from(dir);
    let bin = if dir.join("bin/soci").is_file() {
        dir.join("bin")
    } else {
        dir
    };
    for n in [
        "soci",
        "soci-snapshotter-grpc",
        "ctr-remote",
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
    ] {
        assert!(
            bin.join(n).is_file(),
            "STRATA_PEERS={}: no {n}",
            bin.display()
        );
    }
    Some(bin)
}

/// The rich image with busybox, as gzip layers at the default level; returns the reference,
/// the tars and the compressed bytes.
fn push_gzip(registry: &str, repo: &str) -> (String, Vec<Vec<u8>>, u64) {
    let mut layers = rich_layers(true);
    layers.push(busybox_layer());
    let tars: Vec<Vec<u8>> = layers.iter().map(|l| tar_of(l)).collect();
    let blobs: Vec<Blob> = tars.iter().map(|t| Blob::gzip(t)).collect();
    let bytes = blobs.iter().map(|b| b.data.len() as u64).sum();
    (push_blobs(registry, repo, "1", &blobs), tars, bytes)
}

fn must(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// containerd 2.x with the SOCI snapshotter as its `soci` proxy snapshotter, all under a short
/// directory of its own (sockets have a 108-byte limit); killed and removed when dropped.
struct Node {
    dir: tempfile::TempDir,
    bin: PathBuf,
    children: Vec<Child>,
}

impl Node {
    /// Starts the node; `registry` (plain HTTP) is reachable as a mirror of itself. The
    /// background fetcher is off so that registry bytes count what was read.
    fn start(bin: &Path, registry: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("sp")
            .tempdir_in("/run")
            .unwrap();
        let d = dir.path().display().to_string();
        let mut node = Node {
            dir,
            bin: bin.to_path_buf(),
            children: Vec::new(),
        };
        let soci_toml = format!("{d}/soci.toml");
        std::fs::write(
            &soci_toml,
            format!(
                "[background_fetch]\ndisable = true\n\
                 [[resolver.host.\"{registry}\".mirrors]]\nhost = \"http://{registry}\"\n\
                 insecure = true\n"
            ),
        )
        .unwrap();
        let mut c = node.command("soci-snapshotter-grpc");
        c.args(["--address", &format!("{d}/soci.sock")])
            .args(["--root", &format!("{d}/soci-root")])
            .args(["--config", &soci_toml]);
        node.spawn(c, "soci.log");
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [proxy_plugins.soci]\n  type = \"snapshot\"\n  address = \"{d}/soci.sock\"\n"
        );
        std::fs::write(format!("{d}/containerd.toml"), config).unwrap();
        let mut c = node.command("containerd");
        c.args(["--config", &format!("{d}/containerd.toml")]);
        node.spawn(c, "containerd.log");
        node.wait_ready();
        node
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        let path = std::env::var("PATH").unwrap_or_default();
        // containerd finds its shim (and the shim runc) on PATH: the peers' own first.
        c.env("PATH", format!("{}:{path}", self.bin.display()));
        c
    }

    fn spawn(&mut self, mut c: Command, log: &str) {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        self.children.push(child);
    }

    /// `name -a SOCK` (ctr or ctr-remote).
    fn client(&self, name: &str) -> Command {
        let mut c = self.command(name);
        c.arg("-a").arg(self.dir.path().join("c.sock"));
        c
    }

    /// Waits (at most 60 s) for containerd to answer and the snapshotter's socket.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let sock = self.dir.path().join("soci.sock");
        while Instant::now() < deadline {
            let up = sock.exists()
                && self
                    .client("ctr")
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd or soci-snapshotter-grpc did not start in 60 s: {}",
            self.logs()
        );
    }

    fn logs(&self) -> String {
        ["soci.log", "containerd.log"]
            .iter()
            .map(|l| std::fs::read_to_string(self.dir.path().join(l)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Mounts the snapshotter or containerd left behind, deepest first.
        let d = self.dir.path().to_string_lossy().into_owned();
        let mut points: Vec<PathBuf> = strata_tests::mounts()
            .into_iter()
            .map(|m| m.point)
            .filter(|p| p.starts_with(&d))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

#[test]
fn the_soci_snapshotter_runs_what_strata_indexed_lazily() {
    let test = "the_soci_snapshotter_runs_what_strata_indexed_lazily";
    let Some(bin) = peers(test) else { return };
    if !require_root_fuse(test) {
        return;
    }
    let reg = Registry::start();
    let (image, _, blob_bytes) = push_gzip(&reg.addr, "t/peer");
    let state = tempfile::tempdir().unwrap();
    let args = ["index", "-q", &image, "--min-layer-size", "0"];
    let args = [&args[..], &["--span-size", "1048576"]].concat();
    ok(&state.path().join("writer"), &args);

    let proxy = Proxy::start(&reg.addr);
    let reference = image.replacen(&reg.addr, &proxy.addr, 1);
    let node = Node::start(&bin, &proxy.addr);
    let pull = ["image", "rpull", "--plain-http", "--snapshotter", "soci"];
    must(
        node.client("ctr-remote")
            .args(pull)
            .arg("--use-containerd-labels")
            .arg(&reference),
    );
    let out = must(
        node.client("ctr")
            .args(["run", "--rm", "--snapshotter", "soci"])
            .arg(&reference)
            .arg(format!("peer-{}", std::process::id()))
            .args(["/bin/busybox", "cat", "/etc/os-release"]),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ID=strata-test\nVERSION_ID=2\n"
    );
    let (reqs, bytes) = proxy.counts();
    eprintln!("soci-snapshotter on strata's index: {reqs} requests, {bytes} of {blob_bytes} bytes");
    // The 64 MiB file's layer was not fetched whole: SOCI read through strata's ztocs.
    assert!(
        bytes < blob_bytes / 2,
        "fetched {bytes} of {blob_bytes} bytes: {}",
        node.logs()
    );
}

#[test]
fn strata_runs_what_soci_convert_wrote_lazily() {
    let test = "strata_runs_what_soci_convert_wrote_lazily";
    let Some(bin) = peers(test) else { return };
    if !require_root_fuse(test) {
        return;
    }
    let reg = Registry::start();
    let (image, tars, blob_bytes) = push_gzip(&reg.addr, "t/conv");
    let work = tempfile::tempdir().unwrap();
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    must(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{image}"))
            .arg(format!("oci:{}:latest", src.display())),
    );
    must(
        Command::new(bin.join("soci"))
            .args(["--root", &work.path().join("soci").to_string_lossy()])
            .args(["convert", "--standalone", "--format", "oci-dir"])
            .args(["--min-layer-size", "0", "--span-size", "1048576"])
            .arg(&src)
            .arg(&out),
    );
    let converted = format!("{}/t/conv:soci", reg.addr);
    must(
        Command::new("skopeo")
            .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}", out.display()))
            .arg(format!("docker://{converted}")),
    );

    let proxy = Proxy::start(&reg.addr);
    let reference = converted.replacen(&reg.addr, &proxy.addr, 1);
    let root = work.path().join("root");
    ok(&root, &["pull", &reference]);
    // Through the ztocs: the pull fetched no layer.
    let (_, pull_bytes) = proxy.counts();
    assert!(
        pull_bytes < blob_bytes / 20,
        "pull fetched {pull_bytes} bytes"
    );
    let m = Mounted::new(&root, &reference, &work.path().join("mnt"));
    proxy.reset();
    let text = std::fs::read_to_string(m.dir.join("etc/os-release")).unwrap();
    assert_eq!(text, "ID=strata-test\nVERSION_ID=2\n");
    let f = std::fs::File::open(m.dir.join(BIG_PATH)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 30 << 20).unwrap();
    assert!(buf == big()[30 << 20..31 << 20]);
    let (reqs, bytes) = proxy.counts();
    eprintln!("strata on soci convert's index: {reqs} requests, {bytes} of {blob_bytes} bytes");
    assert!(bytes < 12 << 20, "fetched {bytes} bytes");
    let want = ReferenceTree::new(&tars);
    assert_same("soci convert", &snapshot(&m.dir), &snapshot(&want.root));
}
