//! `strata profile`: runs a container once, records which chunks it read in which order, and
//! stores them with the image as its prefetch profile, so that later cold starts anywhere
//! fetch them up front (after `strata push`). With `--publish` the profile goes to the image's
//! registry as a referrer instead (a learned profile, see `strata_image::learned`): the image
//! keeps its digest, and cold starts anywhere find and replay it.

use anyhow::{Context as _, bail};
use strata_formats::profile::{Prefetch, Profile};
use strata_oci::Reference;

use crate::cmd::run as run_cmd;
use crate::global::GlobalArgs;

/// Arguments of `profile`: those of `run`, and where to store the result.
#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true, disable_help_flag = true)]
pub struct ProfileArgs {
    /// Name for the profiled image (default: the image's own name).
    #[arg(long, conflicts_with = "publish")]
    pub tag: Option<String>,
    /// Publish the profile beside the image in its registry (an OCI referrer of its
    /// manifest) instead of storing a new image.
    #[arg(long)]
    pub publish: bool,
    #[command(flatten)]
    pub run: run_cmd::Args,
}

pub fn run(a: ProfileArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let image = a.run.image.clone();
    if a.publish {
        return publish(a.run, g);
    }
    let target: Reference = match &a.tag {
        Some(t) => t.parse()?,
        None => match image.parse::<Reference>() {
            Ok(parsed) if parsed.digest.is_none() => parsed,
            _ => bail!("name the profiled image with --tag (the image {image} has no tag)"),
        },
    };
    let (ctx, img, profile) = record(a.run, g, "stored")?;
    let rec = ctx.profiles().with_profile(&img, &profile)?;
    ctx.catalog().tag(&rec, &target)?;
    eprintln!("Profile: {}", crate::cmd::learn::summary(&profile));
    println!("{target}@{}", rec.manifest);
    Ok(0)
}

/// Runs `r` once in the foreground, recording only what the process reads (nothing fetched
/// ahead); returns the image and its profile. A command that exits non-zero records nothing
/// (`what` says what did not happen).
fn record(
    mut r: run_cmd::Args,
    g: &GlobalArgs,
    what: &str,
) -> anyhow::Result<(
    strata_image::Images,
    strata_storage::store::ImageRecord,
    Profile,
)> {
    let image = r.image.clone();
    if r.detach {
        bail!("profile runs in the foreground (no -d)");
    }
    r.rm = true;
    r.prefetch = Prefetch::None;
    let (code, profile) = run_cmd::run_recorded(r, g, true)?;
    if code != 0 {
        bail!("the command exited with code {code}: no profile {what}");
    }
    let profile = profile.context("the container's reads were not recorded")?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .catalog()
        .resolve(&image)
        .with_context(|| format!("No such image: {image}"))?;
    Ok((ctx, img, profile))
}

/// `profile --publish`: records a run, then publishes what it read as a learned profile of
/// the image (a referrer of its manifest in the registry it came from).
fn publish(r: run_cmd::Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let (ctx, img, profile) = record(r, g, "published")?;
    let artifact = crate::cmd::learn::publish(&ctx, &crate::global::runtime()?, &img, &profile)?;
    let repo = strata_image::catalog::source_ref(&img)?;
    eprintln!(
        "Profile: {}, published as {artifact}",
        crate::cmd::learn::summary(&profile)
    );
    println!("{}@{artifact}", repo.full_repository());
    Ok(0)
}
