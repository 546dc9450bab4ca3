//! `strata commit` and `strata tag`.

use anyhow::Context as _;
use strata_fetcher::Reference;
use strata_fetcher::commit::CommitMeta;
use strata_runner::state::Containers;

use crate::global::GlobalArgs;
use strata_fs::root::is_runtime_artifact;

/// Arguments of `commit`.
#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Commit message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Author ("Name <email>").
    #[arg(short = 'a', long)]
    pub author: Option<String>,
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL, VOLUME).
    #[arg(short = 'c', long = "change")]
    pub changes: Vec<String>,
    /// Container (name or id).
    pub container: String,
    /// REPOSITORY[:TAG] for the new image.
    pub reference: Option<String>,
}

/// Arguments of `tag`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Source image (reference or id).
    pub source: String,
    /// New reference.
    pub target: String,
}

pub fn run_commit(a: CommitArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let target: Option<Reference> = a.reference.as_deref().map(str::parse).transpose()?;
    let containers = Containers::new(&g.root());
    let c = containers
        .find(&a.container)
        .with_context(|| format!("No such container: {}", a.container))?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .image_of(c.image_manifest.as_deref(), &c.image_id)
        .with_context(|| format!("image {} of container {}", c.image, a.container))?;
    let layers = ctx.open_layers(&img)?;
    let tree = strata_fs::Tree::build(layers.iter().map(|l| &l.index))?;
    let upper = containers.dir_of(&c.id).join("upper");
    let skip =
        |rel: &std::path::Path, meta: &std::fs::Metadata| is_runtime_artifact(rel, meta, &tree);
    let meta = CommitMeta {
        comment: a.message,
        author: a.author,
        changes: a.changes,
        created_by: format!("strata commit {}", c.command.join(" ")),
    };
    let rec =
        strata_fs::union::upper_tar_stream(&upper, &skip, |tar| ctx.commit(Some(&img), tar, &meta))
            .with_context(|| format!("committing the changes of {}", a.container))?;
    if let Some(t) = target {
        ctx.tag(&rec, &t)?;
    }
    println!("{}", rec.config);
    Ok(0)
}

pub fn run_tag(a: TagArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let target: Reference = a.target.parse()?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .resolve(&a.source)
        .with_context(|| format!("No such image: {}", a.source))?;
    ctx.tag(&img, &target)?;
    Ok(0)
}
