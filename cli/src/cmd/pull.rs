//! `strata pull`.

use anyhow::Context as _;
use strata_image::{Images, Progress};
use strata_oci::Reference;
use strata_storage::store::ImageRecord;

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
    let before = ctx
        .catalog()
        .resolve(&a.image)
        .ok()
        .map(|(i, _)| i.manifest);
    let rec = rt.block_on(pull(&ctx, &r, &a.platform, a.all, &display))?;
    display.line(&status_line(&r, before == Some(rec.manifest)));
    // docker ends with the reference pulled (alone with -q).
    println!("{r}");
    Ok(0)
}

/// Whether a pull failed because the registry has no such manifest or repository.
fn not_found(e: &dyn std::error::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("404 Not Found")
            || text.contains("MANIFEST_UNKNOWN")
            || text.contains("NAME_UNKNOWN")
        {
            return true;
        }
        cur = err.source();
    }
    false
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
    ctx: &Images,
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
    // Printed once the manifest is found, as docker's (a missing one prints only the error).
    let pulling = format!("{what}: Pulling from {}", r.repository);
    let resolved = std::sync::atomic::AtomicBool::new(false);
    let show = |p: Progress| {
        if matches!(p, Progress::Resolved { .. })
            && !resolved.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            display.line(&pulling);
        }
        display.event(p)
    };
    let rec = match ctx.puller().pull(r, platform, all, &show).await {
        Ok(rec) => rec,
        Err(e) if !resolved.load(std::sync::atomic::Ordering::SeqCst) && not_found(&e) => {
            return Err(crate::cmd::daemon(format!(
                "failed to resolve reference \"{r}\": {r}: not found"
            )));
        }
        Err(e) => return Err(anyhow::Error::from(e).context(format!("pulling {r}"))),
    };
    display.line(&format!("Digest: {}", rec.index.unwrap_or(rec.manifest)));
    if all {
        let layers = ctx.catalog().open_layers(&rec)?;
        ctx.prefetcher()
            .fetch_all(&layers)
            .await
            .with_context(|| format!("fetching all content of {r}"))?;
        display.line("All content fetched");
    }
    Ok(rec)
}
