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
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a valid socket and req a valid, initialized ifreq that outlives the calls;
    // SIOCGIFFLAGS/SIOCSIFFLAGS read and write only the ifr_flags member of the union.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd was returned by socket(2) above and is closed exactly once.
    unsafe { libc::close(fd) };
    if rc < 0 { Err(err) } else { Ok(()) }
}
