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
    /// `run -i`: standard input kept open (docker's `Config.OpenStdin`).
    #[serde(default)]
    pub interactive: bool,
    /// `run -d`: not attached to the caller's streams.
    #[serde(default)]
    pub detached: bool,
    /// The entrypoint the command starts with (docker's `Config.Entrypoint`), if any.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
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

    /// The disk space of the container's own changes, as docker 28 reports `SizeRw` (the
    /// writable snapshot's usage: allocated blocks, the layer's own directory included,
    /// hardlinks once). docker's init entries and the mount points strata makes are not
    /// the container's changes (docker keeps them in its init layer); nor is the block
    /// overlayfs may add to a directory for its own xattrs (`trusted.overlay.origin`, ...),
    /// so a directory counts with its size.
    pub fn size_rw(&self) -> u64 {
        let Ok(root) = self.upper.symlink_metadata() else {
            return 0;
        };
        let mut seen = std::collections::HashSet::new();
        root.len() + changes_usage(&self.upper, Path::new(""), &mut seen).0
    }
}

/// Mount points strata's runner makes in a container's root when its image lacks them.
const RUNTIME_PATHS: [&str; 6] = [
    "proc",
    "sys",
    "dev",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
];

/// The allocated bytes below `upper/rel` that are the container's changes, and whether there
/// are any (a directory strata made only to hold its own entries is none).
fn changes_usage(
    upper: &Path,
    rel: &Path,
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> (u64, bool) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(upper.join(rel)) else {
        return (0, false);
    };
    let (mut bytes, mut any) = (0, false);
    for e in rd.flatten() {
        let child = rel.join(e.file_name());
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if strata_runner::initlayer::is_init_entry(&child, &m, upper) {
            continue;
        }
        let stub = RUNTIME_PATHS.iter().any(|p| Path::new(p) == child);
        if m.is_dir() {
            // `etc` and `dev` hold strata's entries; with nothing else in them, not a change.
            let stub = stub || child == Path::new("etc");
            let (inner, inner_any) = changes_usage(upper, &child, seen);
            if inner_any || !stub {
                bytes += inner + m.len();
                any = true;
            }
        } else if stub && m.len() == 0 {
            continue;
        } else if seen.insert((m.dev(), m.ino())) {
            bytes += m.blocks() * 512;
            any = true;
        }
    }
    (bytes, any)
}

/// The filters of one `ps`: different keys must all hold, values of one key any.
#[derive(Debug, Default)]
pub struct Filters {
    by_key: BTreeMap<String, Vec<String>>,
    /// `before=`/`since=`: the named containers, resolved by [`Filters::resolve_order`].
    order: Vec<(Order, String)>,
    /// Their creation times (seconds, nanoseconds).
    order_times: Vec<(Order, (i64, u32))>,
}

/// A `before=` or `since=` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Before,
    Since,
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
                "before" | "since" => {
                    let o = if key == "before" {
                        Order::Before
                    } else {
                        Order::Since
                    };
                    f.order.push((o, value));
                    continue;
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

    /// Finds the containers `before=`/`since=` name (a name or an id prefix) among `list`;
    /// docker's "No such container" when one is missing.
    pub fn resolve_order(&mut self, list: &[(Container, Extra)]) -> anyhow::Result<()> {
        for (o, v) in &self.order {
            let name = v.strip_prefix('/').unwrap_or(v);
            let found = list
                .iter()
                .find(|(c, _)| c.name == name || c.id == *v)
                .or_else(|| list.iter().find(|(c, _)| c.id.starts_with(v.as_str())))
                .ok_or_else(|| crate::cmd::daemon(format!("No such container: {v}")))?;
            self.order_times
                .push((*o, (found.0.created, found.1.created_nanos)));
        }
        Ok(())
    }

    /// Whether the container passes every filter.
    pub fn matches(&self, c: &Container, x: &Extra) -> bool {
        let at = (c.created, x.created_nanos);
        self.order_times.iter().all(|(o, t)| match o {
            Order::Before => at < *t,
            Order::Since => at > *t,
        }) && self
            .by_key
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
