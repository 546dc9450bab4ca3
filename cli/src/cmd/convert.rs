//! `strata convert`.

use anyhow::Context as _;
use strata_image::Progress;
use strata_oci::Reference;

use crate::global::{GlobalArgs, runtime};
use crate::progress::Display;

/// Arguments of `convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source image.
    pub source: String,
    /// Destination image (any registry the client can push to).
    pub target: String,
    /// Platform to choose from a multi-platform source.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Lazy format to write: zstd-chunked (podman/containers-storage, strata's native) or
    /// estargz (stargz-snapshotter).
    #[arg(long, value_enum, default_value = "zstd-chunked")]
    pub format: FormatArg,
    /// Print only the new manifest digest.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// zstd:chunked.
    ZstdChunked,
    /// eStargz.
    Estargz,
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let src: Reference = a.source.parse()?;
    let dst: Reference = a.target.parse()?;
    let ctx = g.context()?;
    let rt = runtime()?;
    let display = Display::new(a.quiet);
    let show = |p: Progress| display.event(p);
    let digest = rt
        .block_on(ctx.converter().convert(
            &src,
            &dst,
            &a.platform,
            match a.format {
                FormatArg::ZstdChunked => strata_image::Format::ZstdChunked,
                FormatArg::Estargz => strata_image::Format::Estargz,
            },
            &show,
        ))
        .with_context(|| format!("converting {src} to {dst}"))?;
    let what = match a.format {
        FormatArg::ZstdChunked => "zstd:chunked",
        FormatArg::Estargz => "eStargz",
    };
    display.line(&format!("{dst}: converted to {what}"));
    println!("{digest}");
    Ok(0)
}
