//! `strata push`.

use anyhow::Context as _;
use strata_fetcher::Reference;
use strata_fetcher::image::Progress;

use crate::global::{GlobalArgs, runtime};
use crate::progress::Display;

/// Arguments of `push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Image to push (its name is where it goes).
    pub image: String,
    /// Print nothing but errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub fn run_push(a: PushArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let target: Reference = crate::cmd::refs::parse(&a.image)?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .resolve(&a.image)
        .with_context(|| format!("An image does not exist locally with the tag: {}", a.image))?;
    let rt = runtime()?;
    let display = Display::new(a.quiet);
    display.line(&format!(
        "The push refers to repository [{}]",
        target.full_repository()
    ));
    let show = |p: Progress| display.event(p);
    let digest = rt
        .block_on(strata_fetcher::push::push(&ctx, &img, &target, &show))
        .with_context(|| format!("pushing {target}"))?;
    display.line(&format!(
        "{}: digest: {digest}",
        target.tag.as_deref().unwrap_or("latest")
    ));
    Ok(0)
}
