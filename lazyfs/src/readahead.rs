//! Readahead: every decision about reading more than a process asked for, in one place.
//!
//! The knobs, from the kernel down to the registry:
//! - [`FUSE_MAX_READAHEAD_BYTES`]: the readahead the mount starts with (FUSE `init`); replaced
//!   by the next knob as soon as the mount exists.
//! - [`READ_AHEAD_KB`] / [`PROFILE_READ_AHEAD_KB`]: the kernel's readahead of the mount (its
//!   bdi `read_ahead_kb`), large so that a cold reader's misses go out as several parallel
//!   requests; small while a prefetch profile is recorded or replayed (see [`kernel_kb`]).
//! - [`MISS_FETCH_AHEAD_BYTES`]: a read that misses the cache fetches at least this much of
//!   the file from where it reads (in the same requests), since a file being read is usually
//!   read to its end.
//! - [`SEQUENTIAL_WINDOW_BYTES`]: while a file is read sequentially, the next this-many bytes
//!   are kept on their way in the background, so that the network never waits for the reader.
//! - Request shaping below that (how misses become range requests: the coalescing gap, the
//!   largest request, requests in parallel) is `strata_storage::ranges`; prefetch of a whole
//!   profile is `strata_image::profile`.

use std::collections::HashMap;
use std::sync::Mutex;

/// Readahead the mount starts with, until [`READ_AHEAD_KB`] is set on it.
pub const FUSE_MAX_READAHEAD_BYTES: u32 = 1 << 20;
/// Kernel readahead of a mount, in KiB.
pub const READ_AHEAD_KB: u32 = 4096;
/// Kernel readahead of a mount that records or replays a prefetch profile: the kernel asks for
/// little more than the process reads, so the profile holds what the process needs and a
/// replay is not sent past it by readahead.
pub const PROFILE_READ_AHEAD_KB: u32 = 128;
/// Least a read that misses the cache fetches from where it reads.
pub const MISS_FETCH_AHEAD_BYTES: u64 = 1 << 20;
/// How far ahead of a sequential reader its next bytes are fetched.
pub const SEQUENTIAL_WINDOW_BYTES: u64 = 8 << 20;
/// Compressed bytes of a directory's small files fetched when a read first misses in it
/// ([`crate::dir_prefetch`]): about what a 200 Mbit/s link carries in two 20 ms round trips,
/// so the extra request costs the reader little more than the round trip it saves.
pub const DIR_PREFETCH_BYTES: u64 = 1 << 20;
/// Files larger than this are not fetched for their neighbours (their own reads fetch them).
pub const DIR_PREFETCH_FILE_MAX: u64 = 256 << 10;

/// Compressed bytes of a subtree's small files of one kind fetched once misses of that kind
/// came from several of its directories ([`crate::subtree_prefetch`]): about a third of a
/// second of a 200 Mbit/s link, more than the compiled standard library of an interpreter
/// (Python 3.11's `.pyc` files are 4 MB compressed).
pub const SUBTREE_PREFETCH_BYTES: u64 = 8 << 20;
/// Misses of one kind from this many different directories start their subtree's prefetch: one
/// or two directories are what [`crate::dir_prefetch`] is for.
pub const SUBTREE_PREFETCH_AFTER_DIRS: usize = 3;
/// Subtree prefetches one mount starts at most.
pub const SUBTREE_PREFETCH_MAX: usize = 4;
/// Blob bytes one request of a subtree prefetch spans: small, so that a reader waiting for one
/// of its chunks waits not much longer than for a request of its own.
pub const SUBTREE_PREFETCH_PIECE: u64 = 256 << 10;
/// Requests of one subtree prefetch in flight at once.
pub const SUBTREE_PREFETCH_PIECES: usize = 4;

/// [`SUBTREE_PREFETCH_BYTES`], or `STRATA_SUBTREE_PREFETCH_KB` KiB when set (0 turns it off).
pub fn subtree_prefetch_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("STRATA_SUBTREE_PREFETCH_KB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(SUBTREE_PREFETCH_BYTES, |kb| kb << 10)
    })
}

/// [`DIR_PREFETCH_BYTES`], or `STRATA_DIR_PREFETCH_KB` KiB when set (0 turns it off).
pub fn dir_prefetch_bytes() -> u64 {
    // Read once: it is asked on every cache miss.
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("STRATA_DIR_PREFETCH_KB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(DIR_PREFETCH_BYTES, |kb| kb << 10)
    })
}

/// The miss in a directory that starts its prefetch (the second: one miss alone says little
/// about what comes next, and a program that reads one file of a large directory should not
/// pay for its neighbours). `STRATA_DIR_PREFETCH_AFTER` overrides it.
pub const DIR_PREFETCH_AFTER: u32 = 2;

/// [`DIR_PREFETCH_AFTER`], or `STRATA_DIR_PREFETCH_AFTER` when set.
pub fn dir_prefetch_after() -> u32 {
    static AFTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *AFTER.get_or_init(|| {
        std::env::var("STRATA_DIR_PREFETCH_AFTER")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(DIR_PREFETCH_AFTER, |n| n.max(1))
    })
}

/// Files whose last read position is remembered (to recognise sequential reads); the memory is
/// cleared when it grows past this.
const TRACKED_FILES: usize = 4096;

/// The kernel readahead a mount wants, in KiB: small while a profile is recorded or replayed
/// (the profile holds what the process reads, not what the kernel read ahead, and a replay
/// must not read ahead past it), large otherwise.
pub fn kernel_kb(profiling: bool) -> u32 {
    if profiling {
        PROFILE_READ_AHEAD_KB
    } else {
        READ_AHEAD_KB
    }
}

/// How much of a file a read that misses the cache fetches: the bytes read, at least
/// [`MISS_FETCH_AHEAD_BYTES`], no further than the file's content (`remaining` bytes).
pub fn miss_fetch_len(len: u64, remaining: u64) -> u64 {
    len.max(MISS_FETCH_AHEAD_BYTES).min(remaining).max(len)
}

/// Sequential-read detection for one mount.
#[derive(Debug, Default)]
pub(crate) struct Sequential {
    /// End of the last read of each file.
    last_end: Mutex<HashMap<u64, u64>>,
}

impl Sequential {
    /// Notes a read of `len` bytes at `offset` of `ino`; when it continues the previous read
    /// of that file, the range to keep on its way behind it (`offset`, `len`).
    pub(crate) fn on_read(&self, ino: u64, offset: u64, len: u64) -> Option<(u64, u64)> {
        let mut last = self.last_end.lock().unwrap_or_else(|p| p.into_inner());
        let sequential = offset > 0 && last.get(&ino) == Some(&offset);
        if last.len() > TRACKED_FILES {
            last.clear();
        }
        last.insert(ino, offset + len);
        sequential.then_some((offset + len, SEQUENTIAL_WINDOW_BYTES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_read_that_continues_the_last_one_prefetches() {
        let s = Sequential::default();
        assert_eq!(s.on_read(7, 0, 100), None);
        assert_eq!(s.on_read(7, 100, 50), Some((150, SEQUENTIAL_WINDOW_BYTES)));
        assert_eq!(s.on_read(7, 0, 10), None, "a jump back is not sequential");
        assert_eq!(
            s.on_read(8, 10, 10),
            None,
            "another file has its own position"
        );
    }

    #[test]
    fn a_miss_fetches_ahead_within_the_file() {
        assert_eq!(miss_fetch_len(4096, 10 << 20), MISS_FETCH_AHEAD_BYTES);
        assert_eq!(miss_fetch_len(4096, 8192), 8192);
        assert_eq!(miss_fetch_len(2 << 20, 10 << 20), 2 << 20);
        assert_eq!(kernel_kb(true), PROFILE_READ_AHEAD_KB);
    }
}
