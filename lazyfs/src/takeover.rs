//! A FUSE connection that outlives its server: the mount is made on a `/dev/fuse` descriptor
//! that a holder process keeps, servers serve that descriptor, and a successor takes over a
//! live connection after its predecessor died — the kernel keeps the mount and queues requests
//! while the holder's descriptor is open, and resends those the dead server had read but not
//! answered when told to (`FUSE_NOTIFY_RESEND`, Linux ≥ 6.9; kernel
//! `Documentation/filesystems/fuse.rst` and `include/uapi/linux/fuse.h`).
//!
//! A successor must not do the INIT handshake again (the kernel sends INIT once per
//! connection), yet the FUSE library only builds a session through one: the successor's
//! session shakes hands with a recorded-style INIT over a socket pair, then the session's
//! descriptor is replaced (`dup3`) by the live connection before it serves a request.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use fuser::{InitFlags, SessionACL};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tracing::{info, warn};

use crate::fuse::LazyFs;
use crate::mount::{MountOptions, config, set_read_ahead};

/// `FUSE_INIT`'s opcode.
const FUSE_INIT: u32 = 26;
/// `FUSE_NOTIFY_RESEND`'s notification code.
const FUSE_NOTIFY_RESEND: i32 = 7;
/// The protocol minor version the successor's handshake claims (passthrough needs 40).
const INIT_MINOR: u32 = 40;

/// Opens `/dev/fuse` and mounts the read-only `fuse.strata` filesystem of that descriptor on
/// `dir` (`allow_other`, `default_permissions`, devices and setuid honoured): what the holder
/// keeps. The descriptor is inheritable (no close-on-exec), so that servers started by the
/// holder get it.
///
/// Errors: `/dev/fuse` cannot be opened or the mount fails.
pub fn mount_fd(dir: &Path) -> io::Result<OwnedFd> {
    use nix::fcntl::{OFlag, open};
    let fd = open("/dev/fuse", OFlag::O_RDWR, nix::sys::stat::Mode::empty())?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        fd.as_raw_fd()
    );
    nix::mount::mount(
        Some("strata"),
        dir,
        Some("fuse.strata"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(data.as_str()),
    )?;
    Ok(fd)
}

/// Serves `fs` on the connection `fd` (mounted on `dir`) from background threads until the
/// connection ends. A `resume`d connection (its previous server died) is served without a
/// handshake, and the kernel is asked to resend what the previous server left unanswered.
///
/// Errors: the session cannot be made.
pub fn serve_fd(
    fs: LazyFs,
    fd: OwnedFd,
    dir: &Path,
    resume: bool,
    opts: &MountOptions,
) -> io::Result<fuser::BackgroundSession> {
    let read_ahead = fs.read_ahead_kb();
    let mut cfg = config(opts);
    cfg.mount_options.clear();
    if !resume {
        let session = fuser::Session::from_fd(fs, fd, SessionACL::All, cfg)?;
        set_read_ahead(dir, read_ahead);
        return session.spawn();
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::unistd::write(&ours, &init_request())?;
    let session = fuser::Session::from_fd(fs, theirs, SessionACL::All, cfg)?;
    let target = session.as_fd().as_raw_fd();
    // SAFETY: `target` is the session's own open descriptor (the socket end it shook hands
    // on) and `fd` is open: dup3 atomically makes `target` a duplicate of the live FUSE
    // connection, closing the socket end. The session reads and writes through `target` only
    // after this, and nothing else holds that number.
    if unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(ours);
    if let Err(e) = notify_resend(fd.as_fd()) {
        warn!(error = %e, "the kernel cannot resend unanswered requests (Linux < 6.9)");
    }
    info!("took over the live connection");
    session.spawn()
}

/// Tells the kernel to queue again every request read but not answered on this connection.
pub fn notify_resend(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut msg = Vec::with_capacity(16);
    msg.extend_from_slice(&16u32.to_ne_bytes());
    msg.extend_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    msg.extend_from_slice(&0u64.to_ne_bytes());
    nix::unistd::write(fd, &msg)?;
    Ok(())
}

/// A `FUSE_INIT` request as the kernel sends it (`fuse_in_header` + `fuse_init_in`), offering
/// every capability the library knows; what the kernel really granted stays as it was.
fn init_request() -> Vec<u8> {
    let caps = (InitFlags::all() | InitFlags::FUSE_INIT_EXT).bits();
    let mut body = Vec::with_capacity(64);
    for v in [7u32, INIT_MINOR, 128 << 10] {
        body.extend_from_slice(&v.to_ne_bytes());
    }
    let [l0, l1, l2, l3, h0, h1, h2, h3] = caps.to_le_bytes();
    body.extend_from_slice(&u32::from_le_bytes([l0, l1, l2, l3]).to_ne_bytes());
    body.extend_from_slice(&u32::from_le_bytes([h0, h1, h2, h3]).to_ne_bytes());
    body.resize(64, 0);
    let mut msg = Vec::with_capacity(40 + body.len());
    msg.extend_from_slice(&104u32.to_ne_bytes()); // 40-byte header + 64-byte fuse_init_in
    msg.extend_from_slice(&FUSE_INIT.to_ne_bytes());
    msg.extend_from_slice(&1u64.to_ne_bytes()); // unique
    msg.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
    msg.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    msg.extend_from_slice(&body);
    msg
}
