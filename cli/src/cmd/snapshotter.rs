//! `strata snapshotter`: containerd's snapshots API on a unix socket (a proxy plugin), with
//! the layers of lazily pulled images served by the layer store.

use std::path::PathBuf;

use crate::global::{GlobalArgs, runtime};

/// Arguments of `snapshotter`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The unix socket to serve on (containerd's `[proxy_plugins.NAME] address`).
    #[arg(long, default_value = "/run/strata/snapshotter.sock")]
    pub address: PathBuf,
    /// What to fetch ahead when a remote layer's image is first served: auto, profile, all,
    /// none.
    #[arg(long, default_value = "auto")]
    pub prefetch: strata_formats::profile::Prefetch,
}

/// Serves until SIGINT or SIGTERM.
pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let mut images = g.context()?;
    images.prefetch = a.prefetch;
    let rt = runtime()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        };
        strata_snapshotter::serve(images, &a.address, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(0)
}
