//! `strata images`: columns as docker's.

use std::collections::BTreeSet;

use strata_fetcher::Reference;
use strata_fetcher::image::Context;
use strata_fetcher::store::ImageRecord;
use strata_fetcher::timefmt::{now_secs, parse_rfc3339};

use crate::global::GlobalArgs;

/// Arguments of `images`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show only images whose repository (or repository:tag) matches this glob.
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
    /// Filter: `dangling=true|false`.
    #[arg(short = 'f', long)]
    pub filter: Vec<String>,
    /// `json`: one JSON object per image line.
    #[arg(long)]
    pub format: Option<String>,
}

/// One row of the listing.
pub struct Row {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub id: String,
    pub created: String,
    pub size: String,
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let mut rows = rows(&ctx, a.pattern.as_deref(), a.no_trunc, a.all)?;
    for f in &a.filter {
        match f.split_once('=') {
            Some(("dangling", v)) => {
                let want = v == "true";
                rows.retain(|r| (r.tag == "<none>") == want);
            }
            _ => anyhow::bail!("invalid filter {f:?} (supported: dangling=true|false)"),
        }
    }
    if let Some(fmt) = &a.format {
        if fmt != "json" {
            anyhow::bail!("unsupported format {fmt:?} (supported: json)");
        }
        for r in rows {
            let line = serde_json::json!({
                "Repository": r.repository, "Tag": r.tag, "Digest": r.digest,
                "ID": r.id, "CreatedSince": r.created, "Size": r.size,
            });
            println!("{line}");
        }
        return Ok(0);
    }
    if a.quiet {
        let mut seen = BTreeSet::new();
        for r in rows {
            if seen.insert(r.id.clone()) {
                println!("{}", r.id);
            }
        }
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

/// Prints rows as left-aligned columns three spaces apart, like docker.
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn rows(
    ctx: &Context,
    pattern: Option<&str>,
    no_trunc: bool,
    all: bool,
) -> anyhow::Result<Vec<Row>> {
    let tags = ctx.tags_by_manifest()?;
    let mut images = ctx.store.images()?;
    if !all {
        // Intermediate images of builds stay out of sight, as docker keeps them.
        let hidden = strata_build::cache::BuildCache::new(&ctx.root).intermediate(&ctx.store)?;
        images.retain(|i| tags.contains_key(&i.manifest) || !hidden.contains(&i.manifest));
    }
    images.sort_by_key(|i| std::cmp::Reverse(i.pulled));
    let mut out = Vec::new();
    for img in images {
        let (created, size) = describe(ctx, &img);
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
            if let Some(p) = pattern {
                let candidates = [
                    repo.clone(),
                    format!("{repo}:{tag}"),
                    repo.rsplit('/').next().unwrap_or("").to_string(),
                ];
                if !candidates.iter().any(|c| glob(p, c)) {
                    continue;
                }
            }
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
            });
        }
    }
    Ok(out)
}

fn describe(ctx: &Context, img: &ImageRecord) -> (String, String) {
    let created = ctx
        .config(img)
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
        .filter_map(|l| ctx.store.layer(l).ok().flatten())
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
    let s = secs.max(0);
    let (n, unit) = match s {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        86_400..=604_799 => (s / 86_400, "day"),
        604_800..=2_591_999 => (s / 604_800, "week"),
        2_592_000..=31_535_999 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    if n == 1 {
        format!("{} {unit} ago", if unit == "hour" { "An" } else { "1" })
    } else {
        format!("{n} {unit}s ago")
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

/// Shell-style glob with `*` and `?`.
pub fn glob(pattern: &str, s: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], s) || (!s.is_empty() && m(p, &s[1..])),
            (Some(b'?'), Some(_)) => m(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
            _ => false,
        }
    }
    m(pattern.as_bytes(), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_docker() {
        assert_eq!(human_size(212_000_000), "212MB");
        assert_eq!(human_size(1_240_000_000), "1.24GB");
        assert_eq!(human_size(5_600), "5.6kB");
        assert_eq!(human_size(12), "12B");
        assert_eq!(ago(7200), "2 hours ago");
        assert_eq!(ago(3700), "An hour ago");
        assert_eq!(ago(5), "Less than a minute ago");
    }

    #[test]
    fn globs() {
        assert!(glob("app*", "app"));
        assert!(glob("app*", "application"));
        assert!(glob("*/app", "127.0.0.1:5000/app"));
        assert!(!glob("app*", "myapp"));
        assert!(glob("a?p", "app"));
    }
}
