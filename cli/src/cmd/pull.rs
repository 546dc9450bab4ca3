//! `strata pull`.

use anyhow::Context as _;
use strata_fetcher::Reference;
use strata_fetcher::image::{Context, Progress};
use strata_fetcher::store::ImageRecord;

use crate::global::{GlobalArgs, runtime};
use crate::progress::Display;

/// Arguments of `pull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image reference, e.g. 127.0.0.1:5000/app:1 or busybox.
    pub image: String,
    /// Fetch every chunk too, for offline use.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Platform to choose from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Print nothing but errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let r: Reference = a.image.parse()?;
    let ctx = g.context()?;
    let rt = runtime()?;
    let display = Display::new(a.quiet);
    let rec = rt.block_on(pull(&ctx, &r, &a.platform, a.all, &display))?;
    display.line(&format!("Status: image is up to date for {r}"));
    if a.quiet {
        println!("{r}");
    }
    let _ = rec;
    Ok(0)
}

/// Pulls `r` lazily (and everything with `all`), showing progress.
pub async fn pull(
    ctx: &Context,
    r: &Reference,
    platform: &str,
    all: bool,
    display: &Display,
) -> anyhow::Result<ImageRecord> {
    display.line(&format!(
        "{}: Pulling from {}",
        r.tag.as_deref().unwrap_or("latest"),
        r.familiar_repository()
    ));
    let show = |p: Progress| display.event(p);
    let rec = ctx
        .pull(r, platform, all, &show)
        .await
        .with_context(|| format!("pulling {r}"))?;
    if all {
        let layers = ctx.open_layers(&rec)?;
        ctx.fetch_all(&layers)
            .await
            .with_context(|| format!("fetching all content of {r}"))?;
        display.line("All content fetched");
    }
    Ok(rec)
}
