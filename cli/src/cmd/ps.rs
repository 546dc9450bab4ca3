//! `strata ps` and `strata rm`.

use strata_image::Images;
use strata_oci::timefmt::now_secs;
use strata_runner::state::{Container, Containers, State};

use crate::cmd::images::{ago, docker_time, human_duration, human_size, print_table};
use crate::cmd::ps_filter::{Extra, Filters};
use crate::format::Format;
use crate::global::GlobalArgs;
use crate::gotmpl::Missing;

/// Arguments of `ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show all containers (default: running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Filter output based on conditions provided (status=, name=, id=, label=, exited=,
    /// ancestor=).
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Only show ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show only the latest created container (includes all states).
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Show n last created containers (includes all states).
    #[arg(short = 'n', long = "last", default_value_t = -1, allow_negative_numbers = true)]
    pub last: i64,
    /// Display total file sizes.
    #[arg(short = 's', long)]
    pub size: bool,
    /// `table`, `json`, `table TEMPLATE` or a Go template (fields: .ID .Image .Command
    /// .CreatedAt .RunningFor .Status .State .Names .Ports .Labels .Size).
    #[arg(long)]
    pub format: Option<String>,
    /// Do not truncate IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
}

/// Column titles of `table` templates.
const HEADER: [(&str, &str); 14] = [
    ("ID", "CONTAINER ID"),
    ("Image", "IMAGE"),
    ("Command", "COMMAND"),
    ("CreatedAt", "CREATED AT"),
    ("RunningFor", "CREATED"),
    ("Status", "STATUS"),
    ("State", "STATE"),
    ("Names", "NAMES"),
    ("Ports", "PORTS"),
    ("Labels", "LABELS"),
    ("Mounts", "MOUNTS"),
    ("Networks", "NETWORKS"),
    ("Size", "SIZE"),
    ("LocalVolumes", "LOCAL VOLUMES"),
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
        // A zombie is gone too: this machine's init may never reap it.
        let alive = c.pid.is_some_and(strata_storage::leftovers::pid_alive);
        if !alive {
            c.state = State::Exited;
            c.exit_code = c.exit_code.or(Some(255));
        }
    }
    c
}

/// The STATUS column: "Up 5 seconds", "Exited (0) 3 minutes ago", "Created".
pub fn status(c: &Container) -> String {
    let now = now_secs();
    match c.state {
        State::Created => "Created".into(),
        State::Running => format!(
            "Up {}",
            human_duration(now - c.started.unwrap_or(c.created))
        ),
        State::Exited => match c.finished {
            Some(f) => format!("Exited ({}) {}", c.exit_code.unwrap_or(0), ago(now - f)),
            // Its supervisor died with it: when is not known.
            None => format!("Exited ({})", c.exit_code.unwrap_or(0)),
        },
    }
}

/// The command line as docker's daemon shows it: arguments joined by spaces, quoted for a
/// POSIX shell where they need it (`sh -c 'echo hi'`).
pub fn shell_join(args: &[String]) -> String {
    let quote = |a: &String| {
        let plain = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
        if plain {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', "'\\''"))
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Go's `strconv.Quote` for the text docker's `ps` prints.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// docker's `Ellipsis`: at most `n` characters, the last one "…" when cut.
fn ellipsis(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    format!("{}…", s.chars().take(n - 1).collect::<String>())
}

pub fn run_ps(a: PsArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let format = Format::parse_for(
        a.format.as_deref(),
        Missing::Field("*formatter.ContainerContext"),
        true,
    )?;
    let mut filters = Filters::parse(&a.filter)?;
    let root = g.root();
    let containers = Containers::new(&root);
    let ctx = g.context().ok();
    let mut list = listed(&containers, ctx.as_ref());
    list.sort_by_key(|(c, x)| std::cmp::Reverse((c.created, x.created_nanos)));
    filters.resolve_order(&list)?;
    let last = if a.latest { 1 } else { a.last };
    // docker: -n and -l take containers of every state; a status filter too.
    let all = a.all || last > 0 || filters.has("status");
    list.retain(|(c, x)| (all || c.state == State::Running) && filters.matches(c, x));
    if last >= 0 {
        list.truncate(usize::try_from(last).unwrap_or(usize::MAX));
    }
    let id_len = if a.no_trunc { usize::MAX } else { 12 };
    // docker: a --format other than `table` wins over -q.
    if a.quiet && format.is_default() {
        for (c, _) in list {
            println!("{}", &c.id[..id_len.min(c.id.len())]);
        }
        return Ok(0);
    }
    if !format.is_default() {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|(c, x)| item(c, x, !a.no_trunc, a.size))
            .collect();
        format.print(&items, &HEADER)?;
        return Ok(0);
    }
    print_containers(&list, &a, id_len);
    Ok(0)
}

/// Every container with what `ps` shows of it beside its record, in the order stored.
fn listed(containers: &Containers, ctx: Option<&Images>) -> Vec<(Container, Extra)> {
    containers
        .list()
        .iter()
        .map(|c| {
            let mut c = effective(c);
            // docker shows the image's id once the name no longer names the container's image.
            let named = ctx.is_none_or(|ctx| {
                ctx.catalog()
                    .resolve(&c.image)
                    .is_ok_and(|(i, _)| i.config.to_string() == c.image_id)
            });
            if !named {
                let hex = c.image_id.trim_start_matches("sha256:");
                c.image = hex[..12.min(hex.len())].to_string();
            }
            let extra = Extra::load(containers, &c);
            (c, extra)
        })
        .collect()
}

/// `ps`'s default table, with a SIZE column for `--size`.
fn print_containers(list: &[(Container, Extra)], a: &PsArgs, id_len: usize) {
    let mut header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ]
    .map(String::from)
    .to_vec();
    if a.size {
        header.push("SIZE".into());
    }
    let mut rows = vec![header];
    for (c, x) in list {
        let it = item(c, x, !a.no_trunc, a.size);
        let cell = |k: &str| it[k].as_str().unwrap_or("").to_string();
        let mut row = vec![
            c.id[..id_len.min(c.id.len())].to_string(),
            cell("Image"),
            cell("Command"),
            cell("RunningFor"),
            cell("Status"),
            String::new(),
            cell("Names"),
        ];
        if a.size {
            row.push(cell("Size"));
        }
        rows.push(row);
    }
    print_table(&rows);
}

/// A container as docker's `ps --format` sees it (docker's `ContainerContext` fields).
fn item(c: &Container, x: &Extra, trunc: bool, size: bool) -> serde_json::Value {
    let state = match c.state {
        State::Created => "created",
        State::Running => "running",
        State::Exited => "exited",
    };
    let mut command = shell_join(&c.command);
    if trunc {
        command = ellipsis(&command, 20);
    }
    let id = if trunc {
        &c.id[..12.min(c.id.len())]
    } else {
        &c.id
    };
    let mut labels: Vec<String> = x.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    let size = if size {
        let rw = x.size_rw();
        format!(
            "{} (virtual {})",
            human_size(rw),
            human_size(rw + x.image_size)
        )
    } else {
        human_size(0)
    };
    serde_json::json!({
        "ID": id,
        "Image": c.image,
        "Command": go_quote(&command),
        "CreatedAt": docker_time(c.created),
        "RunningFor": ago(now_secs() - c.created),
        "Status": status(c),
        "State": state,
        "Names": c.name,
        "Ports": "",
        "Labels": labels.join(","),
        "Mounts": "",
        "Networks": x.network,
        "Platform": {"architecture": x.arch, "os": x.os},
        "Size": size,
        "LocalVolumes": "0",
    })
}

pub fn run_rm(a: RmArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let containers = Containers::new(&g.root());
    let mut failed = false;
    for key in &a.containers {
        let Some(c) = containers.find(key).map(|c| effective(&c)) else {
            eprintln!("Error response from daemon: No such container: {key}");
            // docker's `rm -f` says so but exits 0 for a container that is not there.
            failed |= !a.force;
            continue;
        };
        if c.state == State::Running {
            if !a.force {
                eprintln!(
                    "Error response from daemon: cannot remove container \"{key}\": container is running: stop the container before removing or force remove"
                );
                failed = true;
                continue;
            }
            if let Some(p) = c.pid {
                let _ =
                    nix::sys::signal::kill(crate::cmd::pid(p), nix::sys::signal::Signal::SIGKILL);
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
        // docker's CLI prints each failure and exits 1 with nothing more.
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_dockers() {
        let cmd: Vec<String> = ["sh", "-c", "echo started; sleep 300"]
            .map(String::from)
            .to_vec();
        assert_eq!(shell_join(&cmd), "sh -c 'echo started; sleep 300'");
        assert_eq!(
            go_quote(&ellipsis(&shell_join(&cmd), 20)),
            "\"sh -c 'echo started…\""
        );
        assert_eq!(shell_join(&["it's".to_string()]), "'it'\\''s'");
        assert_eq!(ellipsis("short", 20), "short");
    }
}
