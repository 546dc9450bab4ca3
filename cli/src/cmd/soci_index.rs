//! `strata index`: a SOCI index (v2) for a gzip image, built and pushed.

use anyhow::Context as _;
use strata_formats::soci::{DEFAULT_MIN_LAYER_SIZE, DEFAULT_SPAN_SIZE};
use strata_image::Progress;
use strata_oci::Reference;

use crate::global::{GlobalArgs, runtime};
use crate::progress::Display;

/// Arguments of `index`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image to index; the result is pushed under the same name.
    pub image: String,
    /// Platform to choose from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Layers smaller than this (bytes) get no ztoc: they are fetched whole, as SOCI does.
    #[arg(long, default_value_t = DEFAULT_MIN_LAYER_SIZE)]
    pub min_layer_size: u64,
    /// Uncompressed bytes between checkpoints.
    #[arg(long, default_value_t = DEFAULT_SPAN_SIZE, value_parser = clap::value_parser!(u64).range(65536..))]
    pub span_size: u64,
    /// Print only the SOCI index digest.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let image: Reference = a.image.parse()?;
    let ctx = g.context()?;
    let rt = runtime()?;
    let display = Display::new(a.quiet);
    let show = |p: Progress| display.event(p);
    let done = rt
        .block_on(ctx.soci_writer().index(
            &image,
            &a.platform,
            a.min_layer_size,
            a.span_size,
            &show,
        ))
        .with_context(|| format!("indexing {image}"))?;
    display.line(&format!(
        "{image}: SOCI index {} ({} ztocs), manifest {}, image index {}",
        done.index, done.ztocs, done.manifest, done.image_index
    ));
    println!("{}", done.index);
    Ok(0)
}
