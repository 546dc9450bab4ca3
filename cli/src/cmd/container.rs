//! What `run` and `start` share: running a container's spec to the end while keeping its record.

use anyhow::Context as _;
use strata_oci::timefmt::now_secs;
use strata_overlay::root::RootMount;
use strata_runner::state::{Container, Containers, State};
use strata_runner::{Spec, Stdio};

/// The hidden subcommand the container helper runs as.
pub const INIT_ARG: &str = "__container-init";

/// How the container's standard streams are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// stdout/stderr inherited, stdin from /dev/null.
    Output,
    /// All three inherited (`-i`).
    Interactive,
    /// A pseudo-terminal relayed to ours (`-t`).
    Tty,
}

/// How long PID 1 may take to get to its command's exec before the container is taken as
/// running anyway (its root is read lazily, so a slow registry slows the start).
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Starts `spec`, records the container as running, forwards signals, waits, and records its
/// exit. Returns the exit code.
/// `root` is unmounted before the exit is recorded, so whoever waits for the record finds
/// nothing mounted.
pub fn execute(
    rt: &tokio::runtime::Runtime,
    containers: &Containers,
    spec: &Spec,
    mut record: Container,
    streams: Streams,
    mut root: RootMount,
) -> anyhow::Result<i32> {
    let since = now_secs();
    let mut console = None;
    let stdio = match streams {
        Streams::Output => Stdio::NoStdin,
        Streams::Interactive => Stdio::Inherit,
        Streams::Tty => {
            let (ours, theirs) =
                std::os::unix::net::UnixStream::pair().context("creating the console socket")?;
            console = Some(ours);
            Stdio::Console(theirs)
        }
    };
    let mut started = strata_runner::start_with(spec, &std::env::current_exe()?, INIT_ARG, stdio)?;
    // No terminal arrives when the container fails before its command starts; its error is on
    // our stderr and its exit code tells the rest.
    let relay = console
        .and_then(|sock| strata_runner::pty::receive_master(&sock).ok())
        .map(|p| p.relay())
        .transpose()
        .context("relaying the terminal")?;
    if let Some(r) = &relay {
        let master = r.master_fd();
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut winch) = signal(SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                strata_runner::pty::resize_from_stdin(master);
            }
        });
    }
    // Running once PID 1 has exec'd the command; a container whose command could not start
    // stays created, with its exit code, as docker's does.
    if let Some(code) = started.start_failure(START_LIMIT) {
        drop(started.wait());
        report_read_failure(&mut root, since);
        drop(root);
        record_start_failure(containers, record, code);
        return Ok(code);
    }
    let pid = started.pid();
    record.state = State::Running;
    record.pid = Some(pid);
    record.started = Some(now_secs());
    record.exit_code = None;
    record.finished = None;
    // The container runs now: a record that cannot be written (a full disk) is said, not
    // taken for a failure to start (which would delete the container and what it writes).
    if let Err(e) = containers.save(&record) {
        eprintln!(
            "strata: recording container {} as running: {e}",
            record.name
        );
    }
    rt.spawn(forward_signals(pid));
    let code =
        rt.block_on(async { tokio::task::spawn_blocking(move || started.wait()).await })??;
    if let Some(r) = relay {
        r.finish();
    }
    if code != 0 {
        report_read_failure(&mut root, since);
    }
    drop(root);
    record_exit(containers, record, code);
    Ok(code)
}

/// Records the exit code of a container whose command could not start (its state stays).
fn record_start_failure(containers: &Containers, mut record: Container, code: i32) {
    record.exit_code = Some(code);
    if let Err(e) = containers.save(&record) {
        eprintln!("strata: recording container {}: {e}", record.name);
    }
}

/// A program that failed on EIO says only "i/o error": says which read of the image failed
/// (since `since`), if one did.
fn report_read_failure(root: &mut RootMount, since: i64) {
    if let Some(why) = root.read_failure_since(since) {
        eprintln!("strata: reading the image failed: {why}");
    }
}

/// Records that the container exited with `code`. The container's own exit code is the
/// answer, whether or not its record could be written (`ps -a` then shows it as exited with
/// 255, its upper layer kept).
fn record_exit(containers: &Containers, mut record: Container, code: i32) {
    record.state = State::Exited;
    record.pid = None;
    record.exit_code = Some(code);
    record.finished = Some(now_secs());
    if let Err(e) = containers.save(&record) {
        eprintln!(
            "strata: recording the exit of container {}: {e}",
            record.name
        );
    }
}

/// Runs this same command line again in the background, in its own process group, with
/// `extra` inserted after `subcommand`, its output (the container's) appended to `log` and
/// strata's own log lines to `strata_log`.
pub fn respawn_in_background(
    subcommand: &str,
    extra: &str,
    log: std::fs::File,
    strata_log: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let pos = args
        .iter()
        .position(|x| x == subcommand)
        .with_context(|| format!("no {subcommand} subcommand"))?;
    args.insert(pos + 1, extra.to_string());
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(&args)
        .env("STRATA_LOG_FILE", strata_log)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the container in the background")
}

/// Forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the container helper.
async fn forward_signals(pid: u32) {
    use nix::sys::signal::Signal;
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ];
    for (kind, sig) in kinds {
        let Ok(mut s) = signal(kind) else { continue };
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let _ = nix::sys::signal::kill(crate::cmd::pid(pid), sig);
            }
        });
    }
}
