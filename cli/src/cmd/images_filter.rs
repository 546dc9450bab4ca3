//! `images --filter` as docker's daemon reads it: keys lower-cased, keys and values trimmed,
//! unknown keys and bad values refused with docker's messages.

use globset::GlobMatcher;
use strata_image::Images;

/// One row of the `images` listing.
pub struct Row {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub id: String,
    pub created: String,
    pub size: String,
    /// Seconds since the epoch from the config's `created`.
    pub created_at: Option<i64>,
    pub labels: serde_json::Map<String, serde_json::Value>,
}

/// The filters of one listing; every given filter must hold.
#[derive(Debug, Default)]
pub struct Filters {
    dangling: Option<bool>,
    labels: Vec<(String, Option<String>)>,
    before: Vec<String>,
    since: Vec<String>,
    /// Patterns matched like docker's `reference=` (path.Match on the familiar name).
    pub reference: Vec<String>,
}

/// docker/cli's error for a `-f` value without `=`: a flag error (exit 125) with the usage line
/// of the command (`usage`, its first word the verb).
pub fn bad_filter_format(arg: &str, usage: &str) -> anyhow::Error {
    let verb = usage.split_whitespace().next().unwrap_or("");
    crate::cmd::Coded {
        code: 125,
        message: format!(
            "invalid argument \"{arg}\" for \"-f, --filter\" flag: bad format of filter (expected name=value)\n\nUsage:  strata {usage}\n\nRun 'strata {verb} --help' for more information"
        ),
    }
    .into()
}

/// Parses `-f` values.
pub fn parse(args: &[String]) -> anyhow::Result<Filters> {
    let mut f = Filters::default();
    for arg in args {
        if arg.is_empty() {
            continue;
        }
        let Some((k, v)) = arg.split_once('=') else {
            return Err(bad_filter_format(
                arg,
                "images [OPTIONS] [REPOSITORY[:TAG]]",
            ));
        };
        let key = k.trim().to_lowercase();
        let value = v.trim().to_string();
        match key.as_str() {
            "dangling" => {
                let b = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(crate::cmd::daemon(format!(
                            "invalid filter 'dangling=[{value}]'"
                        )));
                    }
                };
                if f.dangling.is_some_and(|d| d != b) {
                    return Err(crate::cmd::daemon("invalid filter 'dangling=[true false]'"));
                }
                f.dangling = Some(b);
            }
            "label" => {
                let (k, v) = match value.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (value, None),
                };
                f.labels.push((k, v));
            }
            "before" => f.before.push(value),
            "since" => f.since.push(value),
            "reference" => f.reference.push(value),
            _ => return Err(crate::cmd::daemon(format!("invalid filter '{key}'"))),
        }
    }
    Ok(f)
}

/// Whether a name matches a reference pattern as docker's `reference.FamiliarMatch`:
/// `path.Match` (a `*` stays within one path component) on `repo:tag`, then on `repo`.
pub fn reference_matches(pattern: &GlobMatcher, repo: &str, tag: &str) -> bool {
    pattern.is_match(format!("{repo}:{tag}")) || pattern.is_match(repo)
}

fn glob(p: &str) -> anyhow::Result<GlobMatcher> {
    Ok(globset::GlobBuilder::new(p)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| anyhow::anyhow!("invalid reference pattern {p:?}: {e}"))?
        .compile_matcher())
}

impl Filters {
    /// Keeps the rows every filter accepts.
    pub fn apply(&self, ctx: &Images, rows: &mut Vec<Row>) -> anyhow::Result<()> {
        if let Some(d) = self.dangling {
            rows.retain(|r| (r.tag == "<none>") == d);
        }
        for (k, v) in &self.labels {
            rows.retain(|r| match (r.labels.get(k), v) {
                (Some(have), Some(want)) => have.as_str() == Some(want.as_str()),
                (Some(_), None) => true,
                (None, _) => false,
            });
        }
        for name in &self.before {
            let t = created_of(ctx, name)?;
            rows.retain(|r| r.created_at.is_some_and(|c| c < t));
        }
        for name in &self.since {
            let t = created_of(ctx, name)?;
            rows.retain(|r| r.created_at.is_some_and(|c| c > t));
        }
        if !self.reference.is_empty() {
            let patterns = self
                .reference
                .iter()
                .map(|p| glob(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            rows.retain(|r| {
                r.tag != "<none>"
                    && patterns
                        .iter()
                        .any(|p| reference_matches(p, &r.repository, &r.tag))
            });
        }
        Ok(())
    }
}

/// The creation time of the image `before=`/`since=` name.
fn created_of(ctx: &Images, name: &str) -> anyhow::Result<i64> {
    let (img, _) = ctx
        .catalog()
        .resolve(name)
        .map_err(|_| crate::cmd::daemon(format!("No such image: {name}")))?;
    ctx.catalog()
        .config_json(&img)?
        .get("created")
        .and_then(|v| v.as_str())
        .and_then(strata_oci::timefmt::parse_rfc3339)
        .map(|(s, _)| s)
        .ok_or_else(|| anyhow::anyhow!("image {name} has no creation time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_like_docker() {
        let f = parse(&[" Dangling = true ".into()]).unwrap();
        assert_eq!(f.dangling, Some(true));
        let e = parse(&["dangling=bogus".into()]).unwrap_err();
        assert_eq!(e.to_string(), "invalid filter 'dangling=[bogus]'");
        let e = parse(&["color=red".into()]).unwrap_err();
        assert_eq!(e.to_string(), "invalid filter 'color'");
        assert!(parse(&["dangling".into()]).is_err());
        let f = parse(&["label=a=b".into(), "label=c".into()]).unwrap();
        assert_eq!(
            f.labels,
            vec![("a".into(), Some("b".into())), ("c".into(), None)]
        );
    }

    #[test]
    fn references_match_like_path_match() {
        let app = glob("app*").unwrap();
        assert!(reference_matches(&app, "app", "latest"));
        assert!(reference_matches(&app, "application", "1"));
        assert!(!reference_matches(&app, "myapp", "1"));
        assert!(!reference_matches(&app, "127.0.0.1:5000/app", "1"));
        let tagged = glob("app:1").unwrap();
        assert!(reference_matches(&tagged, "app", "1"));
        assert!(!reference_matches(&tagged, "app", "2"));
        let reg = glob("*/t/*").unwrap();
        assert!(reference_matches(&reg, "127.0.0.1:5000/t/app", "1"));
        assert!(!reference_matches(&glob("*").unwrap(), "t/app", "1"));
    }
}
