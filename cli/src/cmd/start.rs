//! `strata start`: runs an exited container again on its own upper layer.

use anyhow::{Context as _, bail};
use strata_runner::Spec;
use strata_runner::state::{Containers, State};

use crate::cmd::container::{Streams, execute, respawn_in_background};
use crate::global::{GlobalArgs, runtime};
use strata_overlay::root::mount_root;

/// Arguments of `start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Stay attached: wait for the container and exit with its code.
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Container (name or id).
    pub container: String,
}

pub fn run_start(a: StartArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let containers = Containers::new(&g.root());
    let Some(c) = containers.find(&a.container) else {
        eprintln!(
            "Error response from daemon: No such container: {}",
            a.container
        );
        bail!("Error: failed to start containers: {}", a.container);
    };
    if c.state == State::Running && c.pid.is_some_and(strata_storage::leftovers::pid_alive) {
        println!("{}", a.container);
        return Ok(0);
    }
    let dir = containers.dir_of(&c.id);
    if !a.attach {
        return start_in_background(&containers, &c.id, &a.container, &dir);
    }
    let spec_path = dir.join("spec.json");
    let mut spec: Spec = serde_json::from_slice(
        &std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )
    .with_context(|| format!("parsing {}", spec_path.display()))?;
    let mut ctx = g.context()?;
    ctx.prefetch = strata_formats::profile::Prefetch::Auto;
    let rt = runtime()?;
    let (img, _) = ctx
        .catalog()
        .image_of(c.image_manifest.as_deref(), &c.image_id)
        .with_context(|| format!("image {} of container {}", c.image, a.container))?;
    let root_mount = mount_root(&ctx, rt.handle(), &img, &dir)?;
    spec.rootfs = root_mount.rootfs.clone();
    // `run`'s hint is not `start`'s.
    spec.failure_hint = None;
    let streams = if spec.tty {
        Streams::Tty
    } else {
        Streams::Output
    };
    execute(&rt, &containers, &spec, c, streams, root_mount)
}

fn start_in_background(
    containers: &Containers,
    id: &str,
    name: &str,
    dir: &std::path::Path,
) -> anyhow::Result<i32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("container.log"))?;
    let before = containers.find(id).and_then(|c| c.finished);
    let mut child = respawn_in_background("start", "--attach", log, &dir.join("strata.log"))?;
    loop {
        let now = containers.find(id);
        if now
            .as_ref()
            .is_some_and(|c| c.state == State::Running || c.finished != before)
        {
            println!("{name}");
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            // As docker's: why (the cause its container said last), then which.
            let last = crate::cmd::logs::last_line(&dir.join("container.log"));
            match last.strip_prefix("strata: ") {
                Some(why) => eprintln!("{why}"),
                None => eprintln!("container {name} did not start ({status})"),
            }
            bail!("Error: failed to start containers: {name}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
