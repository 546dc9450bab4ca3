//! Typed image configs (the OCI image config with docker's extensions in its `config` object)
//! and the edits strata makes to them. Fields strata does not know are kept as they were read
//! (`extra`), and docker's `null`s stay `null` ([`Nullable`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::nullable::Nullable;

/// Errors reading or writing an image config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not an image config.
    #[error("image config {what}")]
    Parse {
        /// Which config (its digest, or where it came from).
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `rootfs.diff_ids` does not list one digest per layer.
    #[error("image config lists {have} diff_ids for {want} layers")]
    DiffIds {
        /// diff_ids in the config.
        have: usize,
        /// Layers of the image.
        want: usize,
    },
}

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// When the image was made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// docker's commit message (`inspect`'s `.Comment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// CPU architecture (`amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Operating system (`linux`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// How containers of the image run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    /// The layers' uncompressed digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
    /// One entry per instruction that made the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
    /// Fields strata does not edit, as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How containers of an image run: docker's `config` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `user[:group]`.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub user: Nullable<String>,
    /// `port/proto` → `{}`.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub exposed_ports: Nullable<BTreeMap<String, Value>>,
    /// `KEY=VALUE` environment.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub env: Nullable<Vec<String>>,
    /// The entrypoint.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub entrypoint: Nullable<Vec<String>>,
    /// The command (arguments of the entrypoint).
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub cmd: Nullable<Vec<String>>,
    /// Volume paths → `{}`.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub volumes: Nullable<BTreeMap<String, Value>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub working_dir: Nullable<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub labels: Nullable<BTreeMap<String, String>>,
    /// The signal that stops a container.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub stop_signal: Nullable<String>,
    /// docker's health check.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub healthcheck: Nullable<Healthcheck>,
    /// docker's ONBUILD triggers.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub on_build: Nullable<Vec<String>>,
    /// docker's SHELL for shell-form commands.
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub shell: Nullable<Vec<String>>,
    /// Fields strata does not edit, as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// docker's health check (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    #[serde(default)]
    pub test: Vec<String>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    /// Time one check may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Time to start before failures count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    /// Time between checks during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    /// Failures in a row that make a container unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Fields strata does not know, as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The image's layers by uncompressed digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// sha256 of each layer's uncompressed tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry, as docker writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A comment (`commit -m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Set when the step made no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
    /// Fields strata does not know, as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ImageConfig {
    /// An empty linux/amd64 config (`FROM scratch`, `import`).
    pub fn scratch() -> Self {
        Self {
            architecture: Some("amd64".into()),
            os: Some("linux".into()),
            config: Some(ContainerConfig::default()),
            rootfs: Some(RootFs::default()),
            history: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Parses a config; `what` names it in errors.
    pub fn from_slice(bytes: &[u8], what: &str) -> Result<Self, ConfigError> {
        serde_json::from_slice(bytes).map_err(|source| ConfigError::Parse {
            what: what.to_string(),
            source,
        })
    }

    /// The config's JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an image config always serializes")
    }

    /// The `config` object, made empty if missing.
    pub fn container_mut(&mut self) -> &mut ContainerConfig {
        self.config.get_or_insert_with(ContainerConfig::default)
    }

    /// The `config` object (defaults if missing).
    pub fn container(&self) -> std::borrow::Cow<'_, ContainerConfig> {
        match &self.config {
            Some(c) => std::borrow::Cow::Borrowed(c),
            None => std::borrow::Cow::Owned(ContainerConfig::default()),
        }
    }

    /// Appends a history entry.
    pub fn push_history(&mut self, entry: History) {
        self.history.get_or_insert_with(Vec::new).push(entry);
    }

    /// Appends a layer's diff_id.
    pub fn push_diff_id(&mut self, diff_id: Digest) {
        self.rootfs
            .get_or_insert_with(RootFs::default)
            .diff_ids
            .push(diff_id);
    }

    /// Replaces `rootfs.diff_ids[i]` where `new[i]` is set; `new` has one entry per layer.
    pub fn replace_diff_ids(&mut self, new: &[Option<Digest>]) -> Result<(), ConfigError> {
        let ids = &mut self.rootfs.get_or_insert_with(RootFs::default).diff_ids;
        if ids.len() != new.len() {
            return Err(ConfigError::DiffIds {
                have: ids.len(),
                want: new.len(),
            });
        }
        for (id, n) in ids.iter_mut().zip(new) {
            if let Some(n) = n {
                *id = *n;
            }
        }
        Ok(())
    }
}

impl ContainerConfig {
    /// `Env` as `(key, value)` pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .get()
            .into_iter()
            .flatten()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.to_string(), String::new()),
            })
            .collect()
    }

    /// Sets (or replaces) `key` in `Env`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let mut env = self.env_pairs();
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.to_string(),
            None => env.push((key.to_string(), value.to_string())),
        }
        self.env = Nullable::Set(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect());
    }

    /// Sets a label.
    pub fn set_label(&mut self, key: &str, value: &str) {
        self.labels
            .get_or_default()
            .insert(key.to_string(), value.to_string());
    }

    /// Adds an exposed port (`80/tcp`).
    pub fn expose(&mut self, port: &str) {
        self.exposed_ports
            .get_or_default()
            .insert(port.to_string(), Value::Object(Map::new()));
    }

    /// Adds a volume path.
    pub fn add_volume(&mut self, path: &str) {
        self.volumes
            .get_or_default()
            .insert(path.to_string(), Value::Object(Map::new()));
    }

    /// The working directory, if set and not empty.
    pub fn workdir(&self) -> Option<&str> {
        self.working_dir
            .get()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The user (`""` when unset).
    pub fn user_or_default(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_nulls_survive_a_round_trip() {
        let text = br#"{"architecture":"amd64","config":{"Cmd":null,"Env":["A=1"],"Hostname":"x","Image":"sha256:ab"},"os":"linux","rootfs":{"type":"layers","diff_ids":[]},"os.version":"10","variant":"v8"}"#;
        let cfg = ImageConfig::from_slice(text, "test").unwrap();
        assert_eq!(cfg.container().cmd, Nullable::Null);
        assert_eq!(cfg.container().entrypoint, Nullable::Absent);
        let back: Value = serde_json::from_slice(&cfg.to_vec()).unwrap();
        let want: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(back, want);
    }

    #[test]
    fn edits_land_where_docker_keeps_them() {
        let mut cfg = ImageConfig::scratch();
        let c = cfg.container_mut();
        c.set_env("A", "1");
        c.set_env("A", "2");
        c.set_label("k", "v");
        c.expose("80/tcp");
        c.add_volume("/data");
        cfg.push_diff_id(Digest::of(b"x"));
        let v: Value = serde_json::from_slice(&cfg.to_vec()).unwrap();
        assert_eq!(v["config"]["Env"], serde_json::json!(["A=2"]));
        assert_eq!(v["config"]["Labels"]["k"], "v");
        assert!(v["config"]["ExposedPorts"]["80/tcp"].is_object());
        assert!(v["config"]["Volumes"]["/data"].is_object());
        assert_eq!(v["rootfs"]["diff_ids"][0], Digest::of(b"x").to_string());
        assert!(cfg.replace_diff_ids(&[None, None]).is_err());
    }
}
