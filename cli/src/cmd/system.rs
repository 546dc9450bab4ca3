//! `system df` (in df.rs) and `system prune`, as docker's.

use std::io::BufRead as _;

use strata_runner::state::{Containers, State};

use crate::cmd::{df, rmi};
use crate::global::GlobalArgs;

/// `system` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SystemCmd {
    /// Show disk usage.
    Df(df::DfArgs),
    /// Remove stopped containers, images no container uses that have no name (with -a: every
    /// image no container uses), the build cache, then unreferenced data.
    Prune(SystemPruneArgs),
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

/// Runs a `system` subcommand.
pub fn run_system(cmd: SystemCmd, g: &GlobalArgs) -> anyhow::Result<i32> {
    match cmd {
        SystemCmd::Prune(a) => run_system_prune(a, g),
        SystemCmd::Df(a) => df::run_df(a, g),
    }
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
        rmi::untag_unused(g)?;
    }
    rmi::prune_images(g, true)
}
