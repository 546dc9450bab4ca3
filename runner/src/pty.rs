//! `-t`: a pseudo-terminal for the container, allocated by its PID 1 from the container's own
//! devpts (so `tty` and `ttyname` work inside), which becomes its controlling terminal and
//! standard streams; the master side comes to strata over a socket (SCM_RIGHTS). strata relays
//! its own stdin to the master and the master to its stdout, with its terminal in raw mode, and
//! passes window sizes on.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::sys::{set_window_size, window_size};

/// An open pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
}

/// Receives the master side of the container's terminal from its PID 1 over the console
/// socket, and sizes it like strata's own terminal. Fails if PID 1 ended before sending one.
pub fn receive_master(sock: &std::os::unix::net::UnixStream) -> std::io::Result<Pty> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            let master = crate::sys::owned_from_scm(*fd);
            if let Some(ws) = window_size(0) {
                let _ = set_window_size(master.as_raw_fd(), &ws);
            }
            return Ok(Pty { master });
        }
    }
    Err(std::io::Error::other("the container sent no terminal"))
}

impl Pty {
    /// Starts relaying; the returned guard restores strata's terminal when dropped.
    pub fn relay(self) -> std::io::Result<Relay> {
        let saved = tcgetattr(std::io::stdin()).ok();
        if let Some(t) = &saved {
            let mut raw: Termios = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw);
        }
        let mut to_master = std::fs::File::from(self.master.try_clone()?);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || to_master.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut from_master = std::fs::File::from(self.master.try_clone()?);
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdout = std::io::stdout();
            // Reading the master fails with EIO once every slave descriptor is closed.
            while let Ok(n) = from_master.read(&mut buf) {
                if n == 0
                    || stdout
                        .write_all(&buf[..n])
                        .and_then(|()| stdout.flush())
                        .is_err()
                {
                    break;
                }
            }
        });
        Ok(Relay {
            master: self.master,
            saved,
            output: Some(output),
        })
    }
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    master: OwnedFd,
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

/// Copies strata's terminal size to the container's terminal (`master`, a raw descriptor that
/// stays open while the relay lives).
pub fn resize_from_stdin(master: i32) {
    if let Some(ws) = window_size(0) {
        let _ = set_window_size(master, &ws);
    }
}

impl Relay {
    /// The master side, for [`resize_from_stdin`].
    pub fn master_fd(&self) -> i32 {
        self.master.as_raw_fd()
    }

    /// Waits until the container's output is all written out.
    pub fn finish(mut self) {
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
    }
}
