//! `rmi`, `history`, `image prune` and `system df`.

use std::collections::HashSet;

use anyhow::bail;
use strata_build::cache::BuildCache;
use strata_fetcher::Reference;
use strata_fetcher::image::Context;
use strata_fetcher::store::ImageRecord;
use strata_fetcher::timefmt::{now_secs, parse_rfc3339};
use strata_runner::state::Containers;

use crate::cmd::images::{ago, human_size, print_table};
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
}

/// `image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCmd {
    /// Remove images with no name that no container uses, then unreferenced data.
    Prune {
        /// Also the intermediate images the build cache keeps.
        #[arg(short = 'a', long)]
        all: bool,
    },
}

/// `builder` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BuilderCmd {
    /// Forget the build cache and remove the intermediate images it kept.
    Prune,
}

/// `system` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SystemCmd {
    /// Show disk usage.
    Df,
}

/// Containers made from `img`: by the manifest they recorded (two images can share an id);
/// records of older versions, which have none, by the image id.
fn users(containers: &Containers, img: &ImageRecord) -> Vec<String> {
    let id = img.config.to_string();
    let manifest = img.manifest.to_string();
    containers
        .list()
        .into_iter()
        .filter(|c| match &c.image_manifest {
            Some(m) => *m == manifest,
            None => c.image_id == id,
        })
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
    ctx: &Context,
    containers: &Containers,
    img: &ImageRecord,
    force: bool,
) -> anyhow::Result<bool> {
    let group = ctx.images_with_config(&img.config)?;
    let tags = ctx.tags_by_manifest()?;
    let mut names: Vec<String> = group
        .iter()
        .flat_map(|i| tags.get(&i.manifest).cloned().unwrap_or_default())
        .collect();
    names.sort();
    let used: Vec<String> = group.iter().flat_map(|i| users(containers, i)).collect();
    let short = img.config.short();
    if names.len() > 1 && !force {
        eprintln!(
            "Error response from daemon: conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
        );
        return Ok(false);
    }
    if let Some(c) = used.first()
        && !force
    {
        eprintln!(
            "Error response from daemon: conflict: unable to delete {short} (must be forced) - image is being used by stopped container {c}"
        );
        return Ok(false);
    }
    let lock = ctx.store.lock()?;
    for t in &names {
        ctx.store.remove_ref(&lock, t)?;
        println!("Untagged: {}", familiar(t));
    }
    drop(lock);
    let mut deleted = false;
    for i in &group {
        if users(containers, i).is_empty() {
            ctx.remove_image(i)?;
            deleted = true;
        }
    }
    if deleted && used.is_empty() {
        println!("Deleted: {}", img.config);
    }
    Ok(true)
}

fn familiar(t: &str) -> String {
    t.parse::<Reference>()
        .map(|r| format!("{}:{}", r.familiar_repository(), r.tag.unwrap_or_default()))
        .unwrap_or_else(|_| t.to_string())
}

fn names_of(ctx: &Context, img: &ImageRecord) -> anyhow::Result<Vec<String>> {
    Ok(ctx
        .tags_by_manifest()?
        .remove(&img.manifest)
        .unwrap_or_default())
}

pub fn run_rmi(a: RmiArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let containers = Containers::new(&g.root());
    let mut failed = false;
    for name in &a.images {
        let Ok((img, by_ref)) = ctx.resolve(name) else {
            eprintln!("Error response from daemon: No such image: {name}");
            failed = true;
            continue;
        };
        if by_ref.is_none() && names_id(name, &img) {
            failed |= !remove_id(&ctx, &containers, &img, a.force)?;
            continue;
        }
        let names = names_of(&ctx, &img)?;
        let used = users(&containers, &img);
        let lock = ctx.store.lock()?;
        let to_untag: Vec<String> = match &by_ref {
            Some(r) if names.len() > 1 => vec![r.clone()],
            Some(r) => vec![r.clone()],
            None if names.len() > 1 && !a.force => {
                eprintln!(
                    "Error response from daemon: conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    img.config.short()
                );
                failed = true;
                continue;
            }
            None => names.clone(),
        };
        let last = to_untag.len() == names.len();
        if last && !used.is_empty() && !a.force {
            eprintln!(
                "Error response from daemon: conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                used[0],
                img.config.short()
            );
            failed = true;
            continue;
        }
        for t in &to_untag {
            ctx.store.remove_ref(&lock, t)?;
            println!("Untagged: {}", familiar(t));
        }
        drop(lock);
        if last && used.is_empty() {
            ctx.remove_image(&img)?;
            // Another manifest may still carry this id (e.g. the image's conversion): then
            // only this manifest is gone.
            if ctx.images_with_config(&img.config)?.is_empty() {
                println!("Deleted: {}", img.config);
            } else {
                println!("Deleted: {}", img.manifest);
            }
        }
    }
    let _ = ctx.collect()?;
    if failed {
        bail!("not all images were removed");
    }
    Ok(0)
}

pub fn run_history(a: HistoryArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let (img, _) = ctx
        .resolve(&a.image)
        .map_err(|_| anyhow::anyhow!("No such image: {}", a.image))?;
    let config = ctx.config(&img)?;
    let history = config
        .get("history")
        .and_then(|h| h.as_array())
        .cloned()
        .unwrap_or_default();
    let mut sizes = img.layers.iter().rev().map(|d| {
        ctx.store
            .layer(d)
            .ok()
            .flatten()
            .map(|l| l.content_bytes)
            .unwrap_or(0)
    });
    let mut rows = vec![
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
            .map(String::from)
            .to_vec(),
    ];
    for (i, h) in history.iter().rev().enumerate() {
        let empty = h
            .get("empty_layer")
            .and_then(|e| e.as_bool())
            .unwrap_or(false);
        let size = if empty { 0 } else { sizes.next().unwrap_or(0) };
        let id = if i == 0 {
            img.config.short()
        } else {
            "<missing>".into()
        };
        if a.quiet {
            println!("{id}");
            continue;
        }
        let created = h
            .get("created")
            .and_then(|c| c.as_str())
            .and_then(parse_rfc3339)
            .map(|(s, _)| ago(now_secs() - s))
            .unwrap_or_default();
        let mut by = h
            .get("created_by")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        if by.chars().count() > 45 {
            by = format!("{}…", by.chars().take(44).collect::<String>());
        }
        let comment = h
            .get("comment")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        rows.push(vec![id, created, by, human_size(size), comment]);
    }
    if !a.quiet {
        print_table(&rows);
    }
    Ok(0)
}

pub fn run_image(cmd: ImageCmd, g: &GlobalArgs) -> anyhow::Result<i32> {
    let ImageCmd::Prune { all } = cmd;
    prune(g, all)
}

pub fn run_builder(cmd: BuilderCmd, g: &GlobalArgs) -> anyhow::Result<i32> {
    let BuilderCmd::Prune = cmd;
    let ctx = g.context()?;
    let dropped = BuildCache::new(&ctx.root).prune(&ctx.store, true)?;
    println!("Forgot {dropped} build cache entries");
    prune(g, true)
}

/// Removes untagged images no container uses (intermediate build images only with `all`
/// or once the step images they lead to are gone), drops the cache entries of removed
/// images, then frees unreferenced data.
fn prune(g: &GlobalArgs, all: bool) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let containers = Containers::new(&g.root());
    let cache = BuildCache::new(&ctx.root);
    let named: HashSet<_> = ctx.tags_by_manifest()?.into_keys().collect();
    loop {
        let kept: HashSet<_> = if all {
            HashSet::new()
        } else {
            cache.intermediate(&ctx.store)?.into_iter().collect()
        };
        let mut removed = 0;
        for img in ctx.store.images()? {
            if !named.contains(&img.manifest)
                && !kept.contains(&img.manifest)
                && users(&containers, &img).is_empty()
            {
                ctx.remove_image(&img)?;
                println!("Deleted: {}", img.config);
                removed += 1;
            }
        }
        cache.prune(&ctx.store, false)?;
        if removed == 0 {
            break;
        }
    }
    let freed = ctx.collect()?;
    println!("Total reclaimed space: {}", human_size(freed.bytes));
    Ok(0)
}

pub fn run_system(cmd: SystemCmd, g: &GlobalArgs) -> anyhow::Result<i32> {
    let SystemCmd::Df = cmd;
    let ctx = g.context()?;
    let containers = Containers::new(&g.root());
    let images = ctx.store.images()?;
    let active = images
        .iter()
        .filter(|i| !users(&containers, i).is_empty())
        .count();
    let image_bytes: u64 = images
        .iter()
        .flat_map(|i| i.layers.iter())
        .collect::<HashSet<_>>()
        .into_iter()
        .filter_map(|d| ctx.store.layer(d).ok().flatten())
        .map(|l| l.content_bytes)
        .sum();
    let list = containers.list();
    let upper_bytes: u64 = list
        .iter()
        .map(|c| dir_size(&containers.dir_of(&c.id).join("upper")))
        .sum();
    let (chunks, cache_bytes) = ctx.fetcher.cache().usage()?;
    let rows = vec![
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
            .map(String::from)
            .to_vec(),
        vec![
            "Images".into(),
            images.len().to_string(),
            active.to_string(),
            human_size(image_bytes),
            "-".into(),
        ],
        vec![
            "Containers".into(),
            list.len().to_string(),
            list.iter()
                .filter(|c| c.state == strata_runner::state::State::Running)
                .count()
                .to_string(),
            human_size(upper_bytes),
            "-".into(),
        ],
        vec![
            "Chunk cache".into(),
            chunks.to_string(),
            "-".into(),
            human_size(cache_bytes),
            "-".into(),
        ],
    ];
    print_table(&rows);
    Ok(0)
}

fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
