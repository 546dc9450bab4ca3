//! `rmi`, `history`, `image prune` and `system df`.

use std::collections::HashSet;

use strata_builder::cache::BuildCache;
use strata_image::Images;
use strata_oci::Reference;
use strata_oci::timefmt::{format_rfc3339, now_secs, parse_rfc3339};
use strata_runner::state::{Containers, State};
use strata_storage::store::ImageRecord;

use crate::cmd::images::{ago, human_size, print_table};
use crate::format::Format;
use crate::global::GlobalArgs;

/// Arguments of `rmi`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Remove even if containers use it, or it has several names.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Images (references or ids).
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Arguments of `history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Image (reference or id).
    pub image: String,
    /// Only show ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Sizes and dates in human-readable form (`--human=false`: bytes and RFC 3339 times).
    #[arg(short = 'H', long, default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
    pub human: bool,
    /// Do not truncate IDs and commands.
    #[arg(long)]
    pub no_trunc: bool,
    /// `table`, `json`, `table TEMPLATE` or a Go template (fields: .ID .CreatedSince
    /// .CreatedAt .CreatedBy .Size .Comment).
    #[arg(long)]
    pub format: Option<String>,
}

/// Column titles of `history` `table` templates.
const HISTORY_HEADER: [(&str, &str); 6] = [
    ("ID", "IMAGE"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("CreatedBy", "CREATED BY"),
    ("Size", "SIZE"),
    ("Comment", "COMMENT"),
];

/// `image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// List images.
    #[command(name = "ls", alias = "list")]
    Ls(crate::cmd::images::Args),
    /// Show low-level information on images, as JSON.
    Inspect(crate::cmd::inspect::Args),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Remove images.
    #[command(name = "rm", alias = "remove")]
    Rm(RmiArgs),
    /// Give an image another name.
    Tag(crate::cmd::commit::TagArgs),
    /// Pull an image lazily.
    Pull(crate::cmd::pull::Args),
    /// Upload an image to its registry.
    Push(crate::cmd::push::PushArgs),
    /// Remove images with no name that no container uses, then unreferenced data.
    Prune {
        /// Also the intermediate images the build cache keeps.
        #[arg(short = 'a', long)]
        all: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

/// `builder` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BuilderCmd {
    /// Forget the build cache and remove the intermediate images it kept.
    Prune,
}

/// Containers made from `img`: by the manifest they recorded (two images can share an id);
/// records of older versions, which have none, by the image id.
fn users(containers: &Containers, img: &ImageRecord) -> Vec<String> {
    users_running(containers, img, None)
}

/// The containers (short ids) made from the image; with `running`, only those that are or
/// are not running.
fn users_running(containers: &Containers, img: &ImageRecord, running: Option<bool>) -> Vec<String> {
    let id = img.config.to_string();
    let manifest = img.manifest.to_string();
    containers
        .list()
        .iter()
        .filter(|c| match &c.image_manifest {
            Some(m) => *m == manifest,
            None => c.image_id == id,
        })
        .map(crate::cmd::ps::effective)
        .filter(|c| running.is_none_or(|r| (c.state == State::Running) == r))
        .map(|c| c.id[..12].to_string())
        .collect()
}

/// Whether `name` is (a prefix of) the image id of `img`, as `rmi ID` gives it.
fn names_id(name: &str, img: &ImageRecord) -> bool {
    let needle = name.strip_prefix("sha256:").unwrap_or(name);
    needle.len() >= 4 && img.config.hex().starts_with(needle)
}

/// `rmi ID`: the id stands for every stored image with that config. Like docker, an id with
/// several names needs `-f`, as does one a container uses; then all names go and every image
/// of that id no container uses is deleted.
fn remove_id(
    ctx: &Images,
    containers: &Containers,
    img: &ImageRecord,
    force: bool,
) -> anyhow::Result<bool> {
    let group = ctx.catalog().images_with_config(&img.config)?;
    let tags = ctx.catalog().tags_by_manifest()?;
    let mut names: Vec<String> = group
        .iter()
        .flat_map(|i| tags.get(&i.manifest).cloned().unwrap_or_default())
        .collect();
    names.sort();
    // A running user refuses even -f; without -f several names or a stopped user refuse too.
    for i in &group {
        if let Some(why) = id_conflict(containers, i, force, names.len()) {
            eprintln!("Error response from daemon: {why}");
            return Ok(false);
        }
    }
    let lock = ctx.store().lock()?;
    for t in &names {
        ctx.store().remove_ref(&lock, t)?;
        println!("Untagged: {}", familiar(t));
    }
    drop(lock);
    // Forced by id, containers that exited no longer keep the image (docker deletes it).
    for i in &group {
        ctx.catalog().remove_image(i)?;
    }
    println!("Deleted: {}", img.config);
    Ok(true)
}

/// Whether a name could be a (short) image id, which docker does not complete with `:latest`.
fn names_hex(name: &str) -> bool {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn familiar(t: &str) -> String {
    t.parse::<Reference>()
        .map(|r| format!("{}:{}", r.familiar_repository(), r.tag.unwrap_or_default()))
        .unwrap_or_else(|_| t.to_string())
}

fn names_of(ctx: &Images, img: &ImageRecord) -> anyhow::Result<Vec<String>> {
    Ok(ctx
        .catalog()
        .tags_by_manifest()?
        .remove(&img.manifest)
        .unwrap_or_default())
}

pub fn run_rmi(a: RmiArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let containers = Containers::new(&g.root());
    let mut failed = false;
    for name in &a.images {
        let Ok((img, by_ref)) = ctx.catalog().resolve(name) else {
            let why = match name.parse::<Reference>() {
                Ok(_)
                    if !name.rsplit('/').next().unwrap_or(name).contains(':')
                        && !name.contains('@')
                        && !names_hex(name) =>
                {
                    format!("No such image: {name}:latest")
                }
                Ok(_) => format!("No such image: {name}"),
                Err(_) => crate::cmd::refs::docker_reason(name),
            };
            eprintln!("Error response from daemon: {why}");
            failed = true;
            continue;
        };
        if by_ref.is_none() && names_id(name, &img) {
            failed |= !remove_id(&ctx, &containers, &img, a.force)?;
            continue;
        }
        let names = names_of(&ctx, &img)?;
        let used = users(&containers, &img);
        if by_ref.is_none()
            && let Some(why) = id_conflict(&containers, &img, a.force, names.len())
        {
            eprintln!("Error response from daemon: {why}");
            failed = true;
            continue;
        }
        // By id with force, containers that exited no longer keep the image (docker deletes it).
        let used = if by_ref.is_none() && a.force {
            vec![]
        } else {
            used
        };
        let lock = ctx.store().lock()?;
        let to_untag: Vec<String> = match &by_ref {
            Some(r) if names.len() > 1 => vec![r.clone()],
            Some(r) => vec![r.clone()],
            None => names.clone(),
        };
        let last = to_untag.len() == names.len();
        if last && !used.is_empty() && !a.force {
            eprintln!(
                "Error response from daemon: conflict: unable to delete {name} (must be forced) - container {} is using its referenced image {}",
                used[0],
                img.config.short()
            );
            failed = true;
            continue;
        }
        for t in &to_untag {
            ctx.store().remove_ref(&lock, t)?;
            println!("Untagged: {}", familiar(t));
        }
        drop(lock);
        if last && used.is_empty() {
            ctx.catalog().remove_image(&img)?;
            // Another manifest may still carry this id (e.g. the image's conversion): then
            // only this manifest is gone.
            if ctx.catalog().images_with_config(&img.config)?.is_empty() {
                println!("Deleted: {}", img.config);
            } else {
                println!("Deleted: {}", img.manifest);
            }
        }
    }
    let _ = ctx.collector().collect()?;
    // Each failure has had its line; docker exits 1 without another.
    Ok(if failed { 1 } else { 0 })
}

/// Why removing an image by id is refused, as docker's daemon words it: a running container
/// always prevents it; an exited one unless forced.
fn id_conflict(
    containers: &Containers,
    img: &ImageRecord,
    force: bool,
    names: usize,
) -> Option<String> {
    let short = img.config.short();
    if let Some(c) = users_running(containers, img, Some(true)).first() {
        return Some(format!(
            "conflict: unable to delete {short} (cannot be forced) - image is being used by running container {c}"
        ));
    }
    if force {
        return None;
    }
    if names > 1 {
        return Some(format!(
            "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
        ));
    }
    users_running(containers, img, Some(false)).first().map(|c| {
        format!(
            "conflict: unable to delete {short} (must be forced) - image is being used by stopped container {c}"
        )
    })
}

pub fn run_history(a: HistoryArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let format = Format::parse(a.format.as_deref())?;
    let ctx = g.context()?;
    let (img, _) = ctx
        .catalog()
        .resolve(&a.image)
        .map_err(|_| crate::cmd::daemon(format!("No such image: {}", a.image)))?;
    let items = history_items(&ctx, &img, &a)?;
    if a.quiet {
        for i in &items {
            println!("{}", i["ID"].as_str().unwrap_or(""));
        }
        return Ok(0);
    }
    if !format.is_default() {
        format.print(&items, &HISTORY_HEADER)?;
        return Ok(0);
    }
    // docker names the column after what it shows: CREATED AT with --human=false.
    let created_title = if a.human { "CREATED" } else { "CREATED AT" };
    let mut rows = vec![
        ["IMAGE", created_title, "CREATED BY", "SIZE", "COMMENT"]
            .map(String::from)
            .to_vec(),
    ];
    let created_key = if a.human { "CreatedSince" } else { "CreatedAt" };
    for i in &items {
        let cell = |k: &str| match &i[k] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        rows.push(vec![
            cell("ID"),
            cell(created_key),
            cell("CreatedBy"),
            cell("Size"),
            cell("Comment"),
        ]);
    }
    print_table(&rows);
    Ok(0)
}

/// The history entries, newest first, as docker's `history --format` sees them.
fn history_items(
    ctx: &Images,
    img: &ImageRecord,
    a: &HistoryArgs,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let config = ctx.catalog().config_json(img)?;
    let history = config
        .get("history")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    let mut sizes = img.layers.iter().rev().map(|d| {
        ctx.store()
            .layer(d)
            .ok()
            .flatten()
            // A layer not streamed yet counts with its compressed size, as in `images`.
            .map(|l| {
                if l.toc.is_some() || l.content_bytes > 0 {
                    l.content_bytes
                } else {
                    l.size
                }
            })
            .unwrap_or(0)
    });
    let mut items = Vec::new();
    for (i, h) in history.iter().rev().enumerate() {
        let field = |k: &str| h.get(k).and_then(|c| c.as_str()).unwrap_or("").to_string();
        let empty = h
            .get("empty_layer")
            .and_then(|e| e.as_bool())
            .unwrap_or(false);
        let size = if empty { 0 } else { sizes.next().unwrap_or(0) };
        let id = match (i, a.no_trunc) {
            (0, true) => img.config.to_string(),
            (0, false) => img.config.short(),
            _ => "<missing>".into(),
        };
        let created = parse_rfc3339(&field("created")).map(|(s, _)| s);
        let since = created
            .map(|s| ago(now_secs() - s))
            .unwrap_or_else(|| "N/A".into());
        let at = created
            .map(|s| format_rfc3339(s, 0))
            .unwrap_or_else(|| "N/A".into());
        let mut by = field("created_by");
        if !a.no_trunc && by.chars().count() > 45 {
            by = format!("{}…", by.chars().take(44).collect::<String>());
        }
        let (since, size) = if a.human {
            (since, serde_json::json!(human_size(size)))
        } else {
            (at.clone(), serde_json::json!(size.to_string()))
        };
        items.push(serde_json::json!({
            "ID": id, "CreatedSince": since, "CreatedAt": at, "CreatedBy": by,
            "Size": size, "Comment": field("comment"),
        }));
    }
    Ok(items)
}

pub fn run_image(cmd: ImageCmd, g: &GlobalArgs) -> anyhow::Result<i32> {
    match cmd {
        ImageCmd::Ls(a) => crate::cmd::images::run(a, g),
        ImageCmd::Inspect(mut a) => {
            a.kind = Some("image".into());
            crate::cmd::inspect::run(a, g)
        }
        ImageCmd::History(a) => run_history(a, g),
        ImageCmd::Rm(a) => run_rmi(a, g),
        ImageCmd::Tag(a) => crate::cmd::commit::run_tag(a, g),
        ImageCmd::Pull(a) => crate::cmd::pull::run(a, g),
        ImageCmd::Push(a) => crate::cmd::push::run_push(a, g),
        ImageCmd::Prune { all, force } => {
            if !force && !confirmed(all)? {
                return Ok(0);
            }
            prune(g, all)
        }
    }
}

pub fn run_builder(cmd: BuilderCmd, g: &GlobalArgs) -> anyhow::Result<i32> {
    let BuilderCmd::Prune = cmd;
    let ctx = g.context()?;
    let dropped = BuildCache::new(ctx.layout().root()).prune(ctx.store(), true)?;
    println!("Forgot {dropped} build cache entries");
    prune(g, true)
}

/// Removes untagged images no container uses (intermediate build images only with `all`
/// or once the step images they lead to are gone), drops the cache entries of removed
/// images, then frees unreferenced data.
pub fn prune_images(g: &GlobalArgs, all: bool) -> anyhow::Result<i32> {
    if all {
        let ctx = g.context()?;
        BuildCache::new(ctx.layout().root()).prune(ctx.store(), true)?;
    }
    prune(g, all)
}

/// Removes every name of the images no container uses (`system prune -a`).
pub fn untag_unused(g: &GlobalArgs) -> anyhow::Result<()> {
    let ctx = g.context()?;
    let containers = Containers::new(&g.root());
    let tags = ctx.catalog().tags_by_manifest()?;
    let lock = ctx.store().lock()?;
    for img in ctx.store().images()? {
        if !users(&containers, &img).is_empty() {
            continue;
        }
        for t in tags.get(&img.manifest).into_iter().flatten() {
            ctx.store().remove_ref(&lock, t)?;
            let shown = t
                .parse::<Reference>()
                .map(|r| crate::cmd::pull::familiar(&r))
                .unwrap_or_else(|_| t.clone());
            println!("Untagged: {shown}");
        }
    }
    Ok(())
}

/// docker's question before `image prune` without `-f`; true for an answer of `y`. A stdin
/// that is not a terminal (or at its end) answers no, as with docker.
fn confirmed(all: bool) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, Write as _};
    let what = if all {
        "all images without at least one container associated to them"
    } else {
        "all dangling images"
    };
    print!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y"))
}

fn prune(g: &GlobalArgs, all: bool) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let containers = Containers::new(&g.root());
    let cache = BuildCache::new(ctx.layout().root());
    let named: HashSet<_> = ctx.catalog().tags_by_manifest()?.into_keys().collect();
    loop {
        let kept: HashSet<_> = if all {
            HashSet::new()
        } else {
            cache.intermediate(ctx.store())?.into_iter().collect()
        };
        let mut removed = 0;
        for img in ctx.store().images()? {
            if !named.contains(&img.manifest)
                && !kept.contains(&img.manifest)
                && users(&containers, &img).is_empty()
            {
                ctx.catalog().remove_image(&img)?;
                println!("Deleted: {}", img.config);
                removed += 1;
            }
        }
        cache.prune(ctx.store(), false)?;
        if removed == 0 {
            break;
        }
    }
    let freed = ctx.collector().collect()?;
    println!("Total reclaimed space: {}", human_size(freed.bytes));
    Ok(0)
}

/// Whether any container (running or not) was made from the image.
pub fn in_use(containers: &Containers, img: &ImageRecord) -> bool {
    !users(containers, img).is_empty()
}
