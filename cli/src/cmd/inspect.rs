//! `strata inspect`: docker-like JSON for images.

use serde_json::json;
use strata_oci::Reference;

use crate::format::Format;
use crate::global::GlobalArgs;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images or containers (reference, name or ID).
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Print each object through a Go template (`{{.Id}}`, `{{json .Config}}`).
    #[arg(short = 'f', long)]
    pub format: Option<String>,
}

/// docker's `HostConfig` fields for a container's limits and security settings.
fn host_config(spec: &serde_json::Value) -> serde_json::Value {
    let spec: Option<strata_runner::Spec> = serde_json::from_value(spec.clone()).ok();
    let Some(spec) = spec else {
        return json!(null);
    };
    let (sec, res) = (&spec.security, &spec.resources);
    let or_null = |v: &[String]| if v.is_empty() { json!(null) } else { json!(v) };
    json!({
        "Memory": res.memory,
        "NanoCpus": res.nano_cpus,
        "PidsLimit": (res.pids_limit > 0).then_some(res.pids_limit),
        "CapAdd": or_null(&sec.cap_add),
        "CapDrop": or_null(&sec.cap_drop),
        "Privileged": sec.privileged,
        "SecurityOpt": or_null(&sec.security_opt()),
    })
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let format = match a.format.as_deref() {
        // docker's inspect has no table: `json` is its default array of objects.
        Some(f) if f.trim() == "json" => Format::Default,
        f => Format::parse(f)?,
    };
    let ctx = g.context()?;
    let tags = ctx.catalog().tags_by_manifest()?;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for name in &a.images {
        let (img, _) = match ctx.catalog().resolve(name) {
            Ok(x) => x,
            Err(_) => {
                // Not an image: a container, as docker inspect also accepts.
                let containers = strata_runner::state::Containers::new(&g.root());
                match containers.find(name) {
                    Some(c) => {
                        let spec: serde_json::Value =
                            std::fs::read(containers.dir_of(&c.id).join("spec.json"))
                                .ok()
                                .and_then(|b| serde_json::from_slice(&b).ok())
                                .unwrap_or(json!(null));
                        let host_config = host_config(&spec);
                        out.push(json!({
                            "Id": c.id, "Name": format!("/{}", c.name), "Image": c.image_id,
                            "HostConfig": host_config,
                            "Config": {"Image": c.image, "Cmd": c.command},
                            "State": {"Status": c.state, "Running": c.state == strata_runner::state::State::Running,
                                      "Pid": c.pid, "ExitCode": c.exit_code},
                            "Created": c.created, "Finished": c.finished,
                            "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": containers.dir_of(&c.id).join("upper")}},
                            "Strata": {"Spec": spec},
                        }));
                    }
                    None => missing.push(name.clone()),
                }
                continue;
            }
        };
        let config = ctx.catalog().config_json(&img)?;
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
        out.push(json!({
            "Id": img.config.to_string(),
            "RepoTags": repo_tags,
            "RepoDigests": repo_digests,
            "Created": config.get("created").cloned().unwrap_or(json!(null)),
            "Comment": config.get("comment").cloned().unwrap_or(json!("")),
            "Author": config.get("author").cloned().unwrap_or(json!("")),
            "Architecture": config.get("architecture").cloned().unwrap_or(json!("")),
            "Os": config.get("os").cloned().unwrap_or(json!("")),
            "Size": size,
            "Config": config.get("config").cloned().unwrap_or(json!({})),
            "RootFS": config.get("rootfs").cloned().unwrap_or(json!({})),
            "Strata": {
                "Manifest": img.manifest.to_string(),
                "Index": img.index.map(|d| d.to_string()),
                "Layers": layers,
            },
        }));
    }
    if format.is_default() {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        format.print(&out, &[])?;
    }
    if !missing.is_empty() {
        eprintln!("Error: No such object: {}", missing.join(", "));
        return Ok(1);
    }
    Ok(0)
}
