//! strata's container runner: a process in new mount, pid, uts and ipc namespaces (and a new
//! network namespace with `--network none`), `pivot_root` into a prepared root filesystem, with
//! `/proc`, a minimal `/dev`, a read-only `/sys`, `/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname` and bind mounts, then exec of the command as the requested user — confined
//! as docker's default profile confines it: cgroups with limits and the device list
//! ([`cgroup`], [`devices`] on cgroup v2), masked and read-only /proc paths, the capability sets and `no_new_privs`
//! ([`security`]) and the seccomp filter ([`seccomp`]).
//!
//! The calling process (multi-threaded: it serves the FUSE filesystem) never forks itself: it
//! starts a fresh copy of the program (`<exe> <init-arg> SPEC`) in new namespaces; that
//! single-threaded helper forks the container's PID 1, forwards signals to it and exits with
//! its status. Depends on none of strata's other crates.

pub mod cgroup;
pub mod devices;
pub mod freeze;
mod image_spec;
mod init;
pub mod initlayer;
pub mod inroot;
mod kernel;
mod masks;
pub mod pty;
pub mod rootfs;
pub mod seccomp;
pub mod security;
mod sys;

pub use sys::{set_window_size, window_size};
pub mod user;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

pub use init::init_main;

/// Confines the calling process as the container's PID 1 was: `user`'s ids and groups, the
/// capability sets, `no_new_privs` and the seccomp filter of `spec.security` (docker's default
/// profile unless the spec says otherwise), in the order `init` uses. For `exec`, after the
/// caller joined the container's cgroups and namespaces and before it execs.
///
/// # Errors
/// The step that failed, as one line (`setuid 1000: EPERM`, `seccomp: ...`).
pub fn confine(spec: &Spec, user: &user::User) -> Result<(), String> {
    init::confine(spec, user).map_err(|f| f.into_message())
}
pub use image_spec::{Process, container_spec, image_command};
pub use inroot::{InRoot, InRootError, resolve_in};
pub use masks::{MASKED_PATHS, READONLY_PATHS};

pub mod state;
pub mod stateroot;

/// Exit status docker uses when the runtime itself fails.
pub const EXIT_RUNTIME_ERROR: i32 = 125;
/// Exit status when the command cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit status when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Errors starting a container.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec could not be written or read.
    #[error("container spec {path}")]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The helper process could not be started or waited for.
    #[error("starting the container process: {0}")]
    Spawn(std::io::Error),
    /// The container's cgroups could not be created.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

/// Network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace.
    #[default]
    Host,
    /// A new, empty network namespace (loopback only, down).
    None,
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Everything the helper needs to start the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// The prepared root filesystem (a mount point).
    pub rootfs: PathBuf,
    /// Command and arguments (already combined from entrypoint and cmd).
    pub args: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing).
    pub cwd: String,
    /// `user[:group]` as given, resolved inside the image's /etc/passwd and /etc/group.
    pub user: String,
    /// Host name.
    pub hostname: String,
    /// Network mode.
    pub network: Network,
    /// Bind mounts.
    pub binds: Vec<Bind>,
    /// Directory for the container's generated files (hosts, resolv.conf, hostname).
    pub state_dir: PathBuf,
    /// Standard input/output/error are a terminal: PID 1 starts a session with it as the
    /// controlling terminal.
    #[serde(default)]
    pub tty: bool,
    /// Capabilities, seccomp, `no_new_privs`, privileged mode.
    #[serde(default)]
    pub security: security::Security,
    /// Memory, CPU and pids limits.
    #[serde(default)]
    pub resources: cgroup::Resources,
    /// The cgroups [`start_with`] created for this run (PID 1 joins them).
    #[serde(default)]
    pub cgroups: cgroup::Cgroups,
    /// A line PID 1 prints after its error when the container cannot start (docker's
    /// `Run 'docker run --help' for more information`, with a blank line before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_hint: Option<String>,
}

/// A started container: the helper process that supervises its PID 1.
#[derive(Debug)]
pub struct Started {
    child: std::process::Child,
    cgroups: cgroup::Cgroups,
    /// The reading end of the exec-sync pipe (see [`Started::start_failure`]).
    exec_sync: Option<std::fs::File>,
}

impl Started {
    /// Process id of the helper (signals sent to it reach the container's PID 1).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `limit`) until PID 1 has exec'd the command or failed to: `Some(code)`
    /// when the container could not start (PID 1 said so, with the exit code docker gives
    /// such a container, 125/126/127), `None` once the command runs (or when PID 1 has not
    /// got there within `limit`: the pipe is kept, so a later failure still finds a reader).
    pub fn start_failure(&mut self, limit: std::time::Duration) -> Option<i32> {
        use std::io::Read as _;
        use std::os::fd::AsFd as _;
        let pipe = self.exec_sync.as_mut()?;
        let timeout =
            nix::poll::PollTimeout::try_from(limit).unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [nix::poll::PollFd::new(
            pipe.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0) {
            return None;
        }
        let mut code = [0u8; 4];
        let read = pipe.read_exact(&mut code);
        self.exec_sync = None;
        read.ok().map(|()| i32::from_le_bytes(code))
    }

    /// Waits for the container; returns its exit status (128+N for signal N; 125/126/127 when
    /// it could not start, as docker reports them).
    pub fn wait(mut self) -> Result<i32, RunError> {
        let status = self.child.wait().map_err(RunError::Spawn);
        // The helper has exited, so PID 1 and with it the whole pid namespace are gone.
        self.cgroups.remove();
        Ok(sys::exit_code(status?))
    }
}

/// Where the container's standard streams go.
#[derive(Debug, Default)]
pub enum Stdio {
    /// Inherit all three.
    #[default]
    Inherit,
    /// Like [`Stdio::Inherit`] but with standard input from /dev/null.
    NoStdin,
    /// A terminal allocated inside the container: its PID 1 opens one from the container's
    /// own devpts and sends the master side over this socket (see [`pty::receive_master`]).
    Console(std::os::unix::net::UnixStream),
    /// Standard input from /dev/null; standard output and error both appended to this file.
    Log(std::fs::File),
}

/// Starts the container described by `spec` by running `exe init_arg SPEC_PATH` in new
/// namespaces.
pub fn start(spec: &Spec, exe: &Path, init_arg: &str) -> Result<Started, RunError> {
    start_with(spec, exe, init_arg, Stdio::Inherit)
}

/// [`start`] with the container's standard streams set by `stdio`.
pub fn start_with(
    spec: &Spec,
    exe: &Path,
    init_arg: &str,
    stdio: Stdio,
) -> Result<Started, RunError> {
    let path = spec.state_dir.join("spec.json");
    let id = spec
        .state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let host = cgroup::Host::current();
    // A cgroup left by a strata that died goes first.
    cgroup::remove_for(&host, &id);
    let mut spec = spec.clone();
    spec.cgroups = cgroup::create(&host, &id, &spec.resources, !spec.security.privileged)?;
    let cgroups = spec.cgroups.clone();
    let started = spawn_helper(&spec, &path, exe, init_arg, stdio);
    if started.is_err() {
        cgroups.remove();
    }
    let (child, exec_sync) = started?;
    Ok(Started {
        child,
        cgroups,
        exec_sync: Some(exec_sync),
    })
}

fn spawn_helper(
    spec: &Spec,
    path: &Path,
    exe: &Path,
    init_arg: &str,
    stdio: Stdio,
) -> Result<(std::process::Child, std::fs::File), RunError> {
    let spec_error = |source| RunError::Spec {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(spec).map_err(|e| spec_error(e.into()))?;
    stateroot::write_private(path, &bytes).map_err(spec_error)?;
    let mut cmd = Command::new(exe);
    cmd.arg(init_arg).arg(path);
    // Our copy of the container's end of the console socket, closed once the helper has it.
    let mut console = None;
    match stdio {
        Stdio::Inherit => {}
        Stdio::NoStdin => {
            cmd.stdin(std::process::Stdio::null());
        }
        Stdio::Log(file) => {
            let err = file.try_clone().map_err(RunError::Spawn)?;
            cmd.stdin(std::process::Stdio::null())
                .stdout(file)
                .stderr(err);
        }
        Stdio::Console(sock) => {
            cmd.stdin(std::process::Stdio::null());
            sys::pass_as_fd3(&mut cmd, std::os::fd::AsRawFd::as_raw_fd(&sock));
            console = Some(sock);
        }
    }
    // The exec-sync pipe: its writing end becomes the helper's descriptor 4; ours closes
    // after the spawn, so the pipe closes when PID 1 execs.
    let (sync_read, sync_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Spawn(e.into()))?;
    sys::pass_as(
        &mut cmd,
        std::os::fd::AsRawFd::as_raw_fd(&sync_write),
        sys::EXEC_SYNC_FD,
    );
    sys::unshare_before_exec(&mut cmd, spec.network == Network::None);
    // Its own process group: a terminal Ctrl-C reaches strata only, which forwards it once.
    cmd.process_group(0);
    let child = cmd.spawn().map_err(RunError::Spawn)?;
    drop(console);
    drop(sync_write);
    Ok((child, std::fs::File::from(sync_read)))
}

/// Combines image config and command line like docker: `--entrypoint` replaces the image's
/// entrypoint and then drops the image's cmd; arguments after the image replace the cmd.
pub fn command_line(
    image_entrypoint: &[String],
    image_cmd: &[String],
    entrypoint: Option<&str>,
    args: &[String],
) -> Vec<String> {
    let entry: Vec<String> = match entrypoint {
        Some("") => Vec::new(),
        Some(e) => vec![e.to_string()],
        None => image_entrypoint.to_vec(),
    };
    let cmd: Vec<String> = if !args.is_empty() {
        args.to_vec()
    } else if entrypoint.is_some() {
        Vec::new()
    } else {
        image_cmd.to_vec()
    };
    entry.into_iter().chain(cmd).collect()
}

/// Image environment overridden by `-e` entries (`KEY=VALUE`, or `KEY` to take the host's).
pub fn merge_env(image: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = image.to_vec();
    for o in overrides {
        let kv = if o.contains('=') {
            o.clone()
        } else {
            match std::env::var(o) {
                Ok(v) => format!("{o}={v}"),
                Err(_) => continue,
            }
        };
        let key = kv.split('=').next().unwrap_or("").to_string();
        out.retain(|e| e.split('=').next() != Some(key.as_str()));
        out.push(kv);
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_combine_like_docker() {
        let ep = v(&["/entry", "-x"]);
        let cmd = v(&["serve"]);
        assert_eq!(
            command_line(&ep, &cmd, None, &[]),
            v(&["/entry", "-x", "serve"])
        );
        assert_eq!(
            command_line(&ep, &cmd, None, &v(&["other"])),
            v(&["/entry", "-x", "other"])
        );
        assert_eq!(
            command_line(&ep, &cmd, Some("/bin/ls"), &[]),
            v(&["/bin/ls"])
        );
        assert_eq!(
            command_line(&ep, &cmd, Some("/bin/ls"), &v(&["-l"])),
            v(&["/bin/ls", "-l"])
        );
        assert_eq!(command_line(&[], &v(&["sh"]), None, &[]), v(&["sh"]));
        assert_eq!(
            command_line(&ep, &cmd, Some(""), &v(&["echo"])),
            v(&["echo"])
        );
    }

    #[test]
    fn env_overrides() {
        let env = merge_env(&v(&["PATH=/bin", "A=1"]), &v(&["A=2", "B=3"]));
        assert_eq!(env, v(&["PATH=/bin", "A=2", "B=3"]));
        assert!(merge_env(&[], &[])[0].starts_with("PATH="));
    }
}
