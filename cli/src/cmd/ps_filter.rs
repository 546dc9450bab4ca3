//! `ps --filter` as docker's daemon reads it, and what `ps` shows beyond the container record
//! (labels, platform, network, sizes), kept by `run` beside the record in `docker.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_oci::Reference;
use strata_runner::state::{Container, Containers, State};

/// The states docker's `status=` filter knows.
const STATES: [&str; 7] = [
    "created",
    "running",
    "paused",
    "restarting",
    "removing",
    "exited",
    "dead",
];

/// What docker shows of a container that strata's record does not keep: written by `run`
/// as `docker.json` in the container's directory (absent for containers of builds).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Extra {
    /// The image's labels with the container's own (`run -l`) over them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The container's own labels (`run -l`), for `inspect`'s `.Config.Labels`.
    #[serde(default)]
    pub own_labels: BTreeMap<String, String>,
    /// Nanoseconds of the creation time, to order containers made within one second.
    #[serde(default)]
    pub created_nanos: u32,
    /// host or none.
    #[serde(default)]
    pub network: String,
    /// The image's os and architecture.
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    /// The image's size in bytes.
    #[serde(default)]
    pub image_size: u64,
    /// The container's writable layer (not stored).
    #[serde(skip)]
    pub upper: PathBuf,
}

impl Extra {
    /// The file in a container's directory.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("docker.json")
    }

    /// A container's extra record (defaults when it has none).
    pub fn load(cs: &Containers, c: &Container) -> Self {
        let dir = cs.dir_of(&c.id);
        let mut x: Extra = std::fs::read(Self::path(&dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        x.upper = dir.join("upper");
        x
    }

    /// Writes it beside the container's record.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(Self::path(dir), serde_json::to_vec(self)?)?;
        Ok(())
    }

    /// The bytes of the files in the container's writable layer.
    pub fn size_rw(&self) -> u64 {
        fn walk(p: &Path, seen: &mut std::collections::HashSet<u64>) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            let mut n = 0;
            for e in rd.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                if m.is_dir() {
                    n += walk(&e.path(), seen);
                } else if std::os::unix::fs::MetadataExt::ino(&m) != 0
                    && seen.insert(std::os::unix::fs::MetadataExt::ino(&m))
                {
                    n += m.len();
                }
            }
            n
        }
        walk(&self.upper, &mut Default::default())
    }
}

/// The filters of one `ps`: different keys must all hold, values of one key any.
#[derive(Debug, Default)]
pub struct Filters {
    by_key: BTreeMap<String, Vec<String>>,
}

impl Filters {
    /// Parses `-f` values; unknown keys and bad values are refused with docker's messages.
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut f = Self::default();
        for arg in args {
            let Some((k, v)) = arg.split_once('=') else {
                return Err(crate::cmd::images_filter::bad_filter_format(
                    arg,
                    "ps [OPTIONS]",
                ));
            };
            let key = k.trim().to_lowercase();
            let value = v.trim().to_string();
            match key.as_str() {
                "status" if !STATES.contains(&value.as_str()) => {
                    return Err(crate::cmd::daemon(format!(
                        "invalid filter 'status={value}': invalid value for state ({value}): must be one of {}",
                        STATES.join(", ")
                    )));
                }
                "exited" if value.parse::<i32>().is_err() => {
                    return Err(crate::cmd::daemon(format!(
                        "invalid filter 'exited={value}': strconv.Atoi: parsing \"{value}\": invalid syntax"
                    )));
                }
                "name" if regex::Regex::new(&value).is_err() => {
                    return Err(crate::cmd::daemon(format!(
                        "invalid filter 'name={value}': error parsing regexp"
                    )));
                }
                "status" | "exited" | "name" | "id" | "label" | "ancestor" => {}
                _ => return Err(crate::cmd::daemon(format!("invalid filter '{key}'"))),
            }
            f.by_key.entry(key).or_default().push(value);
        }
        Ok(f)
    }

    /// Whether a filter of this key was given.
    pub fn has(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// Whether the container passes every filter.
    pub fn matches(&self, c: &Container, x: &Extra) -> bool {
        self.by_key
            .iter()
            .all(|(k, vs)| vs.iter().any(|v| one(k, v, c, x)))
    }
}

fn one(key: &str, v: &str, c: &Container, x: &Extra) -> bool {
    match key {
        "status" => {
            let state = match c.state {
                State::Created => "created",
                State::Running => "running",
                State::Exited => "exited",
            };
            state == v
        }
        "exited" => c.state == State::Exited && c.exit_code.unwrap_or(0).to_string() == v,
        // docker matches names as regular expressions (unanchored).
        "name" => regex::Regex::new(v).is_ok_and(|r| r.is_match(&c.name)),
        "id" => c.id.starts_with(v),
        "label" => match v.split_once('=') {
            Some((k, want)) => x.labels.get(k).is_some_and(|have| have == want),
            None => x.labels.contains_key(v),
        },
        "ancestor" => ancestor(v, c),
        _ => false,
    }
}

/// Whether the container was made from the image `v` names (a reference or an id).
fn ancestor(v: &str, c: &Container) -> bool {
    let norm = |s: &str| s.parse::<Reference>().ok().map(|r| r.to_string());
    if c.image == v || norm(&c.image).is_some_and(|a| Some(a) == norm(v)) {
        return true;
    }
    let hex = v.strip_prefix("sha256:").unwrap_or(v);
    hex.len() >= 4
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && c.image_id
            .strip_prefix("sha256:")
            .is_some_and(|id| id.starts_with(hex))
}
