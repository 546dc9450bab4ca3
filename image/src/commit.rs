//! `commit`: a container's changes (as a tar in OCI layer form) become one new layer in the
//! native lazy format on top of its image. The base layers stay references: nothing of them is
//! fetched. The new blob is kept in the cache's blob directory, where lazy reads find it.

use std::io::Read;

use serde_json::{Value, json};

use crate::catalog::Catalog;
use crate::convert::LAYER_MEDIA_TYPE;
use crate::error::ImageError;
use crate::layout::Layout;
use strata_formats::chunked::write_chunked;
use strata_oci::digest::Digest;
use strata_oci::timefmt::{now_rfc3339, now_secs};
use strata_storage::store::{ImageRecord, LayerFormat, LayerRecord, Store};

/// What `commit` records besides the layer.
#[derive(Debug, Clone, Default)]
pub struct CommitMeta {
    /// `-m`.
    pub comment: Option<String>,
    /// `--author`.
    pub author: Option<String>,
    /// `-c` instructions: CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL, VOLUME.
    pub changes: Vec<String>,
    /// The history's `created_by`.
    pub created_by: String,
    /// The container config to store (`changes` already applied by the caller, e.g. with
    /// the Dockerfile parser); `None` keeps the parent's.
    pub config: Option<serde_json::Map<String, Value>>,
}

fn bad(what: &str, reason: impl Into<String>) -> ImageError {
    ImageError::Manifest {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// `["a","b"]` (exec form) or `a b` (shell form, run by /bin/sh -c).
fn command_form(arg: &str) -> Value {
    match serde_json::from_str::<Vec<String>>(arg.trim()) {
        Ok(v) => json!(v),
        Err(_) => json!(["/bin/sh", "-c", arg.trim()]),
    }
}

/// Applies one `-c` instruction to the config's `config` object.
pub fn apply_change(
    cfg: &mut serde_json::Map<String, Value>,
    change: &str,
) -> Result<(), ImageError> {
    let (word, arg) = change
        .trim()
        .split_once(char::is_whitespace)
        .unwrap_or((change.trim(), ""));
    let arg = arg.trim();
    let obj =
        |cfg: &mut serde_json::Map<String, Value>, key: &str| -> serde_json::Map<String, Value> {
            cfg.get(key)
                .and_then(|v| v.as_object())
                .cloned()
                .unwrap_or_default()
        };
    match word.to_ascii_uppercase().as_str() {
        "CMD" => {
            cfg.insert("Cmd".into(), command_form(arg));
        }
        "ENTRYPOINT" => {
            cfg.insert("Entrypoint".into(), command_form(arg));
        }
        "WORKDIR" => {
            cfg.insert("WorkingDir".into(), json!(arg));
        }
        "USER" => {
            cfg.insert("User".into(), json!(arg));
        }
        "ENV" => {
            let (k, v) = arg
                .split_once('=')
                .or_else(|| arg.split_once(' '))
                .ok_or_else(|| bad(change, "ENV needs KEY=VALUE"))?;
            let mut env: Vec<String> = cfg
                .get("Env")
                .and_then(|e| serde_json::from_value(e.clone()).ok())
                .unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(k));
            env.push(format!("{k}={}", v.trim_matches('"')));
            cfg.insert("Env".into(), json!(env));
        }
        "LABEL" => {
            let (k, v) = arg
                .split_once('=')
                .ok_or_else(|| bad(change, "LABEL needs KEY=VALUE"))?;
            let mut labels = obj(cfg, "Labels");
            labels.insert(k.trim_matches('"').into(), json!(v.trim_matches('"')));
            cfg.insert("Labels".into(), Value::Object(labels));
        }
        "EXPOSE" => {
            let mut ports = obj(cfg, "ExposedPorts");
            for p in arg.split_whitespace() {
                let p = if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                };
                ports.insert(p, json!({}));
            }
            cfg.insert("ExposedPorts".into(), Value::Object(ports));
        }
        "VOLUME" => {
            let mut vols = obj(cfg, "Volumes");
            let list: Vec<String> = serde_json::from_str(arg)
                .unwrap_or_else(|_| arg.split_whitespace().map(str::to_string).collect());
            for v in list {
                vols.insert(v, json!({}));
            }
            cfg.insert("Volumes".into(), Value::Object(vols));
        }
        other => {
            return Err(bad(
                change,
                format!(
                    "unsupported instruction {other} (CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL, VOLUME)"
                ),
            ));
        }
    }
    Ok(())
}

/// A layer written by [`Committer::write_layer`], ready to go on top of an image.
#[derive(Debug, Clone)]
pub struct NewLayer {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob.
    pub size: u64,
    /// The layer descriptor's annotations (TOC position and checksum).
    pub annotations: Value,
}

/// A history entry as docker writes it.
pub fn history_entry(
    created_by: &str,
    comment: Option<&str>,
    author: Option<&str>,
    empty_layer: bool,
) -> Value {
    let mut entry = json!({"created": now_rfc3339(), "created_by": created_by});
    if let Some(c) = comment {
        entry["comment"] = json!(c);
    }
    if let Some(a) = author {
        entry["author"] = json!(a);
    }
    if empty_layer {
        entry["empty_layer"] = json!(true);
    }
    entry
}

/// Writes new layers and stores new images on top of stored ones (`commit`, `import`, `build`).
#[derive(Debug, Clone)]
pub struct Committer {
    store: Store,
    layout: Layout,
}

impl Committer {
    /// A committer writing into `store` and the blob directory of `layout`.
    pub fn new(store: Store, layout: Layout) -> Self {
        Self { store, layout }
    }

    /// The config a new image on `parent` starts from: the parent's, or an empty linux/amd64
    /// one (`FROM scratch`, `import`).
    pub fn base_config(&self, parent: Option<&ImageRecord>) -> Result<Value, ImageError> {
        match parent {
            Some(p) => Catalog::new(self.store.clone()).config(p),
            None => Ok(
                json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []}),
            ),
        }
    }

    /// Writes `tar` as a native (zstd:chunked) layer kept in the cache's blob directory, where
    /// lazy reads of registry-less blobs look for it, with its TOC and layer record stored.
    /// Entries that would land outside the image are refused before anything is stored.
    pub fn write_layer(&self, tar: impl Read) -> Result<NewLayer, ImageError> {
        let tmp_dir = self.layout.tmp();
        std::fs::create_dir_all(&tmp_dir).map_err(|e| bad("commit", e.to_string()))?;
        let tmp = strata_storage::atomic::temp_path(&tmp_dir.join("commit-layer"));
        let written = {
            let out = std::fs::File::create(&tmp).map_err(|e| bad("commit", e.to_string()))?;
            write_chunked(tar, std::io::BufWriter::new(out), 3).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                bad("commit", e.to_string())
            })?
        };
        let index = match strata_formats::index::LayerIndex::from_toc(
            &written.toc,
            strata_formats::index::Locations::Zstd,
        ) {
            Ok(i) => i,
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ImageError::Index {
                    layer: written.digest,
                    source,
                });
            }
        };
        let blob_dir = self.layout.blobs();
        std::fs::create_dir_all(&blob_dir).map_err(|e| bad("commit", e.to_string()))?;
        let blob_path = blob_dir.join(written.digest.hex());
        std::fs::rename(&tmp, &blob_path).map_err(|e| bad("commit", e.to_string()))?;
        self.store
            .put_blob(&written.toc_digest, &written.toc_compressed)?;
        self.store.put_layer(&LayerRecord {
            digest: written.digest,
            size: written.size,
            media_type: LAYER_MEDIA_TYPE.into(),
            format: LayerFormat::ZstdChunked,
            toc: Some(written.toc_digest),
            toc_uncompressed: written.toc_position.uncompressed,
            toc_offset: written.toc_position.offset,
            content_bytes: index.content_bytes(),
        })?;
        Ok(NewLayer {
            digest: written.digest,
            diff_id: written.diff_id,
            size: written.size,
            annotations: serde_json::to_value(&written.annotations)
                .map_err(|e| bad("commit", e.to_string()))?,
        })
    }

    /// Stores a new image (not tagged): `parent`'s layers, then `layer` if given, with
    /// `config` (complete, its history already extended by the caller; the new layer's
    /// diff_id is appended here). Returns its record.
    pub fn derive(
        &self,
        parent: Option<&ImageRecord>,
        mut config: Value,
        layer: Option<&NewLayer>,
    ) -> Result<ImageRecord, ImageError> {
        let now = now_rfc3339();
        let cfg = config
            .as_object_mut()
            .ok_or_else(|| bad("config", "not an object"))?;
        cfg.insert("created".into(), json!(now));
        if let Some(l) = layer {
            let rootfs = cfg
                .entry("rootfs")
                .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
            rootfs["diff_ids"]
                .as_array_mut()
                .ok_or_else(|| bad("config", "rootfs.diff_ids is not a list"))?
                .push(json!(l.diff_id.to_string()));
        }
        let config_bytes = serde_json::to_vec(&config).map_err(|e| bad("config", e.to_string()))?;
        let config_digest = Digest::of(&config_bytes);
        self.store.put_blob(&config_digest, &config_bytes)?;

        let mut layers: Vec<Value> = match parent {
            Some(p) => {
                let m: Value = serde_json::from_slice(&self.store.get_blob(&p.manifest)?)
                    .map_err(|e| bad("manifest", e.to_string()))?;
                m["layers"].as_array().cloned().unwrap_or_default()
            }
            None => Vec::new(),
        };
        if let Some(l) = layer {
            layers.push(json!({
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": l.digest.to_string(),
                "size": l.size,
                "annotations": l.annotations,
            }));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": layers,
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| bad("manifest", e.to_string()))?;
        let manifest_digest = Digest::of(&manifest_bytes);
        self.store.put_blob(&manifest_digest, &manifest_bytes)?;
        let mut layer_digests = parent.map(|p| p.layers.clone()).unwrap_or_default();
        layer_digests.extend(layer.map(|l| l.digest));
        let rec = ImageRecord {
            manifest: manifest_digest,
            config: config_digest,
            layers: layer_digests,
            sources: parent.map(|p| p.sources.clone()).unwrap_or_default(),
            index: None,
            pulled: now_secs(),
        };
        self.store.put_image(&rec)?;
        Ok(rec)
    }

    /// Writes `tar` as a new native layer on top of `parent` (or as the only layer of a new
    /// image, for `import`) and stores the new image (not tagged). Returns its record.
    pub fn commit(
        &self,
        parent: Option<&ImageRecord>,
        tar: impl Read,
        meta: &CommitMeta,
    ) -> Result<ImageRecord, ImageError> {
        let layer = self.write_layer(tar)?;
        let mut config = self.base_config(parent)?;
        let cfg = config
            .as_object_mut()
            .ok_or_else(|| bad("config", "not an object"))?;
        let mut inner = match &meta.config {
            Some(c) => c.clone(),
            None => cfg
                .get("config")
                .and_then(|c| c.as_object())
                .cloned()
                .unwrap_or_default(),
        };
        for c in &meta.changes {
            apply_change(&mut inner, c)?;
        }
        cfg.insert("config".into(), Value::Object(inner));
        if let Some(a) = &meta.author {
            cfg.insert("author".into(), json!(a));
        }
        // docker's image config keeps the commit message as `comment` (inspect's .Comment).
        match &meta.comment {
            Some(c) => cfg.insert("comment".into(), json!(c)),
            None => cfg.remove("comment"),
        };
        let entry = history_entry(
            &meta.created_by,
            meta.comment.as_deref(),
            meta.author.as_deref(),
            false,
        );
        match cfg.get_mut("history").and_then(|h| h.as_array_mut()) {
            Some(h) => h.push(entry),
            None => {
                cfg.insert("history".into(), json!([entry]));
            }
        }
        self.derive(parent, config, Some(&layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_edit_the_config_like_docker() {
        let mut cfg = serde_json::Map::new();
        cfg.insert("Env".into(), json!(["PATH=/bin", "A=1"]));
        for c in [
            "CMD [\"echo\",\"hi\"]",
            "ENTRYPOINT /run.sh",
            "ENV A=2",
            "WORKDIR /srv",
            "USER me",
            "EXPOSE 80 53/udp",
            "LABEL k=v",
            "VOLUME /data",
        ] {
            apply_change(&mut cfg, c).unwrap();
        }
        assert_eq!(cfg["Cmd"], json!(["echo", "hi"]));
        assert_eq!(cfg["Entrypoint"], json!(["/bin/sh", "-c", "/run.sh"]));
        assert_eq!(cfg["Env"], json!(["PATH=/bin", "A=2"]));
        assert_eq!(cfg["WorkingDir"], "/srv");
        assert_eq!(cfg["User"], "me");
        assert!(
            cfg["ExposedPorts"].get("80/tcp").is_some()
                && cfg["ExposedPorts"].get("53/udp").is_some()
        );
        assert_eq!(cfg["Labels"]["k"], "v");
        assert!(cfg["Volumes"].get("/data").is_some());
        assert!(apply_change(&mut cfg, "RUN rm -rf /").is_err());
    }
}
