//! Atomic file writes: a temporary file in the same directory, fsync, rename into place.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary path beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".tmp-{pid}-{n}-{name}"))
}

/// Writes `bytes` to `path` atomically with mode 0644.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file_mode(path, bytes, 0o644)
}

/// Writes `bytes` to `path` atomically with `mode`, durably (fsync before the rename).
pub fn write_file_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write(path, bytes, mode, true)
}

/// Writes `bytes` to `path` atomically but without fsync: after a crash the file may be
/// missing or (on some filesystems) empty or short, never another file's content. For data
/// that is verified when read, like cached chunks.
pub fn write_file_fast(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write(path, bytes, 0o644, false)
}

fn write(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    // Cache writes are many and their directories exist; only durable writes check.
    if durable && let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
