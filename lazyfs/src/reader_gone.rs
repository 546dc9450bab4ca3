//! Whether the process waiting for a FUSE read is being killed. The kernel waits for the
//! answer to a request it has handed to the server uninterruptibly (D state), even for a
//! SIGKILL, and fuser answers FUSE_INTERRUPT with ENOSYS; so a read waiting for the network
//! watches its reader instead, and answers EINTR as soon as a fatal signal is pending for it
//! (the kernel queues SIGKILL to every thread of a process a fatal signal kills), letting it
//! die at once rather than at the read's deadline. The fetch itself goes on for other readers.

use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, ReplyData};
use strata_storage::lazy::FetchError;
use tracing::{debug, error};

use crate::failure::LastFailure;

/// How often a waiting read looks at its reader; the first look is after one period, so that
/// reads answered at once cost nothing.
const PERIOD: Duration = Duration::from_millis(200);

/// SIGKILL's bit in the pending-signal masks of `/proc/PID/status`.
const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

/// Whether the `status` text (of `/proc/TID/status`) shows SIGKILL pending, for the thread
/// (`SigPnd`) or its process (`ShdPnd`).
pub(crate) fn kill_pending(status: &str) -> bool {
    status.lines().any(|l| {
        let Some((key, value)) = l.split_once(':') else {
            return false;
        };
        (key == "SigPnd" || key == "ShdPnd")
            && u64::from_str_radix(value.trim(), 16).is_ok_and(|m| m & SIGKILL_BIT != 0)
    })
}

/// Returns once thread `tid` (the requester of a FUSE request, as the kernel names it in the
/// server's pid namespace) has a fatal signal pending or is gone; never for tid 0 (a requester
/// outside that namespace, whom the server cannot see).
pub(crate) async fn killed(tid: u32) {
    if tid == 0 {
        return std::future::pending().await;
    }
    let path = format!("/proc/{tid}/status");
    loop {
        tokio::time::sleep(PERIOD).await;
        match std::fs::read_to_string(&path) {
            Ok(status) if kill_pending(&status) => return,
            Ok(_) => {}
            // Gone (or never visible): nobody to answer early for.
            Err(_) => return std::future::pending().await,
        }
    }
}

/// What a FUSE read's fetch gives back: its buffer, and how many bytes of it were read.
pub(crate) type Fetched = (Vec<u8>, Result<usize, FetchError>);

/// Answers the FUSE read of `ino` at `offset` from `reader` with what `fetch` gives, or with
/// EINTR as soon as `reader` is being killed; the fetch then still runs to its end, for the
/// other reads waiting for its chunks. A failure is logged (once: the kernel's retry of a read
/// that just failed is at debug level) and noted.
pub(crate) async fn answer(
    fetch: impl Future<Output = Fetched>,
    reader: u32,
    reply: ReplyData,
    (ino, offset): (u64, u64),
    failures: Arc<LastFailure>,
) {
    let mut fetch = std::pin::pin!(fetch);
    let (buf, result) = tokio::select! {
        done = &mut fetch => done,
        () = killed(reader) => {
            debug!(ino, offset, reader, "reader killed while its read waited");
            reply.error(Errno::EINTR);
            let _ = fetch.await;
            return;
        }
    };
    match result {
        Ok(k) => reply.data(&buf[..k]),
        Err(e) if e.is_repeat() => {
            debug!(ino, offset, error = %e, "read failed again");
            reply.error(Errno::EIO)
        }
        Err(e) => {
            error!(ino, offset, error = %e, "read failed");
            failures.note(strata_oci::causes::with_causes(&e));
            reply.error(Errno::EIO)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigkill_pending_is_seen_in_either_mask() {
        let quiet =
            "Name:\tcat\nSigQ:\t0/1\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
        assert!(!kill_pending(quiet));
        let thread = quiet.replace("SigPnd:\t0000000000000000", "SigPnd:\t0000000000000100");
        assert!(kill_pending(&thread));
        let shared = quiet.replace("ShdPnd:\t0000000000000000", "ShdPnd:\t0000000000004100");
        assert!(kill_pending(&shared));
        // SIGTERM (bit 15) alone, handled by the process, is not fatal yet.
        let term = quiet.replace("ShdPnd:\t0000000000000000", "ShdPnd:\t0000000000004000");
        assert!(!kill_pending(&term));
    }

    #[tokio::test]
    async fn a_live_reader_is_not_taken_for_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let watch = tokio::spawn(killed(child.id()));
        tokio::time::sleep(PERIOD * 3).await;
        assert!(!watch.is_finished(), "a live reader is not killed");
        watch.abort();
        child.kill().unwrap();
        child.wait().unwrap();
        let outside = tokio::time::timeout(PERIOD * 2, killed(0)).await;
        assert!(
            outside.is_err(),
            "a requester outside the namespace is waited for"
        );
    }
}
