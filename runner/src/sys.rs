//! The few places that need `unsafe`: code that runs between fork and exec, fork itself, and an
//! ioctl to bring up loopback in a new network namespace.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

use nix::sched::CloneFlags;

/// Makes `cmd` start in new mount, uts, ipc and pid namespaces (and a new network namespace).
pub fn unshare_before_exec(cmd: &mut Command, new_net: bool) {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if new_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed; it makes two system calls (prctl, unshare) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The helper dies with the strata process that serves its filesystem.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            nix::sched::unshare(flags).map_err(std::io::Error::from)
        });
    }
}

/// Forks the calling process.
///
/// # Safety
/// The caller must be single-threaded (the container helper is: a fresh exec that started no
/// threads), so the child cannot inherit a lock held by another thread.
pub unsafe fn fork() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: guaranteed by this function's contract (single-threaded caller).
    unsafe { nix::unistd::fork() }
}

/// The exit code docker would report: the process's code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => crate::EXIT_RUNTIME_ERROR,
    }
}

/// Brings the loopback interface up (in a new network namespace it starts down).
pub fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2) call; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    let up = libc::c_short::try_from(libc::IFF_UP | libc::IFF_RUNNING)
        .expect("IFF_UP and IFF_RUNNING are low bits of the 16-bit flags");
    // SAFETY: fd is a valid socket and req a valid, initialized ifreq that outlives the calls;
    // SIOCGIFFLAGS/SIOCSIFFLAGS read and write only the ifr_flags member of the union.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= up;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd was returned by socket(2) above and is closed exactly once.
    unsafe { libc::close(fd) };
    if rc < 0 { Err(err) } else { Ok(()) }
}

/// Makes `fd` (a terminal) the controlling terminal of the calling session leader.
pub fn set_controlling_tty(fd: i32) -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); no memory is passed.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The window size of terminal `fd`.
pub fn window_size(fd: i32) -> Option<libc::winsize> {
    // SAFETY: winsize is plain old data; all-zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid, exclusively borrowed `ws`.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(ws)
}

/// Sets the window size of terminal `fd`.
pub fn set_window_size(fd: i32, ws: &libc::winsize) -> std::io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize from the valid `ws`.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, ws) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Closes every descriptor from `first` up, so nothing of strata's leaks into the container.
pub fn close_from(first: u32) {
    // SAFETY: close_range(2) only closes descriptors; the helper holds no Rust objects that
    // own descriptors at or above `first` at this point (the spec was read and closed).
    unsafe { libc::close_range(first, libc::c_uint::MAX, 0) };
}

/// The descriptor number the console socket has in the helper and in PID 1.
pub const CONSOLE_FD: i32 = 3;

/// The descriptor number of the exec-sync pipe's writing end in the helper and in PID 1: PID 1
/// writes its exit code there when the container cannot start; on a successful exec the pipe
/// closes (close-on-exec) without a byte.
pub const EXEC_SYNC_FD: i32 = 4;

/// Makes descriptor `raw` descriptor 3 of the process `cmd` starts (the caller keeps `raw`
/// open until the process is spawned, then closes its copy).
pub fn pass_as_fd3(cmd: &mut Command, raw: i32) {
    pass_as(cmd, raw, CONSOLE_FD);
}

/// Makes descriptor `raw` descriptor `target` of the process `cmd` starts (the caller keeps
/// `raw` open until the process is spawned, then closes its copy).
pub fn pass_as(cmd: &mut Command, raw: i32, target: i32) {
    // SAFETY: runs between fork and exec; dup2 is async-signal-safe and allocates nothing.
    // dup2 clears close-on-exec on the new descriptor, so it survives the exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Closes descriptor `fd` if it is open (a descriptor number this process owns no object for).
pub fn close_raw(fd: i32) {
    // SAFETY: called only for the fixed descriptor numbers of the helper's protocol (3, 4),
    // which no Rust object owns in the helper.
    unsafe { libc::close(fd) };
}

/// Marks descriptor `fd` close-on-exec.
pub fn set_cloexec(fd: i32) {
    // SAFETY: fcntl(F_SETFD) only changes the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Writes `code` to the exec-sync pipe (PID 1, about to exit because the container could
/// not start). Nothing happens when the pipe is not there.
pub fn report_start_failure(code: i32) {
    // A reader that went away must not turn the exit code into SIGPIPE's (PID 1 exits next).
    // SAFETY: SIG_IGN installs no handler code; PID 1 is single-threaded and about to exit.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let bytes = code.to_le_bytes();
    // SAFETY: writes 4 bytes from a live local buffer to a descriptor number; a bad
    // descriptor only makes write fail.
    unsafe { libc::write(EXEC_SYNC_FD, bytes.as_ptr().cast(), bytes.len()) };
}

/// Makes descriptor `target` (0, 1 or 2) a copy of `fd`.
pub fn dup_onto(fd: &impl std::os::fd::AsRawFd, target: i32) -> std::io::Result<()> {
    // SAFETY: dup2 only manipulates the descriptor table; `target` is a standard stream that
    // no Rust object owns in PID 1 (they are the process's inherited stdio).
    let rc = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Takes ownership of a descriptor the kernel just installed by SCM_RIGHTS.
pub fn owned_from_scm(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: descriptors received with SCM_RIGHTS are new in this process and owned by no
    // one else; each is wrapped exactly once.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
