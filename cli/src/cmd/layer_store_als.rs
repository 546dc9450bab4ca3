//! `strata layer-store DIR`: containers/storage's additional layer store (podman, CRI-O) over
//! strata's layer store, served in the foreground until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use strata_layerstore::als::AlsOptions;
use strata_layerstore::als_fs::serve_als;

use crate::global::{GlobalArgs, runtime};

/// Arguments of `layer-store`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to mount the store (storage.conf: `additionallayerstores = ["DIR:ref"]`).
    pub dir: PathBuf,
    /// Platform to choose from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// What to fetch before it is read once an image is added: auto, profile, all, none.
    #[arg(long, default_value = "auto")]
    pub prefetch: strata_formats::profile::Prefetch,
}

/// Serves the store at `a.dir` until it is unmounted or signalled.
pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let images = g.context()?;
    let rt = runtime()?;
    let opts = AlsOptions {
        platform: a.platform,
        prefetch: a.prefetch.to_string(),
    };
    serve_als(images, &rt, &g.root(), &a.dir, opts)
        .with_context(|| format!("additional layer store at {}", a.dir.display()))?;
    Ok(0)
}
