//! Using the store: [`Lease::open`] connects to the server of a state root, starting it if it
//! is not running; the lease keeps the store up until it is dropped.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use strata_storage::store::ImageRecord;
use tracing::{debug, warn};

use crate::protocol::{Reply, Request, Status};
use crate::{StoreError, StorePaths};

/// How to start a server: the program and its arguments (the CLI's `layer-store` verb with
/// the options of the command that starts it).
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

static LAUNCHER: OnceLock<Launcher> = OnceLock::new();

/// Sets how this process starts a server when it finds none; without it, no server is
/// started and [`Lease::open`] fails unless one is running.
pub fn set_launcher(l: Launcher) {
    let _ = LAUNCHER.set(l);
}

/// The settings a server started by this process serves with, as one line (see
/// [`settings_of`]). Empty without a launcher.
pub fn settings() -> String {
    LAUNCHER
        .get()
        .map_or_else(String::new, |l| settings_of(&l.args))
}

/// The settings that global options `args` give a server, as one line: the options other
/// than the log level and the state root (cache size, registry waits, insecure registries),
/// and the read deadline from the environment.
pub fn settings_of(args: &[OsString]) -> String {
    let mut out = Vec::new();
    let mut args = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = args.next() {
        if a == "--log-level" || a == "--root" {
            args.next();
        } else if !a.starts_with("__") {
            out.push(a.into_owned());
        }
    }
    if let Ok(v) = std::env::var("STRATA_READ_TIMEOUT_SECS") {
        out.push(format!("STRATA_READ_TIMEOUT_SECS={v}"));
    }
    out.join(" ")
}

/// Whether this process may use the store: a launcher is set and `STRATA_LAYER_STORE` is
/// not `0`.
pub fn enabled() -> bool {
    LAUNCHER.get().is_some() && std::env::var("STRATA_LAYER_STORE").map_or(true, |v| v != "0")
}

/// How long a first user waits for the server it started to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the start lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an image may take to be added (its layers streamed and indexed when they have
/// no TOC).
const ADD_TIMEOUT: Duration = Duration::from_secs(3600);

/// A connection to the store's server; the store stays up while it is open.
#[derive(Debug)]
pub struct Lease {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    paths: StorePaths,
}

impl Lease {
    /// Connects to the store of state root `root`, starting its server if none runs.
    ///
    /// Errors: the lock, the socket or the server's start failed.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let paths = StorePaths::new(root);
        let _lock = take_lock(&paths.lock, LOCK_TIMEOUT)?;
        match Self::connect(&paths) {
            Ok(lease) => Ok(lease),
            // Nobody listens: start a server.
            Err(StoreError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                start(root, &paths)
            }
            // A server listens but does not answer (stopped, hung): another one would mount a
            // second store over it.
            Err(e) => Err(StoreError::Start {
                root: root.to_path_buf(),
                cause: format!(
                    "a server runs but does not answer ({e}); see {}",
                    paths.log.display()
                ),
            }),
        }
    }

    fn connect(paths: &StorePaths) -> Result<Self, StoreError> {
        let stream = UnixStream::connect(&paths.socket).map_err(StoreError::io(&paths.socket))?;
        let reader = BufReader::new(stream.try_clone().map_err(StoreError::io(&paths.socket))?);
        let mut lease = Self {
            stream,
            reader,
            paths: paths.clone(),
        };
        // A round trip: once answered, the server counts this connection as a user (a server
        // deciding to stop holds the start lock, which the caller holds now).
        let theirs = lease.status()?.settings;
        let mine = settings();
        if !theirs.is_empty() && theirs != mine {
            warn!(
                "the layer store of this root already runs with {theirs:?}; this command's \
                 {mine:?} (cache size, read deadline, registry options) applies once it \
                 restarts, after its last user"
            );
        }
        Ok(lease)
    }

    /// The store's mount point.
    pub fn mount(&self) -> &Path {
        &self.paths.mount
    }

    /// Asks the server to serve `img`'s layers (fetching ahead as `prefetch` says, once per
    /// image); returns their `diff` directories, bottom first.
    ///
    /// Errors: the server's (an image that cannot be indexed, a layer that cannot be shown on
    /// its own), or no answer within an hour.
    pub fn add(&mut self, img: &ImageRecord, prefetch: &str) -> Result<Vec<PathBuf>, StoreError> {
        let req = Request::Add {
            image: img.clone(),
            prefetch: prefetch.to_string(),
        };
        match self.call(&req, ADD_TIMEOUT)? {
            Reply::Lowers(l) => Ok(l.into_iter().map(PathBuf::from).collect()),
            Reply::Error(e) => Err(StoreError::Server(e)),
            other => Err(StoreError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// The store's state.
    pub fn status(&mut self) -> Result<Status, StoreError> {
        match self.call(&Request::Status, Duration::from_secs(10))? {
            Reply::Status(s) => Ok(s),
            Reply::Error(e) => Err(StoreError::Server(e)),
            other => Err(StoreError::Protocol(format!("unexpected {other:?}"))),
        }
    }

    fn call(&mut self, req: &Request, timeout: Duration) -> Result<Reply, StoreError> {
        let sock = self.paths.socket.clone();
        let mut line = serde_json::to_vec(req).map_err(|e| StoreError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(StoreError::io(&sock))?;
        self.stream
            .write_all(&line)
            .map_err(StoreError::io(&sock))?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(StoreError::io(&sock))?;
        if n == 0 {
            return Err(StoreError::Protocol(
                "the server closed the connection".into(),
            ));
        }
        serde_json::from_str(&answer).map_err(|e| StoreError::Protocol(e.to_string()))
    }
}

/// Starts the server of `root` (the caller holds the start lock) and connects to it.
fn start(root: &Path, paths: &StorePaths) -> Result<Lease, StoreError> {
    let fail = |cause: String| StoreError::Start {
        root: root.to_path_buf(),
        cause,
    };
    let launcher = LAUNCHER
        .get()
        .ok_or_else(|| fail("this program cannot start one".into()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(StoreError::io(&paths.log))?;
    let err_log = log.try_clone().map_err(StoreError::io(&paths.log))?;
    let mut cmd = Command::new(&launcher.program);
    cmd.args(&launcher.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // Its own process group: a signal to the starting command's group does not end it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    debug!(pid = child.id(), "layer store server started");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(lease) = Lease::connect(paths) {
            // Reaped whenever it ends, while this process lives.
            std::thread::spawn(move || child.wait());
            return Ok(lease);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&paths.log).unwrap_or_default();
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            return Err(fail(format!(
                "it exited ({status}): {}",
                last.unwrap_or("no log")
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(fail(format!(
                "it did not listen within {}s",
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Takes the exclusive lock at `path`, waiting at most `timeout`.
pub(crate) fn take_lock(
    path: &Path,
    timeout: Duration,
) -> Result<Flock<std::fs::File>, StoreError> {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => {
                return Err(StoreError::Io {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}
