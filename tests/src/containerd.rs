//! A containerd (Debian's 1.6) with its own root, state dir, sockets and configuration in a
//! temp dir, its CRI plugin using `strata snapshotter` as a proxy plugin; the snapshotter is
//! started and restarted by the test. Never the system's containerd or its sockets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Tools the containerd tests need (Debian's `containerd` and `runc`).
pub const TOOLS: [&str; 4] = [
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
];

/// Whether the containerd tools are installed; under CI a missing one fails the test.
pub fn require_containerd(test: &str) -> bool {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| !Path::new(t).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: needs {} (apt-get install containerd runc)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: a missing tool is a failure)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// Waits (bounded) until `path` accepts a unix connection; panics with `log`'s tail if not.
fn wait_socket(path: &Path, child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited ({st}):\n{}", tail(log));
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen within 60s:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log file.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A running `strata snapshotter`.
pub struct Snapshotter {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its log (appended to across restarts).
    pub log: PathBuf,
}

impl Snapshotter {
    /// Starts `strata --root ROOT --insecure-registry REG snapshotter --address SOCKET`.
    pub fn start(root: &Path, registry: &str, socket: &Path, log: &Path) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(crate::strata::bin())
            .arg("--root")
            .arg(root)
            .args([
                "--insecure-registry",
                registry,
                "--log-level",
                "info",
                "snapshotter",
                "--address",
            ])
            .arg(socket)
            .env(
                "STRATA_LAYER_STORE_IDLE_SECS",
                crate::strata::store_idle_secs(),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        wait_socket(socket, &mut child, log, "strata snapshotter");
        Self {
            child,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    /// Kills it (SIGKILL, as a crash or an upgrade in place would end it) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private containerd.
pub struct Containerd {
    child: Child,
    /// Its directory (config, root, state, sockets, log).
    pub dir: PathBuf,
    /// Its gRPC socket.
    pub socket: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

impl Containerd {
    /// Starts containerd in `dir` with the proxy snapshotter `strata` at `snapshotter`, its
    /// CRI plugin pulling with it (snapshot annotations on), `registry` over plain HTTP and
    /// `sandbox_image` as the pause image.
    pub fn start(dir: &Path, snapshotter: &Path, registry: &str, sandbox_image: &str) -> Self {
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[debug]
  level = "debug"
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[proxy_plugins.strata]
  type = "snapshot"
  address = "{s}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # A pod sandbox gets oom_score_adj -998, which needs CAP_SYS_RESOURCE (test machines may
  # lack it): keep every container's at least containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "strata"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
            s = snapshotter.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = dir.join("containerd.log");
        let out = std::fs::File::create(&log).unwrap();
        let socket = dir.join("c.sock");
        let mut child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        wait_socket(&socket, &mut child, &log, "containerd");
        Self {
            child,
            dir: dir.to_path_buf(),
            socket,
            log,
        }
    }

    /// A `ctr` command on this containerd, in namespace `ns`.
    pub fn ctr(&self, ns: &str) -> Command {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", ns]);
        c
    }

    /// `ctr -n NS ARGS`; a `run` keeps runc's state in this containerd's directory.
    pub fn ctr_args(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = self.ctr(ns);
        match args.split_first() {
            Some((&"run", rest)) => {
                c.arg("run")
                    .arg("--runc-root")
                    .arg(self.dir.join("runc"))
                    .args(rest);
            }
            _ => {
                c.args(args);
            }
        }
        c
    }

    /// Runs `ctr -n NS ARGS`; panics with its output and containerd's log on failure.
    pub fn ctr_ok(&self, ns: &str, args: &[&str]) -> Output {
        let out = self.ctr_args(ns, args).output().unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log)
        );
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The shims it started outlive it: end those serving this containerd, by pid.
        let shims = shims_of(&self.socket);
        let _ = nix_kill(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in shims {
            let _ = nix_kill(pid, libc::SIGKILL);
        }
        crate::podman::unmount_under(&self.dir);
    }
}

fn nix_kill(pid: u32, sig: i32) -> i32 {
    let Ok(pid) = i32::try_from(pid) else {
        return -1;
    };
    // SAFETY: kill(2) with a pid this test started and a valid signal number.
    unsafe { libc::kill(pid, sig) }
}

/// The pids of the runc shims whose command line names `socket` (containerd passes its
/// address to each shim it starts).
fn shims_of(socket: &Path) -> Vec<u32> {
    let needle = socket.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.contains("containerd-shim") && cmd.contains(&needle)
        })
        .collect()
}
