//! `strata images`: columns as docker's.

use strata_image::Images;
use strata_oci::Reference;
use strata_oci::timefmt::{now_secs, parse_rfc3339};
use strata_storage::store::ImageRecord;

use crate::cmd::images_filter as filter;
use crate::cmd::images_filter::Row;
use crate::format::Format;
use crate::global::GlobalArgs;

/// Arguments of `images`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show only images whose name (REPOSITORY or REPOSITORY:TAG) matches this pattern.
    pub pattern: Option<String>,
    /// Only show image IDs.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Show manifest digests.
    #[arg(long)]
    pub digests: bool,
    /// Show full IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Show all images (by default the intermediate images of builds are hidden).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Filter: dangling=true|false, label=KEY[=VALUE], before=IMAGE, since=IMAGE,
    /// reference=PATTERN.
    #[arg(short = 'f', long)]
    pub filter: Vec<String>,
    /// `table`, `json`, `table TEMPLATE` or a Go template (fields: .Repository .Tag .ID
    /// .Digest .CreatedSince .CreatedAt .Size).
    #[arg(long)]
    pub format: Option<String>,
}

/// Column titles of `table` templates.
const HEADER: [(&str, &str); 7] = [
    ("Repository", "REPOSITORY"),
    ("Tag", "TAG"),
    ("Digest", "DIGEST"),
    ("ID", "IMAGE ID"),
    ("CreatedSince", "CREATED"),
    ("CreatedAt", "CREATED AT"),
    ("Size", "SIZE"),
];

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let format = Format::parse(a.format.as_deref())?;
    let mut filters = filter::parse(&a.filter)?;
    if let Some(p) = &a.pattern {
        filters.reference.push(p.clone());
    }
    let ctx = g.context()?;
    let mut rows = rows(&ctx, a.no_trunc, a.all)?;
    filters.apply(&ctx, &mut rows)?;
    // docker: a --format other than `table` wins over -q.
    if a.quiet && format.is_default() {
        // One line per row (per tag), as docker prints them.
        for r in rows {
            println!("{}", r.id);
        }
        return Ok(0);
    }
    if !format.is_default() {
        let items: Vec<serde_json::Value> = rows.iter().map(item).collect();
        format.print(&items, &HEADER)?;
        return Ok(0);
    }
    let mut table = vec![];
    let mut head = vec!["REPOSITORY", "TAG"];
    if a.digests {
        head.push("DIGEST");
    }
    head.extend(["IMAGE ID", "CREATED", "SIZE"]);
    table.push(head.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for r in rows {
        let mut line = vec![r.repository, r.tag];
        if a.digests {
            line.push(r.digest);
        }
        line.extend([r.id, r.created, r.size]);
        table.push(line);
    }
    print_table(&table);
    Ok(0)
}

/// A row as docker's `images --format` sees it.
fn item(r: &Row) -> serde_json::Value {
    let created_at = r
        .created_at
        .map(docker_time)
        .unwrap_or_else(|| "N/A".into());
    serde_json::json!({
        "Containers": "N/A", "CreatedAt": created_at, "CreatedSince": r.created,
        "Digest": r.digest, "ID": r.id, "Repository": r.repository, "SharedSize": "N/A",
        "Size": r.size, "Tag": r.tag, "UniqueSize": "N/A", "VirtualSize": r.size,
    })
}

/// A time as Go prints `time.Time`: `2024-01-02 03:04:05 +0000 UTC`.
pub fn docker_time(secs: i64) -> String {
    let t = strata_oci::timefmt::format_rfc3339(secs, 0);
    // "2024-01-02T03:04:05Z" (or with fractional seconds).
    let date = t.get(..10).unwrap_or("");
    let time = t.get(11..19).unwrap_or("");
    format!("{date} {time} +0000 UTC")
}

/// Prints rows as docker's tables do (Go's tabwriter with min width 10 and padding 3): every
/// cell but a row's last padded to its column's width, trailing spaces kept as docker's are.
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            let text = rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
            (text + 3).max(10)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}", w = widths[c]));
            }
        }
        println!("{line}");
    }
}

pub fn rows(ctx: &Images, no_trunc: bool, all: bool) -> anyhow::Result<Vec<Row>> {
    let tags = ctx.catalog().tags_by_manifest()?;
    let mut images = ctx.store().images()?;
    if !all {
        // Intermediate images of builds stay out of sight, as docker keeps them.
        let hidden = strata_builder::cache::BuildCache::new(ctx.layout().root())
            .intermediate(ctx.store())?;
        images.retain(|i| tags.contains_key(&i.manifest) || !hidden.contains(&i.manifest));
    }
    // Newest first by the image's creation time, as docker sorts; then the newest pulled.
    images.sort_by_cached_key(|i| {
        let created = ctx.catalog().config_json(i).ok().and_then(|c| {
            c.get("created")
                .and_then(|v| v.as_str())
                .and_then(parse_rfc3339)
        });
        std::cmp::Reverse((created, i.pulled))
    });
    let mut out = Vec::new();
    for img in images {
        let (created, size) = describe(ctx, &img);
        let config = ctx.catalog().config_json(&img).ok();
        let created_at = config
            .as_ref()
            .and_then(|c| c.get("created").and_then(|v| v.as_str()))
            .and_then(parse_rfc3339)
            .map(|(s, _)| s);
        let labels = config
            .as_ref()
            .and_then(|c| c.pointer("/config/Labels"))
            .and_then(|l| l.as_object())
            .cloned()
            .unwrap_or_default();
        let id = if no_trunc {
            img.config.to_string()
        } else {
            img.config.short()
        };
        let names = tags.get(&img.manifest).cloned().unwrap_or_default();
        let mut named: Vec<(String, String)> = names
            .iter()
            .filter_map(|n| n.parse::<Reference>().ok())
            .map(|r| (r.familiar_repository(), r.tag.unwrap_or_default()))
            .collect();
        if named.is_empty() {
            named.push(("<none>".into(), "<none>".into()));
        }
        for (repo, tag) in named {
            let digest = img
                .sources
                .first()
                .map(|_| img.index.unwrap_or(img.manifest).to_string())
                .unwrap_or_else(|| "<none>".into());
            out.push(Row {
                repository: repo,
                tag,
                digest,
                id: id.clone(),
                created: created.clone(),
                size: size.clone(),
                created_at,
                labels: labels.clone(),
            });
        }
    }
    Ok(out)
}

fn describe(ctx: &Images, img: &ImageRecord) -> (String, String) {
    let created = ctx
        .catalog()
        .config_json(img)
        .ok()
        .and_then(|c| {
            c.get("created")
                .and_then(|v| v.as_str())
                .and_then(parse_rfc3339)
        })
        .map(|(s, _)| ago(now_secs() - s))
        .unwrap_or_else(|| "N/A".into());
    let bytes: u64 = img
        .layers
        .iter()
        .filter_map(|l| ctx.store().layer(l).ok().flatten())
        // A layer not streamed yet counts with its compressed size.
        .map(|l| {
            if l.toc.is_some() {
                l.content_bytes
            } else {
                l.size
            }
        })
        .sum();
    (created, human_size(bytes))
}

/// "2 hours ago", as docker words it.
pub fn ago(secs: i64) -> String {
    format!("{} ago", human_duration(secs))
}

/// A duration as docker words it (go-units' `HumanDuration`): "Less than a second",
/// "5 seconds", "About a minute", "3 hours", "2 weeks".
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    // Rounded to the nearest hour, as go-units rounds.
    let hours = (s + 1800) / 3600;
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", s / 3600 / 24 / 365),
    }
}

/// go-units' `HumanSizeWithPrecision`: decimal units and Go's `%.*g` (`precision`
/// significant digits, trailing zeros dropped, an exponent from 10^precision on). docker's
/// `system df` prints sizes with 4 (`units.HumanSize`): 2.036MB, 4.096kB, 0B.
pub fn human_size_with_precision(bytes: u64, precision: usize) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{}{}", go_g(v, precision.max(1)), units[u])
}

/// Go's `%.*g` of a non-negative `v`.
fn go_g(v: f64, precision: usize) -> String {
    let sci = format!("{:.*e}", precision - 1, v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let trim = |s: &str| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    let p = i64::try_from(precision).unwrap_or(i64::MAX);
    if exp < -4 || exp >= p {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = usize::try_from(p - 1 - exp).unwrap_or(0);
        trim(&format!("{v:.decimals$}"))
    }
}

/// Decimal sizes as docker prints them: 5.6kB, 212MB, 1.24GB.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    let digits = if v >= 100.0 || u == 0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_four_digits_read_like_go_units() {
        let h = |b| human_size_with_precision(b, 4);
        assert_eq!(h(2_035_712), "2.036MB");
        assert_eq!(h(4096), "4.096kB");
        assert_eq!(h(20480), "20.48kB");
        assert_eq!(h(0), "0B");
        assert_eq!(h(171), "171B");
        assert_eq!(h(1_000_000), "1MB");
        assert_eq!(h(9_999_000), "9.999MB");
        assert_eq!(h(9_999_990), "10MB");
        assert_eq!(h(99_990), "99.99kB");
        // Rounding up to 1000 stays in the unit, as go-units does.
        assert_eq!(h(999_999), "1000kB");
        // Go's %.3g switches to an exponent when rounding reaches 10^3.
        assert_eq!(human_size_with_precision(999_999, 3), "1e+03kB");
        assert_eq!(human_size_with_precision(20480, 3), "20.5kB");
    }

    #[test]
    fn sizes_and_ages_read_like_docker() {
        assert_eq!(human_size(212_000_000), "212MB");
        assert_eq!(human_size(1_240_000_000), "1.24GB");
        assert_eq!(human_size(5_600), "5.6kB");
        assert_eq!(human_size(12), "12B");
        assert_eq!(ago(7200), "2 hours ago");
        assert_eq!(ago(3700), "About an hour ago");
        assert_eq!(ago(5), "5 seconds ago");
        assert_eq!(ago(0), "Less than a second ago");
        assert_eq!(ago(90), "About a minute ago");
        assert_eq!(ago(86_400 * 20), "2 weeks ago");
    }
}
