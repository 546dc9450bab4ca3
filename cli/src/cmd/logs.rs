//! A detached container's log as docker's json-file driver keeps it: one JSON record a line,
//! `{"log":"out\n","stream":"stdout","time":"…"}`, so `logs` gives each line back on the stream
//! it came from and `--tail` counts lines of both streams in the order they came.
//!
//! The background `run` captures its own standard output and error (which the container
//! inherits) through two pipes and a thread per stream that writes the records. Lines that are
//! not records (a log written before this format, or by `start -a` in the background) read as
//! standard output.

use std::io::{BufRead as _, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
    threads: Vec<std::thread::JoinHandle<()>>,
    log: std::path::PathBuf,
}

/// Sends this process's standard output and error (and so its container's) to `log` as records.
pub fn capture(log: &Path) -> anyhow::Result<Capture> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let file = Arc::new(Mutex::new(file));
    let mut threads = Vec::new();
    for (fd, stream) in [(1, "stdout"), (2, "stderr")] {
        let (reader, writer) = std::io::pipe()?;
        // SAFETY: dup2 onto fd 1 or 2 of this process; `writer` stays open until after it.
        if unsafe { libc::dup2(writer.as_raw_fd(), fd) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        drop(writer);
        let file = Arc::clone(&file);
        threads.push(std::thread::spawn(move || {
            copy_lines(reader, stream, &file)
        }));
    }
    Ok(Capture {
        threads,
        log: log.to_path_buf(),
    })
}

fn copy_lines(reader: std::io::PipeReader, stream: &str, file: &Mutex<std::fs::File>) {
    let mut r = std::io::BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let rec = Record {
            log: String::from_utf8_lossy(&line).into_owned(),
            stream: stream.to_string(),
            time: strata_fetcher::timefmt::format_rfc3339(now.as_secs() as i64, now.subsec_nanos()),
        };
        if let (Ok(mut f), Ok(mut text)) = (file.lock(), serde_json::to_string(&rec)) {
            text.push('\n');
            let _ = f.write_all(text.as_bytes());
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
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
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        for t in self.threads.drain(..) {
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The records of a log, in order (plain lines as standard output).
pub fn read(log: &Path) -> std::io::Result<Vec<Record>> {
    let mut text = String::new();
    std::fs::File::open(log)?.read_to_string(&mut text)?;
    Ok(text
        .split_inclusive('\n')
        .map(|l| {
            serde_json::from_str::<Record>(l.trim_end()).unwrap_or_else(|_| Record {
                log: l.to_string(),
                stream: "stdout".into(),
                time: String::new(),
            })
        })
        .collect())
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

/// Prints a log's last `tail` records (all with `None`), each on its own stream.
pub fn print(log: &Path, tail: Option<usize>, timestamps: bool) -> std::io::Result<()> {
    let records = read(log)?;
    let skip = tail.map_or(0, |n| records.len().saturating_sub(n));
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for r in &records[skip..] {
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
