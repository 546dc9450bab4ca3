//! Inside the new namespaces: the helper forks the container's PID 1, forwards signals to it and
//! reports its exit; PID 1 prepares the root filesystem, pivots into it, drops to the user and
//! execs the command.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Pid, Uid, chdir, execve, pivot_root, setgid, setgroups, sethostname, setuid,
};

use crate::user::resolve;
use crate::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_RUNTIME_ERROR, Network, Spec, sys};

/// A failure inside the container setup, with the exit code docker would give it.
#[derive(Debug)]
struct Fail {
    code: i32,
    msg: String,
}

fn fail(msg: impl Into<String>) -> Fail {
    Fail {
        code: EXIT_RUNTIME_ERROR,
        msg: msg.into(),
    }
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> Result<T, Fail> {
    r.map_err(|e| fail(format!("{}: {e}", what())))
}

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
    // Keep the console socket (descriptor 3) when there is a terminal to hand over.
    sys::close_from(if spec.tty { 4 } else { 3 });
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
            let f = match container_main(&spec) {
                Ok(never) => match never {},
                Err(f) => f,
            };
            eprintln_safe(&format!("strata: {}", f.msg));
            std::process::exit(f.code);
        }
        Ok(ForkResult::Parent { child }) => {
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

/// Resolves `path` inside `root` as if `root` were `/`: symlinks (absolute or relative) and
/// `..` never lead outside it. Missing components are created as directories when `create`.
pub fn secure_join(root: &Path, path: &str, create: bool) -> std::io::Result<PathBuf> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .rev()
        .map(str::to_string)
        .collect();
    let mut parts: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            parts.pop();
            continue;
        }
        let candidate = parts
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(std::io::Error::other(format!(
                        "too many symlinks in {path}"
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    parts.clear();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(n) => pending.push(n.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => parts.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&candidate)?;
                parts.push(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => parts.push(c),
            Err(e) => return Err(e),
        }
    }
    Ok(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn mount_at(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Fail> {
    ctx(mount(src, target, fstype, flags, data), || {
        format!(
            "mounting {} on {}",
            src.or(fstype).unwrap_or("?"),
            target.display()
        )
    })
}

/// A file to bind something onto (created empty if missing), resolved inside `root`.
fn file_target(root: &Path, path: &str) -> Result<PathBuf, Fail> {
    let parent = Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = ctx(secure_join(root, &parent, true), || {
        format!("creating {parent} in the container")
    })?;
    let name = Path::new(path)
        .file_name()
        .ok_or_else(|| fail(format!("bad path {path}")))?;
    let target =
        secure_join(&dir, &name.to_string_lossy(), false).map_err(|e| fail(e.to_string()))?;
    let target = if target.starts_with(root) {
        target
    } else {
        dir.join(name)
    };
    if std::fs::symlink_metadata(&target).is_err() {
        ctx(std::fs::write(&target, b""), || {
            format!("creating {}", target.display())
        })?;
    }
    Ok(target)
}

fn setup_dev(root: &Path) -> Result<(), Fail> {
    let dev = ctx(secure_join(root, "dev", true), || "creating /dev".into())?;
    mount_at(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        ctx(std::fs::write(&target, b""), || {
            format!("creating /dev/{name}")
        })?;
        mount_at(
            Some(&format!("/dev/{name}")),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    let pts = dev.join("pts");
    ctx(std::fs::create_dir(&pts), || "creating /dev/pts".into())?;
    mount_at(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    ctx(std::fs::create_dir(&shm), || "creating /dev/shm".into())?;
    mount_at(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(std::os::unix::fs::symlink(to, dev.join(link)), || {
            format!("creating /dev/{link}")
        })?;
    }
    Ok(())
}

fn setup_rootfs(spec: &Spec) -> Result<(), Fail> {
    let root = &spec.rootfs;
    mount_at(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_at(
        Some(&root.to_string_lossy()),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let proc_dir = ctx(secure_join(root, "proc", true), || "creating /proc".into())?;
    mount_at(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    setup_dev(root)?;
    let sys_dir = ctx(secure_join(root, "sys", true), || "creating /sys".into())?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if mount(Some("sysfs"), &sys_dir, Some("sysfs"), ro, None::<&str>).is_err() {
        mount_at(
            Some("/sys"),
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mount_at(
            None,
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro,
            None,
        )?;
    }
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        spec.hostname
    );
    let resolv = match spec.network {
        Network::Host => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        Network::None => String::new(),
    };
    for (name, content) in [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", spec.hostname)),
    ] {
        let host_file = spec.state_dir.join(name);
        ctx(std::fs::write(&host_file, content), || {
            format!("writing {}", host_file.display())
        })?;
        let target = file_target(root, &format!("etc/{name}"))?;
        mount_at(
            Some(&host_file.to_string_lossy()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for b in &spec.binds {
        let is_dir = std::fs::metadata(&b.source)
            .map(|m| m.is_dir())
            .map_err(|e| fail(format!("bind source {}: {e}", b.source.display())))?;
        let target = if is_dir {
            ctx(secure_join(root, &b.target, true), || {
                format!("creating {} in the container", b.target)
            })?
        } else {
            file_target(root, &b.target)?
        };
        mount_at(
            Some(&b.source.to_string_lossy()),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        if b.readonly {
            mount_at(
                None,
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )?;
        }
    }
    if spec.network == Network::None {
        ctx(sys::loopback_up(), || "bringing up loopback".into())?;
    }
    ctx(sethostname(&spec.hostname), || {
        "setting the hostname".into()
    })?;
    ctx(chdir(root.as_path()), || {
        format!("entering {}", root.display())
    })?;
    ctx(pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detaching the old root".into()
    })?;
    ctx(chdir("/"), || "entering /".into())
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

fn container_main(spec: &Spec) -> Result<std::convert::Infallible, Fail> {
    let user = resolve(&spec.rootfs, &spec.user).map_err(|e| fail(e.to_string()))?;
    setup_rootfs(spec)?;
    if spec.tty {
        open_console()?;
    }
    let cwd = ctx(secure_join(Path::new("/"), &spec.cwd, true), || {
        format!("creating working directory {}", spec.cwd)
    })?;
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
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    ctx(setgroups(&groups), || "setgroups".into())?;
    ctx(setgid(Gid::from_raw(user.gid)), || {
        format!("setgid {}", user.gid)
    })?;
    ctx(setuid(Uid::from_raw(user.uid)), || {
        format!("setuid {}", user.uid)
    })?;
    let Some(arg0) = spec.args.first() else {
        return Err(fail("no command specified"));
    };
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/bin:/bin")
        .to_string();
    let program = if arg0.contains('/') {
        PathBuf::from(arg0)
    } else {
        path_var
            .split(':')
            .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(arg0))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| Fail {
                code: EXIT_NOT_FOUND,
                msg: format!("exec: \"{arg0}\": executable file not found in $PATH"),
            })?
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| fail(format!("NUL byte in {s:?}")));
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let prog = cstr(&program.to_string_lossy())?;
    let err = execve(&prog, &argv, &envp).unwrap_err();
    let code = match err {
        nix::errno::Errno::ENOENT => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXECUTE,
    };
    Err(Fail {
        code,
        msg: format!(
            "exec: \"{}\": {}",
            program.display(),
            err.desc().to_lowercase()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            secure_join(root, "/abs/passwd", false).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, "rel/passwd", false).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(secure_join(root, "../../x", false).unwrap(), root.join("x"));
        assert!(secure_join(root, "loop/x", false).is_err());
        let made = secure_join(root, "/abs/new/dir", true).unwrap();
        assert_eq!(made, root.join("etc/new/dir"));
        assert!(made.is_dir());
    }
}
