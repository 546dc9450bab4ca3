//! `system df`, as docker's: images, containers, local volumes (strata has none) and the
//! build cache, with what pruning would give back; `-v` lists each, and adds strata's chunk
//! cache (fetched file content, which refills on demand).

use std::collections::{HashMap, HashSet};

use strata_image::Images;
use strata_oci::Digest;
use strata_runner::state::{Container, Containers, State};
use strata_storage::store::ImageRecord;

use crate::cmd::images::{ago, human_size, print_table};
use crate::cmd::rmi::in_use;
use crate::format::Format;
use crate::global::GlobalArgs;
use crate::gotmpl::Missing;

/// Arguments of `system df`.
#[derive(Debug, clap::Args)]
pub struct DfArgs {
    /// Show detailed information on space usage.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// `table`, `json`, `table TEMPLATE` or a Go template (fields: .Type .TotalCount .Active
    /// .Size .Reclaimable).
    #[arg(long)]
    pub format: Option<String>,
}

/// docker's RECLAIMABLE: the size, with its share of the total when there is a total.
fn reclaim(part: u64, total: u64) -> String {
    match (part * 100).checked_div(total) {
        Some(pct) => format!("{} ({pct}%)", human4(part)),
        None => human4(part),
    }
}

/// docker's `units.HumanSize`, 4 significant digits, as `system df` prints its sizes.
fn human4(bytes: u64) -> String {
    crate::cmd::images::human_size_with_precision(bytes, 4)
}

pub fn run_df(a: DfArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let format = Format::parse_for(
        a.format.as_deref(),
        Missing::Field("*formatter.diskUsageContext"),
        true,
    )?;
    let ctx = g.context()?;
    let cs = Containers::new(&g.root());
    let images = ctx.store().images()?;
    let layer_size = layer_sizes(&ctx, &images);
    let list: Vec<Container> = cs.list().iter().map(crate::cmd::ps::effective).collect();
    let rows = summary(&ctx, &cs, &images, &list, &layer_size);
    if !format.is_default() {
        print_formatted(&format, &rows)?;
        return Ok(0);
    }
    if a.verbose {
        return verbose(&ctx, &cs, &list, &layer_size);
    }
    let mut table = vec![
        ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
            .map(String::from)
            .to_vec(),
    ];
    table.extend(rows.into_iter().map(|r| r.to_vec()));
    print_table(&table);
    Ok(0)
}

/// The size of each layer of the images; a layer not streamed yet counts with its
/// compressed size, as in `images`.
fn layer_sizes(ctx: &Images, images: &[ImageRecord]) -> HashMap<Digest, u64> {
    images
        .iter()
        .flat_map(|i| i.layers.iter())
        .filter_map(|d| ctx.store().layer(d).ok().flatten())
        .map(|l| {
            let size = if l.toc.is_some() {
                l.content_bytes
            } else {
                l.size
            };
            (l.digest, size)
        })
        .collect()
}

/// How many of `images` use each layer.
fn layer_users(images: &[ImageRecord]) -> HashMap<&Digest, usize> {
    let mut users: HashMap<&Digest, usize> = HashMap::new();
    for i in images {
        for d in i.layers.iter().collect::<HashSet<_>>() {
            *users.entry(d).or_default() += 1;
        }
    }
    users
}

/// The bytes of an image's own manifest and config.
fn metadata_bytes(ctx: &Images, img: &ImageRecord) -> u64 {
    [&img.manifest, &img.config]
        .iter()
        .filter_map(|d| ctx.store().get_blob(d).ok())
        .map(|b| b.len() as u64)
        .sum()
}

/// Images in use, the images' total size and what of it is reclaimable: as docker 28, what
/// the images in use hold alone (their layers no other image has, their manifest and config)
/// stays; everything else is reclaimable.
fn image_space<'a>(
    ctx: &Images,
    cs: &Containers,
    images: &'a [ImageRecord],
    layer_size: &HashMap<Digest, u64>,
) -> (Vec<&'a ImageRecord>, u64, u64) {
    let bytes = |layers: &HashSet<&Digest>| -> u64 {
        layers.iter().filter_map(|d| layer_size.get(*d)).sum()
    };
    let (used, _): (Vec<_>, Vec<_>) = images.iter().partition(|i| in_use(cs, i));
    let all_layers: HashSet<&Digest> = images.iter().flat_map(|i| i.layers.iter()).collect();
    let own = |i: &ImageRecord| metadata_bytes(ctx, i);
    let image_total = bytes(&all_layers) + images.iter().map(own).sum::<u64>();
    let users = layer_users(images);
    let kept: u64 = used
        .iter()
        .map(|i| {
            let alone: HashSet<&Digest> = i.layers.iter().filter(|d| users[d] == 1).collect();
            bytes(&alone) + own(i)
        })
        .sum();
    (used, image_total, image_total.saturating_sub(kept))
}

/// The rows of `system df`: TYPE, TOTAL, ACTIVE, SIZE, RECLAIMABLE.
fn summary(
    ctx: &Images,
    cs: &Containers,
    images: &[ImageRecord],
    list: &[Container],
    layer_size: &HashMap<Digest, u64>,
) -> Vec<[String; 5]> {
    let (used, image_total, image_reclaim) = image_space(ctx, cs, images, layer_size);
    let upper = |c: &Container| crate::cmd::ps_filter::Extra::load(cs, c).size_rw();
    let upper_total: u64 = list.iter().map(upper).sum();
    let upper_idle: u64 = list
        .iter()
        .filter(|c| c.state != State::Running)
        .map(upper)
        .sum();
    let running = list.iter().filter(|c| c.state == State::Running).count();
    let build_entries = strata_builder::cache::BuildCache::new(ctx.layout().root())
        .entries()
        .map(|e| e.len())
        .unwrap_or(0);
    let mut rows = vec![
        [
            "Images".into(),
            images.len().to_string(),
            used.len().to_string(),
            human4(image_total),
            reclaim(image_reclaim, image_total),
        ],
        [
            "Containers".into(),
            list.len().to_string(),
            running.to_string(),
            human4(upper_total),
            reclaim(upper_idle, upper_total),
        ],
        [
            "Local Volumes".into(),
            "0".into(),
            "0".into(),
            human4(0),
            human4(0),
        ],
        // Build cache entries name images, whose layers count under Images.
        [
            "Build Cache".into(),
            build_entries.to_string(),
            "0".into(),
            human4(0),
            human4(0),
        ],
    ];
    // Temporaries of commands still running (a killed command's were removed when this one
    // opened the root): shown only when there are some.
    let temps = strata_storage::leftovers::pending(ctx.layout().root());
    if temps.entries > 0 {
        rows.push([
            "Temporary files".into(),
            temps.entries.to_string(),
            temps.entries.to_string(),
            human4(temps.bytes),
            reclaim(0, temps.bytes),
        ]);
    }
    rows
}

/// The summary rows through `--format`.
fn print_formatted(format: &Format, rows: &[[String; 5]]) -> anyhow::Result<()> {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|[t, n, act, size, rec]| {
            serde_json::json!({"Type": t, "TotalCount": n, "Active": act, "Size": size,
                               "Reclaimable": rec})
        })
        .collect();
    let header = [
        ("Type", "TYPE"),
        ("TotalCount", "TOTAL"),
        ("Active", "ACTIVE"),
        ("Size", "SIZE"),
        ("Reclaimable", "RECLAIMABLE"),
    ];
    format.print(&items, &header)
}

/// `system df -v`: every image (shared and unique sizes, containers using it), container,
/// and the caches.
fn verbose(
    ctx: &Images,
    cs: &Containers,
    list: &[Container],
    layer_size: &HashMap<Digest, u64>,
) -> anyhow::Result<i32> {
    println!("Images space usage:\n");
    print_images(ctx, list, layer_size)?;
    println!("\nContainers space usage:\n");
    print_containers(cs, list);
    println!("\nLocal Volumes space usage:\n");
    print_table(&[["VOLUME NAME", "LINKS", "SIZE"].map(String::from).to_vec()]);
    println!("\nBuild cache usage: {}\n", human_size(0));
    print_table(&[[
        "CACHE ID",
        "CACHE TYPE",
        "SIZE",
        "CREATED",
        "LAST USED",
        "USAGE",
        "SHARED",
    ]
    .map(String::from)
    .to_vec()]);
    let (chunks, cache_bytes) = ctx.fetcher().cache().usage()?;
    println!(
        "\nChunk cache usage: {} ({chunks} chunks of fetched file content, reclaimable)",
        human_size(cache_bytes)
    );
    Ok(0)
}

/// The images table of `system df -v`: sizes shared with other images and unique to each.
fn print_images(
    ctx: &Images,
    list: &[Container],
    layer_size: &HashMap<Digest, u64>,
) -> anyhow::Result<()> {
    let images = ctx.store().images()?;
    let mut users: HashMap<&Digest, usize> = HashMap::new();
    for i in &images {
        for d in &i.layers {
            *users.entry(d).or_default() += 1;
        }
    }
    let mut table = vec![
        [
            "REPOSITORY",
            "TAG",
            "IMAGE ID",
            "CREATED",
            "SIZE",
            "SHARED SIZE",
            "UNIQUE SIZE",
            "CONTAINERS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for row in crate::cmd::images::rows(ctx, false, false)? {
        let Some(img) = images.iter().find(|i| i.config.short() == row.id) else {
            continue;
        };
        let (mut shared, mut unique) = (0, metadata_bytes(ctx, img));
        for d in &img.layers {
            let n = layer_size.get(d).copied().unwrap_or(0);
            if users.get(d).copied().unwrap_or(0) > 1 {
                shared += n;
            } else {
                unique += n;
            }
        }
        let containers = list
            .iter()
            .filter(|c| c.image_id == img.config.to_string())
            .count();
        table.push(vec![
            row.repository,
            row.tag,
            row.id,
            row.created,
            human_size(shared + unique),
            human4(shared),
            human4(unique),
            containers.to_string(),
        ]);
    }
    print_table(&table);
    Ok(())
}

/// The containers table of `system df -v`.
fn print_containers(cs: &Containers, list: &[Container]) {
    let mut table = vec![
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "LOCAL VOLUMES",
            "SIZE",
            "CREATED",
            "STATUS",
            "NAMES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for c in list {
        let mut command = crate::cmd::ps::shell_join(&c.command);
        if command.chars().count() > 20 {
            command = format!("{}…", command.chars().take(19).collect::<String>());
        }
        table.push(vec![
            c.id[..12.min(c.id.len())].to_string(),
            c.image.clone(),
            format!("\"{command}\""),
            "0".into(),
            human_size(crate::cmd::ps_filter::Extra::load(cs, c).size_rw()),
            ago(strata_oci::timefmt::now_secs() - c.created),
            crate::cmd::ps::status(c),
            c.name.clone(),
        ]);
    }
    print_table(&table);
}
