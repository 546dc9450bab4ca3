//! The JSON `inspect` prints, in the shape of docker's (Docker Engine API's `ImageInspect` and
//! `ContainerJSON`, the fields strata can fill truthfully), with strata's own in `Strata`.

use serde_json::{Value, json};
use strata_image::Images;
use strata_oci::Reference;
use strata_storage::store::ImageRecord;

/// An image as docker's `inspect` shows it, and as its templates see it (the config's own
/// keys only, as docker's typed config omits empty ones; `.ID` beside `.Id`).
pub struct ImageJson {
    pub printed: Value,
    pub template: Value,
}

/// An image's inspect JSON.
pub fn image(
    ctx: &Images,
    img: &ImageRecord,
    tags: &std::collections::HashMap<strata_oci::Digest, Vec<String>>,
) -> anyhow::Result<ImageJson> {
    let config = ctx.catalog().config_json(img)?;
    let (repo_tags, repo_digests) = repo_names(img, tags);
    let (size, layers) = layers_json(ctx, img)?;
    let manifest = ctx.store().get_blob(&img.manifest).unwrap_or_default();
    let media_type = serde_json::from_slice::<Value>(&manifest)
        .ok()
        .and_then(|m| m.get("mediaType").cloned())
        .unwrap_or(json!("application/vnd.oci.image.manifest.v1+json"));
    let get = |k: &str, default: Value| config.get(k).cloned().unwrap_or(default);
    let raw_config = get("config", json!({}));
    let full_config = with_empty_fields(raw_config.clone());
    let rootfs = config.get("rootfs");
    let diff_ids = rootfs
        .and_then(|r| r.get("diff_ids"))
        .cloned()
        .unwrap_or(json!([]));
    let mut printed = json!({
        "Id": img.config.to_string(),
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": get("comment", json!("")),
        "Created": get("created", json!(null)),
        "DockerVersion": get("docker_version", json!("")),
        "Author": get("author", json!("")),
        "Architecture": get("architecture", json!("")),
        "Os": get("os", json!("")),
        "Size": size,
        "GraphDriver": {"Data": null, "Name": "overlayfs"},
        "RootFS": {
            "Type": rootfs.and_then(|r| r.get("type")).cloned().unwrap_or(json!("layers")),
            "Layers": diff_ids,
        },
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        "Descriptor": {
            "mediaType": media_type,
            "digest": img.manifest.to_string(),
            "size": manifest.len(),
        },
        "Config": full_config,
        "Strata": {
            "Manifest": img.manifest.to_string(),
            "Index": img.index.map(|d| d.to_string()),
            "Layers": layers,
        },
    });
    if let Some(v) = config.get("variant") {
        printed["Variant"] = v.clone();
    }
    let mut template = printed.clone();
    template["Config"] = raw_config;
    template["ID"] = printed["Id"].clone();
    Ok(ImageJson { printed, template })
}

/// docker's `RepoTags` (familiar names) and `RepoDigests` of an image.
fn repo_names(
    img: &ImageRecord,
    tags: &std::collections::HashMap<strata_oci::Digest, Vec<String>>,
) -> (Vec<String>, Vec<String>) {
    let repo_tags: Vec<String> = tags
        .get(&img.manifest)
        .into_iter()
        .flatten()
        .filter_map(|t| t.parse::<Reference>().ok())
        .map(|r| format!("{}:{}", r.familiar_repository(), r.tag.unwrap_or_default()))
        .collect();
    // As docker: the digest the user pulled by (a multi-platform image's index); the
    // platform manifest's digest stays in strata's own section.
    let pulled_by = img.index.unwrap_or(img.manifest);
    let repo_digests: Vec<String> = img
        .sources
        .iter()
        .map(|s| format!("{s}@{pulled_by}"))
        .collect();
    (repo_tags, repo_digests)
}

/// The image's size (its layers' content) and strata's description of each layer.
fn layers_json(ctx: &Images, img: &ImageRecord) -> anyhow::Result<(u64, Vec<Value>)> {
    let mut size = 0u64;
    let mut layers = Vec::new();
    for d in &img.layers {
        if let Some(l) = ctx.store().layer(d)? {
            size += l.content_bytes;
            layers.push(json!({
                "Digest": l.digest.to_string(),
                "MediaType": l.media_type,
                "Size": l.size,
                "Format": l.format,
                "TOC": l.toc.map(|d| d.to_string()),
                "ContentSize": l.content_bytes,
            }));
        }
    }
    Ok((size, layers))
}

/// The config as docker's typed one prints it: absent fields as null or empty.
fn with_empty_fields(mut config: Value) -> Value {
    if let Some(m) = config.as_object_mut() {
        for (k, v) in [
            ("Cmd", json!(null)),
            ("Entrypoint", json!(null)),
            ("Env", json!(null)),
            ("Labels", json!(null)),
            ("OnBuild", json!(null)),
            ("User", json!("")),
            ("Volumes", json!(null)),
            ("WorkingDir", json!("")),
        ] {
            m.entry(k).or_insert(v);
        }
    }
    config
}

/// RFC 3339 of seconds since the epoch.
pub(crate) fn time(secs: Option<i64>) -> String {
    match secs {
        Some(s) => strata_oci::timefmt::format_rfc3339(s, 0),
        None => "0001-01-01T00:00:00Z".into(),
    }
}
