//! `strata push`, with docker's transcript: the repository, a line per layer (pushed, already
//! there, or mounted from another repository of the registry, chosen as containerd chooses),
//! then `TAG: digest: DIGEST size: N`.

use anyhow::Context as _;
use strata_image::{Images, Progress};
use strata_oci::Reference;
use strata_storage::store::ImageRecord;

use crate::global::{GlobalArgs, runtime};
use crate::progress::Display;

/// Arguments of `push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Image to push (its name is where it goes).
    pub image: String,
    /// Push all tags of the repository.
    #[arg(short = 'a', long = "all-tags")]
    pub all_tags: bool,
    /// Print nothing but errors (and the reference pushed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Whether the name the user gave has a tag or digest of its own.
fn names_tag(name: &str) -> bool {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.contains(':') || name.contains('@')
}

pub fn run_push(a: PushArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let target: Reference = crate::cmd::refs::parse(&a.image)?;
    let display = Display::new(a.quiet);
    if a.all_tags && names_tag(&a.image) {
        anyhow::bail!("tag can't be used with --all-tags/-a");
    }
    if !a.all_tags && !names_tag(&a.image) {
        display.line("Using default tag: latest");
    }
    display.line(&format!(
        "The push refers to repository [{}]",
        target.full_repository()
    ));
    let ctx = g.context()?;
    let targets: Vec<Reference> = if a.all_tags {
        let mut tags: Vec<Reference> = ctx
            .store()
            .refs()?
            .into_keys()
            .filter_map(|k| k.parse::<Reference>().ok())
            .filter(|r| r.full_repository() == target.full_repository() && r.tag.is_some())
            .collect();
        tags.sort_by(|x, y| x.tag.cmp(&y.tag));
        if tags.is_empty() {
            anyhow::bail!(
                "An image does not exist locally with the tag: {}",
                target.full_repository()
            );
        }
        tags
    } else {
        vec![target]
    };
    let rt = runtime()?;
    for t in &targets {
        let Ok((img, _)) = ctx.catalog().resolve(&t.to_string()) else {
            anyhow::bail!("tag does not exist: {t}");
        };
        let show = |p: Progress| display.event(p);
        let digest = rt
            .block_on(ctx.pusher().push(&mount_first(&img, t), t, &show))
            .with_context(|| format!("pushing {t}"))?;
        let size = ctx.store().get_blob(&img.manifest).map_or(0, |m| m.len());
        display.line(&format!(
            "{}: digest: {digest} size: {size}",
            t.tag.as_deref().unwrap_or("latest")
        ));
        remember_source(&ctx, &img, t)?;
        if a.quiet {
            println!("{}", crate::cmd::pull::familiar(t));
        }
    }
    Ok(0)
}

/// The image with the repository to mount its layers from first: of its sources on the
/// target's registry, the one sharing the most leading path components with the target (the
/// last of equals, in name order), as containerd's `selectRepositoryMountCandidate` picks.
fn mount_first(img: &ImageRecord, target: &Reference) -> ImageRecord {
    let prefix = format!("{}/", target.registry);
    let want: Vec<&str> = target.repository.split('/').collect();
    let mut candidates: Vec<&String> = img
        .sources
        .iter()
        .filter(|s| {
            s.strip_prefix(&prefix)
                .is_some_and(|repo| repo != target.repository)
        })
        .collect();
    candidates.sort();
    let mut best: Option<(usize, &String)> = None;
    for c in candidates {
        let repo = &c[prefix.len()..];
        let common = repo
            .split('/')
            .zip(&want)
            .take_while(|(x, y)| x == *y)
            .count();
        if best.is_none_or(|(n, _)| common >= n) {
            best = Some((common, c));
        }
    }
    let mut out = img.clone();
    if let Some((_, chosen)) = best {
        let chosen = chosen.clone();
        out.sources.retain(|s| *s != chosen);
        out.sources.insert(0, chosen);
    }
    out
}

/// After a push the target repository holds the image's blobs: a source for later pulls of
/// its layers and mounts, and a `RepoDigests` entry, as docker records it.
fn remember_source(ctx: &Images, img: &ImageRecord, target: &Reference) -> anyhow::Result<()> {
    let repo = target.full_repository();
    if img.sources.contains(&repo) {
        return Ok(());
    }
    let _lock = ctx.store().lock()?;
    if let Some(mut rec) = ctx.store().image(&img.manifest)? {
        rec.sources.push(repo);
        ctx.store().put_image(&rec)?;
    }
    Ok(())
}
