//! A detached container's log as docker's json-file driver keeps it: one JSON record a line,
//! `{"log":"out\n","stream":"stdout","time":"…"}`, so `logs` gives each line back on the stream
//! it came from and `--tail` counts lines of both streams in the order they came.
//!
//! The background `run` captures its own standard output and error (which the container
//! inherits) through two pipes and a thread that writes the records. Lines that are
//! not records (a log written before this format, or by `start -a` in the background) read as
//! standard output.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The text, with its newline.
    pub log: String,
    /// stdout or stderr.
    pub stream: String,
    /// When it came (RFC 3339 with nanoseconds).
    pub time: String,
}

/// The capture of this process's standard output and error into a log; dropping it closes
/// them and waits (bounded) until what is left in the pipes is written.
pub struct Capture {
    thread: Option<std::thread::JoinHandle<()>>,
    log: std::path::PathBuf,
    /// [`tee`]'s copies of this process's standard output and error as they were.
    saved: Option<[std::os::fd::OwnedFd; 2]>,
}

/// Sends this process's standard output and error (and so its container's) to `log` as records.
pub fn capture(log: &Path) -> anyhow::Result<Capture> {
    capture_with(log, false)
}

/// [`capture`] for a container in the foreground: what comes is also written, as it comes, to
/// where standard output and error went before (restored when the capture is dropped). A
/// reader of ours that goes away closes that pipe, so the container sees it go, as before.
pub fn tee(log: &Path) -> anyhow::Result<Capture> {
    capture_with(log, true)
}

fn capture_with(log: &Path, tee: bool) -> anyhow::Result<Capture> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let saved = if tee {
        let out = std::io::stdout().as_fd().try_clone_to_owned()?;
        let err = std::io::stderr().as_fd().try_clone_to_owned()?;
        Some([out, err])
    } else {
        None
    };
    let outs = match &saved {
        Some([o, e]) => Some([
            std::fs::File::from(o.try_clone()?),
            std::fs::File::from(e.try_clone()?),
        ]),
        None => None,
    };
    let mut readers = Vec::new();
    for fd in [1, 2] {
        let (reader, writer) = std::io::pipe()?;
        // SAFETY: dup2 onto fd 1 or 2 of this process; `writer` stays open until after it.
        if unsafe { libc::dup2(writer.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        readers.push(reader);
    }
    let thread = std::thread::spawn(move || copy_records(readers, file, outs));
    Ok(Capture {
        thread: Some(thread),
        log: log.to_path_buf(),
        saved,
    })
}

/// One thread polls both pipes, so lines keep the order they came in; what both pipes hold at
/// one wake-up is taken standard output first.
/// With `outs`, each chunk is also written to its stream's copy there.
fn copy_records(
    readers: Vec<std::io::PipeReader>,
    mut file: std::fs::File,
    mut outs: Option<[std::fs::File; 2]>,
) {
    let mut readers: Vec<Option<std::io::PipeReader>> = readers.into_iter().map(Some).collect();
    const STREAMS: [&str; 2] = ["stdout", "stderr"];
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut open = [true, true];
    let mut buf = vec![0u8; 64 << 10];
    while open.iter().any(|o| *o) {
        let mut fds: Vec<libc::pollfd> = readers
            .iter()
            .zip(open)
            .map(|(r, o)| libc::pollfd {
                fd: match r {
                    Some(r) if o => r.as_raw_fd(),
                    _ => -1,
                },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for i in 0..2 {
            if !open[i] || fds[i].revents == 0 {
                continue;
            }
            let got = readers[i]
                .as_mut()
                .map_or(0, |r| r.read(&mut buf).unwrap_or(0));
            let forwarded = match outs.as_mut() {
                Some(outs) if got > 0 => outs[i].write_all(&buf[..got]).is_ok(),
                _ => true,
            };
            if !forwarded {
                // Our reader went away: so does the container's (EPIPE/SIGPIPE on its write).
                readers[i] = None;
            }
            if got == 0 || !forwarded {
                open[i] = false;
                if !partial[i].is_empty() {
                    write_record(&mut file, STREAMS[i], &std::mem::take(&mut partial[i]));
                }
                continue;
            }
            partial[i].extend_from_slice(&buf[..got]);
            while let Some(nl) = partial[i].iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial[i].drain(..=nl).collect();
                write_record(&mut file, STREAMS[i], &line);
            }
        }
    }
}

fn write_record(file: &mut std::fs::File, stream: &str, line: &[u8]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let rec = Record {
        log: String::from_utf8_lossy(line).into_owned(),
        stream: stream.to_string(),
        time: strata_oci::timefmt::format_rfc3339(
            i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
            now.subsec_nanos(),
        ),
    };
    if let Ok(mut text) = serde_json::to_string(&rec) {
        text.push('\n');
        let _ = file.write_all(text.as_bytes());
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        if let Some([out, err]) = &self.saved {
            // SAFETY: dup2 of open descriptors onto this process's fds 1 and 2, closing our
            // ends of the pipes there.
            unsafe {
                libc::dup2(out.as_raw_fd(), 1);
                libc::dup2(err.as_raw_fd(), 2);
            }
            self.wait();
            return;
        }
        // Our ends of the pipes go (the container's are gone once it has exited); what this
        // process still says (its error) goes to the log as a plain line.
        let target = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/null"));
        if let Ok(f) = target {
            // SAFETY: dup2 of an open descriptor onto this process's fds 1 and 2.
            unsafe {
                libc::dup2(f.as_raw_fd(), 1);
                libc::dup2(f.as_raw_fd(), 2);
            }
        }
        self.wait();
    }
}

impl Capture {
    /// Waits (at most 2 seconds) until what is left in the pipes is written.
    fn wait(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The records of a log, in the order they came (plain lines as standard output, in place).
pub fn read(log: &Path) -> std::io::Result<Vec<Record>> {
    let mut text = String::new();
    std::fs::File::open(log)?.read_to_string(&mut text)?;
    Ok(parse(&text))
}

/// The records of a log's text.
fn parse(text: &str) -> Vec<Record> {
    text.split_inclusive('\n')
        .map(|l| {
            serde_json::from_str::<Record>(l.trim_end()).unwrap_or_else(|_| Record {
                log: l.to_string(),
                stream: "stdout".into(),
                time: String::new(),
            })
        })
        .collect()
}

/// What a failed background start said: the log's last line that strata wrote (it starts
/// with "strata: "), else its last line.
pub fn last_line(log: &Path) -> String {
    let lines: Vec<String> = read(log)
        .unwrap_or_default()
        .iter()
        .map(|r| r.log.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("strata: "))
        .or(lines.last())
        .cloned()
        .unwrap_or_default()
}

/// Prints a log's last `tail` records (all with `None`), each on its own stream; returns how
/// many bytes of the log it has read (up to its last complete line).
pub fn print(log: &Path, tail: Option<usize>, timestamps: bool) -> std::io::Result<u64> {
    let mut text = String::new();
    std::fs::File::open(log)?.read_to_string(&mut text)?;
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    let records = parse(&text[..whole]);
    let skip = tail.map_or(0, |n| records.len().saturating_sub(n));
    write_records(&records[skip..], timestamps)?;
    Ok(u64::try_from(whole).unwrap_or(u64::MAX))
}

/// `logs -f`: prints the records the log gets after byte `offset` as they come, until
/// `running` says the container has exited and what it wrote last is printed.
pub fn follow(
    log: &Path,
    mut offset: u64,
    timestamps: bool,
    running: impl Fn() -> bool,
) -> std::io::Result<()> {
    use std::io::{Seek as _, SeekFrom};
    loop {
        // Asked before reading, so the last read sees everything written before the exit.
        let more = running();
        let mut f = std::fs::File::open(log)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        write_records(&parse(&text[..whole]), timestamps)?;
        offset += u64::try_from(whole).unwrap_or(0);
        if !more {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_records(records: &[Record], timestamps: bool) -> std::io::Result<()> {
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for r in records {
        let w: &mut dyn std::io::Write = if r.stream == "stderr" {
            &mut err
        } else {
            &mut out
        };
        if timestamps && !r.time.is_empty() {
            write!(w, "{} ", r.time)?;
        }
        w.write_all(r.log.as_bytes())?;
    }
    out.flush()?;
    err.flush()
}
