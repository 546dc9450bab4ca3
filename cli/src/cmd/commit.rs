//! `strata commit` and `strata tag`.

use anyhow::Context as _;
use strata_image::CommitMeta;
use strata_oci::Reference;
use strata_runner::state::Containers;

use crate::global::GlobalArgs;
use strata_overlay::root::is_runtime_artifact;

/// Arguments of `commit`.
#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Commit message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Author ("Name <email>").
    #[arg(short = 'a', long)]
    pub author: Option<String>,
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK,
    /// LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR), read as `build` reads it.
    #[arg(short = 'c', long = "change")]
    pub changes: Vec<String>,
    /// Pause a running container while its changes are read (`--pause=false` to not).
    #[arg(short = 'p', long, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub pause: bool,
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
    let target: Option<Reference> = a
        .reference
        .as_deref()
        .map(crate::cmd::refs::parse)
        .transpose()?;
    if target.as_ref().is_some_and(|t| t.digest.is_some()) {
        anyhow::bail!("refusing to create a tag with a digest reference");
    }
    // docker's daemon takes only these instructions in --change.
    const CHANGES: [&str; 11] = [
        "CMD",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "HEALTHCHECK",
        "LABEL",
        "ONBUILD",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    ];
    for ch in &a.changes {
        let word = ch.split_whitespace().next().unwrap_or("").to_uppercase();
        if !CHANGES.contains(&word.as_str()) {
            return Err(crate::cmd::daemon(format!(
                "{word} is not a valid change command"
            )));
        }
    }
    let containers = Containers::new(&g.root());
    let c = containers
        .find(&a.container)
        .ok_or_else(|| crate::cmd::daemon(format!("No such container: {}", a.container)))?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .catalog()
        .image_of(c.image_manifest.as_deref(), &c.image_id)
        .with_context(|| format!("image {} of container {}", c.image, a.container))?;
    let mut config = ctx.catalog().config(&img)?.config.unwrap_or_default();
    // As docker: the container's command becomes the new image's (after its entrypoint).
    let entrypoint: Vec<String> = config.entrypoint.get().cloned().unwrap_or_default();
    if let Some(cmd) = c.command.strip_prefix(entrypoint.as_slice()) {
        config.cmd = strata_oci::nullable::Nullable::Set(cmd.to_vec());
    }
    strata_builder::change::apply_changes(&mut config, &a.changes)?;
    let layers = ctx.catalog().open_layers(&img)?;
    let tree = strata_lazyfs::Tree::build(layers.iter().map(|l| &l.index))?;
    let upper = containers.dir_of(&c.id).join("upper");
    let skip = |rel: &std::path::Path, meta: &std::fs::Metadata| {
        is_runtime_artifact(rel, meta, &tree)
            || strata_runner::initlayer::is_init_entry(rel, meta, &upper)
    };
    let meta = CommitMeta {
        comment: a.message,
        author: a.author,
        created_by: c.command.join(" "),
        config: Some(config),
    };
    // A running container stands still while its upper layer is read, as docker pauses it.
    let running = crate::cmd::ps::effective(&c).state == strata_runner::state::State::Running;
    let _frozen = match (a.pause && running, c.pid) {
        (true, Some(pid)) => Some(
            strata_runner::freeze::freeze(pid)
                .with_context(|| format!("pausing container {}", a.container))?,
        ),
        _ => None,
    };
    let rec = strata_overlay::union::upper_tar_stream(&upper, &skip, |tar| {
        ctx.committer().commit(Some(&img), tar, &meta)
    })
    .with_context(|| format!("committing the changes of {}", a.container))?;
    if let Some(t) = target {
        ctx.catalog().tag(&rec, &t)?;
    }
    println!("{}", rec.config);
    Ok(0)
}

pub fn run_tag(a: TagArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let target = tag_target(&a.target)?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .catalog()
        .resolve(&a.source)
        .map_err(|_| crate::cmd::daemon(format!("No such image: {}", a.source)))?;
    ctx.catalog().tag(&img, &target)?;
    Ok(0)
}

/// The target of `tag` (and of `commit`), refused as docker/cli refuses it.
pub fn tag_target(name: &str) -> anyhow::Result<Reference> {
    let target: Reference = name.parse().map_err(|_| {
        anyhow::anyhow!(
            "Error parsing reference: {name:?} is not a valid repository/tag: {}",
            crate::cmd::refs::docker_reason(name)
        )
    })?;
    if target.digest.is_some() {
        anyhow::bail!("refusing to create a tag with a digest reference");
    }
    Ok(target)
}
