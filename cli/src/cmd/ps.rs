//! `strata ps` and `strata rm`.

use anyhow::bail;
use strata_oci::timefmt::now_secs;
use strata_runner::state::{Container, Containers, State};

use crate::cmd::images::{ago, docker_time, print_table};
use crate::format::Format;
use crate::global::GlobalArgs;

/// Arguments of `ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only show ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show only the latest created container.
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// `table`, `json`, `table TEMPLATE` or a Go template (fields: .ID .Image .Command
    /// .CreatedAt .RunningFor .Status .State .Names .Ports).
    #[arg(long)]
    pub format: Option<String>,
    /// Do not truncate IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Column titles of `table` templates.
const HEADER: [(&str, &str); 9] = [
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Status", "STATUS"),
    ("State", "STATE"),
    ("Names", "NAMES"),
    ("Ports", "PORTS"),
];

/// Arguments of `rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Containers (name or id).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// A record whose helper died without updating it counts as exited.
pub fn effective(c: &Container) -> Container {
    let mut c = c.clone();
    if c.state == State::Running {
        let alive = c.pid.is_some_and(|p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), None).is_ok()
        });
        if !alive {
            c.state = State::Exited;
            c.exit_code = c.exit_code.or(Some(255));
        }
    }
    c
}

fn status(c: &Container) -> String {
    let now = now_secs();
    match c.state {
        State::Created => "Created".into(),
        State::Running => format!("Up {}", ago(now - c.created).trim_end_matches(" ago")),
        State::Exited => format!(
            "Exited ({}) {}",
            c.exit_code.unwrap_or(0),
            c.finished.map(|f| ago(now - f)).unwrap_or_default()
        ),
    }
}

pub fn run_ps(a: PsArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let format = Format::parse(a.format.as_deref())?;
    let mut list: Vec<Container> = Containers::new(&g.root())
        .list()
        .iter()
        .map(effective)
        .collect();
    if !a.all && !a.latest {
        list.retain(|c| c.state == State::Running);
    }
    if a.latest {
        list.truncate(1);
    }
    let id_len = if a.no_trunc { usize::MAX } else { 12 };
    if a.quiet {
        for c in list {
            println!("{}", &c.id[..id_len.min(c.id.len())]);
        }
        return Ok(0);
    }
    if !format.is_default() {
        let items: Vec<serde_json::Value> = list.iter().map(|c| item(c, id_len)).collect();
        format.print(&items, &HEADER)?;
        return Ok(0);
    }
    let mut rows = vec![
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in list {
        let mut cmd = c.command.join(" ");
        if !a.no_trunc && cmd.chars().count() > 20 {
            cmd = format!("{}…", cmd.chars().take(19).collect::<String>());
        }
        rows.push(vec![
            c.id[..id_len.min(c.id.len())].to_string(),
            c.image.clone(),
            format!("\"{cmd}\""),
            ago(now_secs() - c.created),
            status(&c),
            String::new(),
            c.name.clone(),
        ]);
    }
    print_table(&rows);
    Ok(0)
}

/// A container as docker's `ps --format` sees it.
fn item(c: &Container, id_len: usize) -> serde_json::Value {
    let state = match c.state {
        State::Created => "created",
        State::Running => "running",
        State::Exited => "exited",
    };
    serde_json::json!({
        "ID": &c.id[..id_len.min(c.id.len())],
        "Image": c.image,
        "Command": format!("\"{}\"", c.command.join(" ")),
        "CreatedAt": docker_time(c.created),
        "RunningFor": ago(now_secs() - c.created),
        "Status": status(c),
        "State": state,
        "Names": c.name,
        "Ports": "",
        "Labels": "",
        "Mounts": "",
        "Networks": "",
        "Size": "",
        "LocalVolumes": "0",
    })
}

pub fn run_rm(a: RmArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let containers = Containers::new(&g.root());
    let mut failed = false;
    for key in &a.containers {
        let Some(c) = containers.find(key).map(|c| effective(&c)) else {
            eprintln!("Error response from daemon: No such container: {key}");
            failed = true;
            continue;
        };
        if c.state == State::Running {
            if !a.force {
                eprintln!(
                    "Error response from daemon: You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    c.id
                );
                failed = true;
                continue;
            }
            if let Some(p) = c.pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            // Let its `strata run` record the exit and unmount before the directory goes.
            crate::cmd::lifecycle::wait_exit(&containers, &c.id, std::time::Duration::from_secs(5));
        }
        let dir = containers.dir_of(&c.id);
        for m in ["rootfs", "lower"] {
            let _ = nix::mount::umount2(&dir.join(m), nix::mount::MntFlags::MNT_DETACH);
        }
        containers.remove(&c.id)?;
        println!("{key}");
    }
    if failed {
        bail!("not all containers were removed");
    }
    Ok(0)
}
