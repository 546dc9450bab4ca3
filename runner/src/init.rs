//! Inside the new namespaces: the helper forks the container's PID 1, forwards signals to it and
//! reports its exit; PID 1 prepares the root filesystem, pivots into it, drops to the user and
//! execs the command.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, chdir, execve, setgid, setgroups, setuid};

use crate::kernel::{Fail, ctx, fail};
use crate::user::resolve;
use crate::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_RUNTIME_ERROR, Spec, sys};

const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Entry point of the helper (`strata <init-arg> SPEC`), already in the new namespaces.
/// Returns the process exit code.
pub fn init_main(spec_path: &Path) -> i32 {
    let spec: Spec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln_safe(&format!(
                "strata: container spec {}: {e}",
                spec_path.display()
            ));
            return EXIT_RUNTIME_ERROR;
        }
    };
    // Keep the console socket (descriptor 3) when there is a terminal to hand over, and the
    // exec-sync pipe (descriptor 4), closed by PID 1's exec.
    if !spec.tty {
        sys::close_raw(sys::CONSOLE_FD);
    }
    sys::close_from(5);
    sys::set_cloexec(sys::EXEC_SYNC_FD);
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    if let Err(e) = set.thread_block() {
        eprintln_safe(&format!("strata: blocking signals: {e}"));
        return EXIT_RUNTIME_ERROR;
    }
    // SAFETY: this helper is a fresh exec of the binary that has started no threads.
    match unsafe { sys::fork() } {
        Ok(ForkResult::Child) => {
            let _ = set.thread_unblock();
            // If the helper dies (even by SIGKILL), PID 1 — and with it the whole pid
            // namespace — dies too: nothing keeps running unsupervised.
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            // Into the container's cgroups before anything else, so all it starts is counted.
            let joined = spec
                .cgroups
                .join_self()
                .map_err(|e| fail(format!("joining the container's cgroup: {e}")));
            let f = match joined.and_then(|()| container_main(&spec)) {
                Ok(never) => match never {},
                Err(f) => f,
            };
            eprintln_safe(&format!("strata: {}", f.msg));
            if let Some(hint) = &spec.failure_hint {
                eprintln_safe(&format!("\n{hint}"));
            }
            sys::report_start_failure(f.code);
            std::process::exit(f.code);
        }
        Ok(ForkResult::Parent { child }) => {
            // Only PID 1 holds the exec-sync pipe now: strata sees it close at PID 1's exec.
            sys::close_raw(sys::EXEC_SYNC_FD);
            if spec.tty {
                // Only PID 1 holds the console socket now: if it dies early, strata sees EOF.
                let _ = nix::unistd::close(sys::CONSOLE_FD);
            }
            supervise(child, &set)
        }
        Err(e) => {
            eprintln_safe(&format!("strata: fork: {e}"));
            EXIT_RUNTIME_ERROR
        }
    }
}

fn eprintln_safe(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// Waits for PID 1, forwarding signals; returns its exit code.
fn supervise(child: Pid, set: &SigSet) -> i32 {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(_) => return EXIT_RUNTIME_ERROR,
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => continue,
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(_) => continue,
        }
    }
}

/// Opens a terminal from the container's own devpts, makes it PID 1's controlling terminal and
/// standard streams, and sends the master side to strata over the console socket.
fn open_console() -> Result<(), Fail> {
    use nix::fcntl::OFlag;
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::os::fd::AsRawFd;
    let master = ctx(
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC),
        || "opening /dev/ptmx".into(),
    )?;
    ctx(nix::pty::grantpt(&master), || "grantpt".into())?;
    ctx(nix::pty::unlockpt(&master), || "unlockpt".into())?;
    let name = ctx(nix::pty::ptsname_r(&master), || "ptsname".into())?;
    let slave = ctx(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&name),
        || format!("opening {name}"),
    )?;
    ctx(nix::unistd::setsid(), || "setsid".into())?;
    for fd in 0..3 {
        ctx(sys::dup_onto(&slave, fd), || format!("dup2 to {fd}"))?;
    }
    drop(slave);
    ctx(sys::set_controlling_tty(0), || {
        "making the terminal the controlling terminal".into()
    })?;
    let fds = [master.as_raw_fd()];
    ctx(
        sendmsg::<()>(
            sys::CONSOLE_FD,
            &[std::io::IoSlice::new(b"m")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        ),
        || "sending the terminal to strata".into(),
    )?;
    let _ = nix::unistd::close(sys::CONSOLE_FD);
    Ok(())
}

/// Switches to the container's user and confines the process: the bounding set first (while
/// still privileged), then the user (keeping the permitted set across setuid), then the
/// capability sets; `no_new_privs` and the seccomp filter last. Without `no_new_privs` loading a
/// filter needs CAP_SYS_ADMIN, so then the filter is loaded before the capabilities are dropped,
/// as runc does (the default profile allows the setuid, capset and prctl calls that follow).
pub(crate) fn confine(spec: &Spec, user: &crate::user::User) -> Result<(), Fail> {
    use crate::security::{SeccompMode, limit_bounding, set_capabilities};
    // Rust's runtime ignores SIGPIPE, the caller may ignore others, and an ignored signal stays
    // ignored across exec: the container's program starts with every signal at its default,
    // as docker's do (`yes | head -1` ends quietly).
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler; this process is single-threaded. Numbers the
            // kernel refuses (reserved by the C library) are left as they are.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let sec = &spec.security;
    let available = ctx(caps::read(None, caps::CapSet::Bounding), || {
        "reading the bounding set".into()
    })?;
    let keep = sec.capabilities(&available);
    let profile = match (&sec.seccomp, sec.privileged) {
        (SeccompMode::Unconfined, _) | (_, true) => None,
        (SeccompMode::Default, false) => Some(crate::seccomp::default_profile()),
        (SeccompMode::Profile { path, json }, false) => {
            Some(ctx(crate::seccomp::Profile::parse(json), || {
                format!("seccomp profile {path}")
            })?)
        }
    };
    let target = crate::seccomp::Target::native(keep.clone());
    let load =
        |p: &crate::seccomp::Profile| ctx(crate::seccomp::load(p, &target), || "seccomp".into());
    if !sec.no_new_privileges
        && let Some(p) = &profile
    {
        load(p)?;
    }
    ctx(limit_bounding(&keep), || "dropping capabilities".into())?;
    ctx(nix::sys::prctl::set_keepcaps(true), || "keepcaps".into())?;
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    ctx(setgroups(&groups), || "setgroups".into())?;
    ctx(setgid(Gid::from_raw(user.gid)), || {
        format!("setgid {}", user.gid)
    })?;
    ctx(setuid(Uid::from_raw(user.uid)), || {
        format!("setuid {}", user.uid)
    })?;
    ctx(nix::sys::prctl::set_keepcaps(false), || "keepcaps".into())?;
    ctx(set_capabilities(&keep), || "setting capabilities".into())?;
    if sec.no_new_privileges {
        ctx(nix::sys::prctl::set_no_new_privs(), || {
            "setting no_new_privs".into()
        })?;
        if let Some(p) = &profile {
            load(p)?;
        }
    }
    Ok(())
}

fn container_main(spec: &Spec) -> Result<std::convert::Infallible, Fail> {
    let user = resolve(&spec.rootfs, &spec.user).map_err(|e| fail(e.to_string()))?;
    crate::rootfs::setup_rootfs(&mut crate::kernel::Linux, spec)?;
    if spec.tty {
        open_console()?;
    }
    let cwd = ctx(
        crate::resolve_in(Path::new("/"), Path::new(&spec.cwd), true),
        || format!("creating working directory {}", spec.cwd),
    )?;
    ctx(chdir(&cwd), || {
        format!("entering working directory {}", spec.cwd)
    })?;
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    confine(spec, &user)?;
    let Some(arg0) = spec.args.first() else {
        return Err(fail("no command specified"));
    };
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/bin:/bin")
        .to_string();
    let program = look_path(arg0, &path_var)?;
    let cstr = |s: &str| CString::new(s).map_err(|_| fail(format!("NUL byte in {s:?}")));
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let prog = cstr(&program.to_string_lossy())?;
    let err = execve(&prog, &argv, &envp).unwrap_err();
    Err(Fail {
        code: exit_code(err),
        msg: format!(
            "exec: \"{}\": {}",
            program.display(),
            err.desc().to_lowercase()
        ),
    })
}

/// The program `arg0` names, found as runc finds it (Go's `exec.LookPath` in the container,
/// as its user), failing with runc's words: `exec: "/x": stat /x: no such file or directory`,
/// `exec: "/etc": is a directory: permission denied`, `exec: "x": executable file not found
/// in $PATH`.
fn look_path(arg0: &str, path_var: &str) -> Result<PathBuf, Fail> {
    if arg0.contains('/') {
        return executable(Path::new(arg0))
            .map(|()| PathBuf::from(arg0))
            .map_err(|(errno, why)| Fail {
                code: exit_code(errno),
                msg: format!("exec: \"{arg0}\": {why}"),
            });
    }
    path_var
        .split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(arg0))
        .find(|p| executable(p).is_ok())
        .ok_or_else(|| Fail {
            code: EXIT_NOT_FOUND,
            msg: format!("exec: \"{arg0}\": executable file not found in $PATH"),
        })
}

/// Go's `findExecutable`: `p` exists, is not a directory, and the user may execute it.
fn executable(p: &Path) -> Result<(), (nix::errno::Errno, String)> {
    use nix::errno::Errno;
    let text = |e: Errno| e.desc().to_lowercase();
    let meta =
        nix::sys::stat::stat(p).map_err(|e| (e, format!("stat {}: {}", p.display(), text(e))))?;
    if meta.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR {
        return Err((Errno::EISDIR, "is a directory: permission denied".into()));
    }
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).map_err(|e| (e, text(e)))
}

/// The exit code docker gives a container that could not start for `errno`: 127 when the
/// program (or a directory on its path) is missing, 126 when it may not be executed, 125
/// otherwise (moby's `translateContainerdStartErr`).
fn exit_code(errno: nix::errno::Errno) -> i32 {
    use nix::errno::Errno;
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => EXIT_NOT_FOUND,
        Errno::EACCES | Errno::EISDIR => EXIT_CANNOT_EXECUTE,
        _ => EXIT_RUNTIME_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn programs_are_looked_up_with_runcs_words_and_dockers_codes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let prog = d.join("prog");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = d.join("data");
        std::fs::write(&data, "x").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path_var = d.display().to_string();
        let found = look_path("prog", &path_var).map_err(|f| f.msg).unwrap();
        assert_eq!(found, prog);
        let failure = |arg: &str| {
            let f = look_path(arg, &path_var).unwrap_err();
            (f.code, f.msg)
        };
        let missing = d.join("nope").display().to_string();
        assert_eq!(
            failure(&missing),
            (
                EXIT_NOT_FOUND,
                format!("exec: \"{missing}\": stat {missing}: no such file or directory")
            )
        );
        let dir_arg = d.display().to_string();
        assert_eq!(
            failure(&dir_arg),
            (
                EXIT_CANNOT_EXECUTE,
                format!("exec: \"{dir_arg}\": is a directory: permission denied")
            )
        );
        assert_eq!(
            failure("data"),
            (
                EXIT_NOT_FOUND,
                "exec: \"data\": executable file not found in $PATH".to_string()
            )
        );
        // Root may execute a file without any x bit only through its bits: access(2) refuses.
        let data_arg = data.display().to_string();
        assert_eq!(
            failure(&data_arg),
            (
                EXIT_CANNOT_EXECUTE,
                format!("exec: \"{data_arg}\": permission denied")
            )
        );
    }
}
