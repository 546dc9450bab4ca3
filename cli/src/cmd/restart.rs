//! `restart`, `system prune` and `system df`, as docker's.

use std::collections::HashSet;
use std::io::BufRead as _;

use anyhow::Context as _;
use strata_runner::state::{Containers, State};

use crate::global::GlobalArgs;

/// Arguments of `restart`.
#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Containers (name or id).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Arguments of `system prune`.
#[derive(Debug, clap::Args)]
pub struct SystemPruneArgs {
    /// Also images with a name that no container uses, and the build cache.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Stops each container and starts it again in the background, on its own writable layer.
pub fn run_restart(a: RestartArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let cs = Containers::new(&g.root());
    let mut failed = false;
    for key in &a.containers {
        let c = match crate::cmd::lifecycle::stop_one(&cs, key, a.time) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                failed = true;
                continue;
            }
        };
        // `start` in a child of its own: it respawns itself from its command line.
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(global_args(g))
            .args(["start", &c.id])
            .stdout(std::process::Stdio::null())
            .status()
            .context("starting strata start")?;
        if !status.success() {
            eprintln!("Error response from daemon: cannot restart container {key}");
            failed = true;
            continue;
        }
        println!("{key}");
    }
    Ok(if failed { 1 } else { 0 })
}

fn global_args(g: &GlobalArgs) -> Vec<String> {
    let mut v = vec!["--root".to_string(), g.root().display().to_string()];
    for r in &g.insecure_registries {
        v.extend(["--insecure-registry".to_string(), r.clone()]);
    }
    if let Some(mb) = g.cache_mb {
        v.extend(["--cache-mb".to_string(), mb.to_string()]);
    }
    v.extend(["--log-level".to_string(), g.log_level.clone()]);
    v
}

/// Removes stopped containers, then images no container uses (dangling ones; with `--all`
/// every unused one and the build cache), then unreferenced data.
pub fn run_system_prune(a: SystemPruneArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    if !a.force {
        let images = if a.all {
            "all images without at least one container associated to them"
        } else {
            "all dangling images"
        };
        println!(
            "WARNING! This will remove:\n  - all stopped containers\n  - {images}\n  - unused build cache\n\nAre you sure you want to continue? [y/N] "
        );
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y") {
            return Ok(0);
        }
    }
    let cs = Containers::new(&g.root());
    let mut removed = Vec::new();
    for c in cs.list() {
        let c = crate::cmd::ps::effective(&c);
        if c.state == State::Running {
            continue;
        }
        let dir = cs.dir_of(&c.id);
        for m in ["rootfs", "lower"] {
            let _ = nix::mount::umount2(&dir.join(m), nix::mount::MntFlags::MNT_DETACH);
        }
        cs.remove(&c.id)?;
        removed.push(c.id);
    }
    if !removed.is_empty() {
        println!("Deleted Containers:\n{}\n", removed.join("\n"));
    }
    if a.all {
        crate::cmd::rmi::untag_unused(g)?;
    }
    crate::cmd::rmi::prune_images(g, true)
}

/// Disk usage by kind, with what pruning would give back (docker's RECLAIMABLE: images no
/// container uses, containers that do not run, and the whole chunk cache, which refills).
pub fn run_system_df(g: &GlobalArgs) -> anyhow::Result<i32> {
    use crate::cmd::images::{human_size, print_table};
    use crate::cmd::rmi::{dir_size, in_use};
    let ctx = g.context()?;
    let cs = Containers::new(&g.root());
    let images = ctx.store.images()?;
    let layer_bytes = |layers: &HashSet<&strata_fetcher::Digest>| -> u64 {
        layers
            .iter()
            .filter_map(|d| ctx.store.layer(d).ok().flatten())
            .map(|l| l.content_bytes)
            .sum()
    };
    let (used, unused): (Vec<_>, Vec<_>) = images.iter().partition(|i| in_use(&cs, i));
    let all_layers: HashSet<_> = images.iter().flat_map(|i| i.layers.iter()).collect();
    let used_layers: HashSet<_> = used.iter().flat_map(|i| i.layers.iter()).collect();
    let only_unused: HashSet<_> = unused
        .iter()
        .flat_map(|i| i.layers.iter())
        .filter(|d| !used_layers.contains(d))
        .collect();
    let list: Vec<_> = cs.list().iter().map(crate::cmd::ps::effective).collect();
    let upper = |c: &strata_runner::state::Container| dir_size(&cs.dir_of(&c.id).join("upper"));
    let upper_total: u64 = list.iter().map(upper).sum();
    let upper_idle: u64 = list
        .iter()
        .filter(|c| c.state != State::Running)
        .map(upper)
        .sum();
    let running = list.iter().filter(|c| c.state == State::Running).count();
    let (chunks, cache_bytes) = ctx.fetcher.cache().usage()?;
    let reclaim = |part: u64, total: u64| {
        let pct = (part * 100).checked_div(total).unwrap_or(0);
        format!("{} ({pct}%)", human_size(part))
    };
    let image_total = layer_bytes(&all_layers);
    let mut rows = vec![
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
            .map(String::from)
            .to_vec(),
        vec![
            "Images".into(),
            images.len().to_string(),
            used.len().to_string(),
            human_size(image_total),
            reclaim(layer_bytes(&only_unused), image_total),
        ],
        vec![
            "Containers".into(),
            list.len().to_string(),
            running.to_string(),
            human_size(upper_total),
            reclaim(upper_idle, upper_total),
        ],
        vec![
            "Chunk cache".into(),
            chunks.to_string(),
            "-".into(),
            human_size(cache_bytes),
            reclaim(cache_bytes, cache_bytes),
        ],
    ];
    // Temporaries of commands still running (a killed command's were removed when this one
    // opened the root): shown only when there are some.
    let temps = strata_fetcher::leftovers::pending(&g.root());
    if temps.entries > 0 {
        rows.push(vec![
            "Temporary files".into(),
            temps.entries.to_string(),
            temps.entries.to_string(),
            human_size(temps.bytes),
            reclaim(0, temps.bytes),
        ]);
    }
    print_table(&rows);
    Ok(0)
}
