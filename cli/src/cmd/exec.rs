//! `strata exec`: a process in a running container. strata (single-threaded here) forks; the
//! child joins the container's ipc, uts, net, pid and mount namespaces (the mount namespace
//! puts it at the container's root) and forks again, so the command is inside the pid
//! namespace; the grandchild takes the user, working directory and environment and execs.
//! With `-t` it opens a terminal from the container's own devpts and sends the master side
//! back, as the container's PID 1 does for `run -t`.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;

use anyhow::Context as _;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use strata_runner::state::{Containers, State};

use crate::global::GlobalArgs;

/// Arguments of `exec`.
#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Set environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// user[:group] (names from the container's /etc/passwd and /etc/group, or numbers).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container (default: the container's).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Keep standard input attached.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Container (name or id).
    pub container: String,
    /// Command and arguments.
    #[arg(required = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Everything the forked children need, prepared before the fork (no allocation after it
/// beyond what exec needs).
struct Prepared {
    namespaces: Vec<(OwnedFd, CloneFlags)>,
    /// The user, and the container's spec whose security settings `exec` applies as `run` did.
    user: strata_runner::user::User,
    spec: strata_runner::Spec,
    cwd: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Candidate paths of the program, from the container's PATH.
    candidates: Vec<CString>,
    /// The container's cgroups (limits and device rules), joined before the namespaces.
    cgroups: strata_runner::cgroup::Cgroups,
}

pub fn run_exec(a: ExecArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    if crate::cmd::run_checks::tty_missing(a.interactive, a.tty) {
        eprintln!("the input device is not a TTY");
        return Ok(1);
    }
    let cs = Containers::new(&g.root());
    let c = cs
        .find(&a.container)
        .ok_or_else(|| crate::cmd::daemon(format!("No such container: {}", a.container)))?;
    let c = crate::cmd::ps::effective(&c);
    let helper = match (c.state, c.pid) {
        (State::Running, Some(p)) => i32::try_from(p).unwrap_or(i32::MAX),
        _ => {
            return Err(crate::cmd::daemon(format!(
                "container {} is not running",
                c.id
            )));
        }
    };
    let init = ready_init(helper).with_context(|| format!("container {} has no process", c.id))?;
    let spec: strata_runner::Spec = serde_json::from_slice(
        &std::fs::read(cs.dir_of(&c.id).join("spec.json")).context("reading the container spec")?,
    )
    .context("parsing the container spec")?;
    let rootfs = cs.dir_of(&c.id).join("rootfs");
    let p = prepare(&a, &spec, &rootfs, init)?;
    let sock = if a.tty {
        Some(std::os::unix::net::UnixStream::pair()?)
    } else {
        None
    };
    // SAFETY: strata has started no thread in this command; the children only call setns,
    // fork, waitpid, setgroups/setgid/setuid, chdir, the terminal set-up and exec.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = child(&p, a.interactive, sock.as_ref().map(|(_, theirs)| theirs));
            // SAFETY: ending the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let relay = match &sock {
                Some((ours, _)) => Some(strata_runner::pty::receive_master(ours)?.relay()?),
                None => None,
            };
            let code = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some(r) = relay {
                r.finish();
            }
            Ok(code)
        }
    }
}

/// The container's PID 1 once it runs the container's program: `run -d` returns before PID 1
/// has set up the root and exec'd (it is strata until then), and joining its namespaces
/// earlier finds the host's root or a half-made one. Waits at most 10 s.
fn ready_init(helper: i32) -> Option<i32> {
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let helper_exe = exe(helper)?;
        if let Some(init) = init_of(helper)
            && exe(init).is_some_and(|e| e != helper_exe)
        {
            return Some(init);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The container's PID 1: the child of its helper.
fn init_of(helper: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let ppid: i32 = rest.split(' ').nth(1)?.parse().ok()?;
        (ppid == helper).then_some(pid)
    })
}

fn cstring(s: &str) -> anyhow::Result<CString> {
    CString::new(s).with_context(|| format!("{s:?} contains a NUL byte"))
}

fn prepare(
    a: &ExecArgs,
    spec: &strata_runner::Spec,
    rootfs: &std::path::Path,
    init: i32,
) -> anyhow::Result<Prepared> {
    let user_spec = a.user.clone().unwrap_or_else(|| spec.user.clone());
    crate::cmd::run_checks::check_user(&user_spec)?;
    let user = strata_runner::user::resolve(rootfs, &user_spec)?;
    let mut env = strata_runner::merge_env(&spec.env, &a.env);
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    let prog = &a.command[0];
    let candidates = if prog.contains('/') {
        vec![cstring(prog)?]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstring(&format!("{}/{prog}", d.trim_end_matches('/'))))
            .collect::<anyhow::Result<_>>()?
    };
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let f = std::fs::File::open(format!("/proc/{init}/ns/{name}"))
            .with_context(|| format!("opening the container's {name} namespace"))?;
        namespaces.push((OwnedFd::from(f), flag));
    }
    let cwd = a.workdir.clone().unwrap_or_else(|| spec.cwd.clone());
    Ok(Prepared {
        namespaces,
        user,
        cwd: cstring(if cwd.is_empty() { "/" } else { &cwd })?,
        argv: a
            .command
            .iter()
            .map(|s| cstring(s))
            .collect::<anyhow::Result<_>>()?,
        env: env
            .iter()
            .map(|s| cstring(s))
            .collect::<anyhow::Result<_>>()?,
        candidates,
        cgroups: spec.cgroups.clone(),
        spec: spec.clone(),
    })
}

/// The forked child: joins the namespaces, forks into the pid namespace, waits.
fn child(p: &Prepared, interactive: bool, console: Option<&std::os::unix::net::UnixStream>) -> i32 {
    // Into the container's cgroups first (their paths are the host's), as its PID 1 did.
    if let Err(e) = p.cgroups.join_self() {
        eprintln!("strata: joining the container's cgroups: {e}");
        return 126;
    }
    for (fd, flag) in &p.namespaces {
        if let Err(e) = setns(fd, *flag) {
            eprintln!("strata: joining the container's namespaces: {e}");
            return 126;
        }
    }
    // SAFETY: single-threaded child; the grandchild execs or exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => grandchild(p, interactive, console),
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return 125,
            }
        },
        Err(e) => {
            eprintln!("strata: fork: {e}");
            125
        }
    }
}

fn grandchild(
    p: &Prepared,
    interactive: bool,
    console: Option<&std::os::unix::net::UnixStream>,
) -> i32 {
    if let Some(sock) = console
        && let Err(e) = open_console(sock)
    {
        eprintln!("strata: opening a terminal in the container: {e}");
        return 126;
    }
    if console.is_none()
        && !interactive
        && let Ok(null) = std::fs::File::open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(null);
    }
    if let Err(e) = nix::unistd::chdir(p.cwd.as_c_str()) {
        eprintln!(
            "strata: entering working directory {}: {e}",
            p.cwd.to_string_lossy()
        );
        return 126;
    }
    // The user, capabilities, no_new_privs and seccomp filter of the container (docker's
    // exec gets its container's profile too).
    if let Err(e) = strata_runner::confine(&p.spec, &p.user) {
        eprintln!("strata: confining the process: {e}");
        return 126;
    }
    let mut denied = false;
    for path in &p.candidates {
        match nix::unistd::execve(path, &p.argv, &p.env) {
            Err(nix::errno::Errno::EACCES) => denied = true,
            Err(_) => continue,
            Ok(_) => unreachable!("execve returned"),
        }
    }
    let prog = p.argv[0].to_string_lossy();
    if denied {
        eprintln!("strata: exec: \"{prog}\": permission denied");
        126
    } else {
        eprintln!("strata: exec: \"{prog}\": executable file not found in $PATH");
        127
    }
}

/// A terminal from the container's devpts as the controlling terminal and standard streams;
/// the master side goes to strata over `sock`.
fn open_console(sock: &std::os::unix::net::UnixStream) -> nix::Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        std::ffi::OsStr::new(&name).as_bytes(),
        OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY on the terminal just opened; 0 means do not steal it.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    nix::unistd::dup2_stdin(&slave)?;
    nix::unistd::dup2_stdout(&slave)?;
    nix::unistd::dup2_stderr(&slave)?;
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(b"m")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}
