//! `restart`, as docker's.

use anyhow::Context as _;
use strata_runner::state::Containers;

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
