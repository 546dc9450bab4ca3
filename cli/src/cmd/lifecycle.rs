//! `strata logs`, `stop`, `kill` and `diff`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use strata_runner::state::{Container, Containers, State};

use strata_overlay::root::is_runtime_artifact;

use crate::global::GlobalArgs;

/// Arguments of `logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Number of lines to show from the end of the logs ("all" for every line).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Follow the output until the container exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Container (name or id).
    pub container: String,
}

/// Arguments of `stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Containers (name or id).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Arguments of `kill`.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal to send (name like TERM or SIGHUP, or number).
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    /// Containers (name or id).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Arguments of `diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Container (name or id).
    pub container: String,
}

fn find(cs: &Containers, key: &str) -> anyhow::Result<Container> {
    cs.find(key)
        .ok_or_else(|| crate::cmd::daemon(format!("No such container: {key}")))
}

fn running_pid(c: &Container) -> Option<Pid> {
    let pid = crate::cmd::pid(c.pid?);
    (c.state == State::Running && kill(pid, None).is_ok()).then_some(pid)
}

pub fn run_logs(a: LogsArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let cs = Containers::new(&g.root());
    let c = find(&cs, &a.container)?;
    let log = cs.dir_of(&c.id).join("container.log");
    // docker: a negative or unreadable --tail means all lines.
    let tail = a.tail.parse::<i64>().ok().filter(|n| *n >= 0);
    let printed = crate::cmd::logs::print(
        &log,
        tail.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        a.timestamps,
    );
    let running = || cs.find(&c.id).is_some_and(|c| running_pid(&c).is_some());
    match printed {
        Ok(offset) if a.follow => {
            crate::cmd::logs::follow(&log, offset, a.timestamps, running)?;
            Ok(0)
        }
        Ok(_) => Ok(0),
        Err(_) => bail!(
            "container {} keeps no log (one run with -t or by an older strata)",
            a.container
        ),
    }
}

/// Waits until the container's record says it exited (its `strata run` writes that after the
/// process ends); false on timeout.
pub fn wait_exit(cs: &Containers, id: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match cs.find(id) {
            Some(c) if c.state == State::Running => std::thread::sleep(Duration::from_millis(20)),
            _ => return true,
        }
    }
    false
}

pub fn run_stop(a: StopArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let cs = Containers::new(&g.root());
    for key in &a.containers {
        stop_one(&cs, key, a.time)?;
        println!("{key}");
    }
    Ok(0)
}

/// Stops a container: SIGTERM, SIGKILL after `grace` seconds; waits until its record says it
/// exited (bounded).
pub fn stop_one(cs: &Containers, key: &str, grace: u64) -> anyhow::Result<Container> {
    let c = find(cs, key)?;
    if let Some(pid) = running_pid(&c) {
        let _ = kill(pid, Signal::SIGTERM);
        if !wait_exit(cs, &c.id, Duration::from_secs(grace)) {
            let _ = kill(pid, Signal::SIGKILL);
            wait_exit(cs, &c.id, Duration::from_secs(5));
        }
    }
    Ok(c)
}

/// A signal by number or name (`KILL`, `SIGKILL`); docker's daemon's words when it is none.
fn parse_signal(s: &str) -> Result<Signal, String> {
    let invalid = || format!("invalid signal: {s}");
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| invalid());
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<Signal>().map_err(|_| invalid())
}

pub fn run_kill(a: KillArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    // docker's daemon checks the signal for each container it is asked to kill.
    let sig = parse_signal(&a.signal);
    let cs = Containers::new(&g.root());
    // As docker: every container is tried; each failure is one line, and the exit is 1.
    let mut failed = false;
    for key in &a.containers {
        let why = match cs.find(key) {
            None => format!("No such container: {key}"),
            Some(c) => match (running_pid(&c), &sig) {
                (_, Err(why)) => why.clone(),
                (None, _) => format!("container {} is not running", c.id),
                (Some(pid), Ok(sig)) => match kill(pid, *sig) {
                    Ok(()) => {
                        if *sig == Signal::SIGKILL {
                            wait_recorded_exit(&cs, &c.id);
                        }
                        println!("{key}");
                        continue;
                    }
                    Err(e) => format!("signalling {}: {e}", c.id),
                },
            },
        };
        eprintln!("Error response from daemon: cannot kill container: {key}: {why}");
        failed = true;
    }
    Ok(if failed { 1 } else { 0 })
}

/// As docker's daemon after SIGKILL: waits (at most 5 seconds) until the container's
/// supervisor has recorded its exit, which it does after releasing its root's mounts, so the
/// next command finds the container exited and nothing left mounted.
fn wait_recorded_exit(cs: &Containers, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cs.find(id).is_none_or(|c| c.state != State::Running) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `A`/`C`/`D` lines like docker's, from the container's upper layer (overlayfs format).
pub fn run_diff(a: DiffArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let cs = Containers::new(&g.root());
    let c = find(&cs, &a.container)?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .catalog()
        .image_of(c.image_manifest.as_deref(), &c.image_id)?;
    let layers = ctx.catalog().open_layers(&img)?;
    let tree = strata_lazyfs::Tree::build(layers.iter().map(|l| &l.index))?;
    let upper = cs.dir_of(&c.id).join("upper");
    let mut out = Vec::new();
    walk(&upper, &upper, &tree, &mut out)?;
    out.sort_by(|x, y| x.1.cmp(&y.1));
    for (kind, path) in out {
        println!("{kind} {path}");
    }
    Ok(0)
}

fn walk(
    root: &Path,
    dir: &Path,
    tree: &strata_lazyfs::Tree,
    out: &mut Vec<(char, String)>,
) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let rel = p.strip_prefix(root)?;
        let shown = format!("/{}", rel.display());
        let m = std::fs::symlink_metadata(&p)?;
        // docker's init entries are not the container's changes (docker's diff leaves its
        // init layer out).
        if is_runtime_artifact(rel, &m, tree)
            || strata_runner::initlayer::is_init_entry(rel, &m, root)
        {
            continue;
        }
        let in_image = tree.resolve(rel.as_os_str().as_encoded_bytes()).is_some();
        if m.file_type().is_char_device() && m.rdev() == 0 {
            out.push(('D', shown));
            continue;
        }
        out.push((if in_image { 'C' } else { 'A' }, shown));
        if m.is_dir() {
            walk(root, &p, tree, out)?;
        }
    }
    Ok(())
}
