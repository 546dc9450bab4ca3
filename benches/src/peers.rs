//! The peers, side by side with strata: stargz-snapshotter and the SOCI snapshotter, each a
//! containerd proxy snapshotter under a containerd 2.x of the benchmark's own (own root, state
//! and sockets), started fresh before every run. `../shared/peers/build.sh` builds them; they
//! are found with `--peers DIR` or on PATH, and a missing one is named in the output, never
//! fatal. Each peer's image is made once per benchmark from the gzip image with the peer's own
//! tool (`ctr-remote image convert --estargz`, `soci convert --standalone`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{drop_caches, sh};

/// The binaries each peer needs, beside containerd 2.x's `containerd`, `ctr` and shim.
const CONTAINERD: [&str; 3] = ["containerd", "ctr", "containerd-shim-runc-v2"];
const STARGZ: [&str; 2] = ["containerd-stargz-grpc", "ctr-remote"];
const SOCI: [&str; 3] = ["soci", "soci-snapshotter-grpc", "ctr-remote"];

/// A peer snapshotter and what it was found with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Peer {
    Stargz,
    Soci,
}

impl Peer {
    /// The scenario's name in the table.
    pub fn scenario(self) -> &'static str {
        match self {
            Peer::Stargz => "stargz-snapshotter (eStargz)",
            Peer::Soci => "SOCI snapshotter (v2 index)",
        }
    }

    fn snapshotter(self) -> &'static str {
        match self {
            Peer::Stargz => "stargz",
            Peer::Soci => "soci",
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Peer::Stargz => "estargz",
            Peer::Soci => "soci",
        }
    }

    fn needs(self) -> &'static [&'static str] {
        match self {
            Peer::Stargz => &STARGZ,
            Peer::Soci => &SOCI,
        }
    }
}

/// The peers found, their binaries' directory, and what is missing.
pub struct Peers {
    pub bin: PathBuf,
    pub present: Vec<Peer>,
    pub missing: Vec<String>,
}

/// Where `name` is: in `dir` if given, else on PATH.
fn find(dir: Option<&Path>, name: &str) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = match dir {
        Some(d) => vec![d.to_path_buf()],
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect(),
    };
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Looks for the peers in `dir` (or on PATH). containerd must be a 2.x: ctr-remote 0.19 needs
/// its transfer service.
pub fn discover(dir: Option<&Path>) -> Peers {
    let mut missing = Vec::new();
    let bin = find(dir, "containerd")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let containerd_ok = CONTAINERD.iter().all(|n| find(Some(&bin), n).is_some())
        && Command::new(bin.join("containerd"))
            .arg("--version")
            .output()
            .is_ok_and(|o| {
                let v = String::from_utf8_lossy(&o.stdout).into_owned();
                v.contains("containerd/v2 ") || v.contains(" v2.")
            });
    if !containerd_ok {
        missing.push("containerd 2.x (containerd, ctr, containerd-shim-runc-v2)".to_string());
    }
    let mut present = Vec::new();
    for peer in [Peer::Stargz, Peer::Soci] {
        let absent: Vec<&str> = peer
            .needs()
            .iter()
            .copied()
            .filter(|n| find(Some(&bin), n).is_none())
            .collect();
        if absent.is_empty() && containerd_ok {
            present.push(peer);
        } else if !absent.is_empty() {
            missing.push(format!("{} ({})", peer.scenario(), absent.join(", ")));
        }
    }
    Peers {
        bin,
        present,
        missing,
    }
}

/// A containerd 2.x with both peers as proxy snapshotters, all under `dir` (short: sockets
/// have a 108-byte limit). Killed and its state removed when dropped.
pub struct Node {
    dir: PathBuf,
    bin: PathBuf,
    children: Vec<Child>,
}

impl Node {
    fn sock(&self) -> PathBuf {
        self.dir.join("c.sock")
    }

    /// Starts containerd and the peers' snapshotters, registry `registry` (plain HTTP).
    pub fn start(bin: &Path, dir: &Path, registry: &str, peers: &[Peer]) -> Node {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("node dir");
        let mut node = Node {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            children: Vec::new(),
        };
        let d = dir.display();
        let mut config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n"
        );
        for peer in peers {
            let name = peer.snapshotter();
            config.push_str(&format!(
                "[proxy_plugins.{name}]\n  type = \"snapshot\"\n  address = \"{d}/{name}.sock\"\n"
            ));
            // stargz takes the mirror as HOST:PORT, SOCI as a URL (peers/README.md).
            let host = match peer {
                Peer::Stargz => registry.to_string(),
                Peer::Soci => format!("http://{registry}"),
            };
            let toml = dir.join(format!("{name}.toml"));
            std::fs::write(
                &toml,
                format!(
                    "[[resolver.host.\"{registry}\".mirrors]]\nhost = \"{host}\"\ninsecure = true\n"
                ),
            )
            .expect("peer config");
            let grpc = match peer {
                Peer::Stargz => "containerd-stargz-grpc",
                Peer::Soci => "soci-snapshotter-grpc",
            };
            let mut c = node.command(grpc);
            c.arg("--address")
                .arg(dir.join(format!("{name}.sock")))
                .arg("--root")
                .arg(dir.join(format!("{name}-root")))
                .arg("--config")
                .arg(&toml);
            node.spawn(c, &format!("{name}.log"));
        }
        std::fs::write(dir.join("containerd.toml"), config).expect("containerd config");
        let mut c = node.command("containerd");
        c.arg("--config").arg(dir.join("containerd.toml"));
        node.spawn(c, "containerd.log");
        node.wait_ready(peers);
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
        let log = std::fs::File::create(self.dir.join(log)).expect("log");
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        self.children.push(child);
    }

    /// Waits (at most 60 s) for containerd to answer and each peer's socket to appear.
    fn wait_ready(&self, peers: &[Peer]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let socks: Vec<PathBuf> = peers
            .iter()
            .map(|p| self.dir.join(format!("{}.sock", p.snapshotter())))
            .collect();
        while Instant::now() < deadline {
            let up = socks.iter().all(|s| s.exists())
                && self
                    .ctr()
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
            "containerd or a peer snapshotter did not start in 60 s: see {}",
            self.dir.display()
        );
    }

    fn ctr(&self) -> Command {
        let mut c = self.command("ctr");
        c.arg("-a").arg(self.sock());
        c
    }

    fn ctr_remote(&self) -> Command {
        let mut c = self.command("ctr-remote");
        c.arg("-a").arg(self.sock());
        c
    }

    /// The lazy pull and the run of `code` in a container, as the peers' docs give them.
    pub fn cold_start(&self, peer: Peer, image: &str, code: &str) {
        let mut pull = self.ctr_remote();
        pull.args(["image", "rpull", "--plain-http"]);
        if peer == Peer::Soci {
            pull.args(["--snapshotter", "soci", "--use-containerd-labels"]);
        }
        sh(pull.arg(image).stdout(Stdio::null()));
        sh(self
            .ctr()
            .args(["run", "--rm", "--snapshotter", peer.snapshotter()])
            .arg(image)
            // A name of its own each time: a killed run leaves runc state behind.
            .arg(format!("bench-{}", std::process::id() ^ rand_suffix()))
            .args(["python3", "-c", code])
            .stdout(Stdio::null()));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // containerd last: the snapshotters unmount first.
        for c in self.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Mounts the snapshotters or containerd left behind.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let d = self.dir.to_string_lossy().into_owned();
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&d))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes each present peer's image from `REG/bench/py:gzip` with the peer's own tool and
/// pushes it as `REG/bench/py:<estargz|soci>` (unshaped registry). Returns the peers whose
/// image was made; a failure is printed and drops that peer.
pub fn prepare(peers: &Peers, work: &Path, registry: &str) -> Vec<Peer> {
    let node = Node::start(&peers.bin, Path::new("/run/sbp"), registry, &peers.present);
    let src = format!("{registry}/bench/py:gzip");
    let mut ready = Vec::new();
    for &peer in &peers.present {
        let dst = format!("{registry}/bench/py:{}", peer.tag());
        let made = match peer {
            Peer::Stargz => make_estargz(&node, &src, &dst),
            Peer::Soci => make_soci(peers, work, &src, &dst),
        };
        match made {
            Ok(()) => ready.push(peer),
            Err(e) => println!("{}: image not made, left out: {e}", peer.scenario()),
        }
    }
    ready
}

fn run(c: &mut Command) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{c:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn make_estargz(node: &Node, src: &str, dst: &str) -> Result<(), String> {
    run(node
        .ctr_remote()
        .args(["image", "pull", "--plain-http", src]))?;
    run(node
        .ctr_remote()
        .args(["image", "convert", "--estargz", "--oci", src, dst]))?;
    run(node
        .ctr_remote()
        .args(["image", "push", "--plain-http", dst]))
}

fn make_soci(peers: &Peers, work: &Path, src: &str, dst: &str) -> Result<(), String> {
    let dir = work.join("soci-src");
    let out = work.join("soci-out");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&out);
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{src}"))
        .arg(format!("oci:{}:latest", dir.display())))?;
    run(Command::new(peers.bin.join("soci"))
        .args(["convert", "--standalone", "--format", "oci-dir"])
        .arg(&dir)
        .arg(&out))?;
    run(Command::new("skopeo")
        .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}", out.display()))
        .arg(format!("docker://{dst}")))
}

/// One cold start of `peer`: a fresh node (containerd and snapshotters with empty roots,
/// started before the clock), caches dropped, then `f` times pull + run.
pub fn fresh_node(peers: &Peers, registry: &str, peer: Peer) -> Node {
    let node = Node::start(&peers.bin, Path::new("/run/sbn"), registry, &[peer]);
    drop_caches();
    node
}

/// A number that differs between runs of one process (for container names).
fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}
