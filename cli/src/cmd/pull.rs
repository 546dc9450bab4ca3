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
    let r: Reference = crate::cmd::refs::parse(&a.image)?;
    let ctx = g.context()?;
    let rt = runtime()?;
    let display = Display::new(a.quiet);
    let before = ctx.resolve(&a.image).ok().map(|(i, _)| i.manifest);
    let rec = rt.block_on(pull(&ctx, &r, &a.platform, a.all, &display))?;
    display.line(&status_line(&r, before == Some(rec.manifest)));
    // docker ends with the reference pulled (alone with -q).
    println!("{r}");
    Ok(0)
}

/// docker's last line of a pull.
fn status_line(r: &Reference, up_to_date: bool) -> String {
    let what = if up_to_date {
        "Image is up to date for"
    } else {
        "Downloaded newer image for"
    };
    format!("Status: {what} {}", familiar(r))
}

/// `repo:tag` or `repo@digest`, as docker shows a reference.
pub fn familiar(r: &Reference) -> String {
    match (&r.tag, &r.digest) {
        (_, Some(d)) => format!("{}@{d}", r.familiar_repository()),
        (t, None) => format!(
            "{}:{}",
            r.familiar_repository(),
            t.as_deref().unwrap_or("latest")
        ),
    }
}

/// Pulls `r` lazily (and everything with `all`), showing progress.
pub async fn pull(
    ctx: &Context,
    r: &Reference,
    platform: &str,
    all: bool,
    display: &Display,
) -> anyhow::Result<ImageRecord> {
    // docker: "TAG: Pulling from PATH", or the whole reference for one by digest.
    let what = match (&r.digest, &r.tag) {
        (Some(_), _) => familiar(r),
        (None, t) => t.as_deref().unwrap_or("latest").to_string(),
    };
    display.line(&format!("{what}: Pulling from {}", r.repository));
    let show = |p: Progress| display.event(p);
    let rec = ctx
        .pull(r, platform, all, &show)
        .await
        .with_context(|| format!("pulling {r}"))?;
    display.line(&format!("Digest: {}", rec.index.unwrap_or(rec.manifest)));
    if all {
        let layers = ctx.open_layers(&rec)?;
        ctx.fetch_all(&layers)
            .await
            .with_context(|| format!("fetching all content of {r}"))?;
        display.line("All content fetched");
    }
    Ok(rec)
}
