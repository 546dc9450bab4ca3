//! `strata inspect`: docker-like JSON for images and containers.

use serde_json::Value;
use strata_runner::state::Containers;

use crate::cmd::inspect_json;
use crate::format::{Format, TemplateError};
use crate::global::GlobalArgs;
use crate::gotmpl::Missing;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images or containers (reference, name or ID).
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Print each object through a Go template (`{{.Id}}`, `{{json .Config}}`).
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// Display total file sizes if the type is container.
    #[arg(short = 's', long)]
    pub size: bool,
    /// Only objects of this type: image or container.
    #[arg(long = "type")]
    pub kind: Option<String>,
}

/// The types docker's `inspect --type` knows.
const TYPES: [&str; 10] = [
    "config",
    "container",
    "image",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
    "task",
    "volume",
];

/// docker's JSON indentation (4 spaces) and HTML-safe escapes (`\u003c`).
fn docker_json(v: &Value) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser)?;
    Ok(String::from_utf8(buf)?
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026"))
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    if let Some(k) = &a.kind
        && !TYPES.contains(&k.as_str())
    {
        let known: Vec<String> = TYPES.iter().map(|t| format!("{t:?}")).collect();
        anyhow::bail!("unknown type: {k:?}: must be one of {}", known.join(", "));
    }
    let (images, containers) = match a.kind.as_deref() {
        None => (true, true),
        Some("image") => (true, false),
        Some("container") => (false, true),
        Some(_) => (false, false),
    };
    let format = parse_format(a.format.as_deref())?;
    let ctx = g.context()?;
    let tags = ctx.catalog().tags_by_manifest()?;
    let cs = Containers::new(&g.root());
    let (mut printed, mut templated) = (Vec::new(), Vec::new());
    let mut missing = Vec::new();
    let mut warned = false;
    for name in &a.images {
        if images && let Ok((img, _)) = ctx.catalog().resolve(name) {
            if a.size && !warned {
                eprintln!("WARNING: --size ignored for image");
                warned = true;
            }
            let j = inspect_json::image(&ctx, &img, &tags)?;
            printed.push(j.printed);
            templated.push(j.template);
            continue;
        }
        // Not an image: a container, as docker inspect also accepts.
        match cs.find(name).filter(|_| containers) {
            Some(c) => {
                // A container whose supervisor was killed reads as exited, as in `ps`.
                let c = crate::cmd::ps::effective(&c);
                let image = container_image(&ctx, &c);
                let j = crate::cmd::inspect_container::container(&cs, &c, a.size, &image);
                printed.push(j.clone());
                templated.push(j);
            }
            None => missing.push(name.clone()),
        }
    }
    if format.is_default() {
        println!("{}", docker_json(&Value::Array(printed))?);
    } else {
        for item in &templated {
            println!("{}", format.render(item)?);
        }
    }
    if missing.is_empty() {
        return Ok(0);
    }
    report_missing(a.kind.as_deref(), &missing);
    Ok(1)
}

/// `--format`: docker's inspect has no table, and `json` is its default array of objects.
fn parse_format(f: Option<&str>) -> anyhow::Result<Format> {
    Ok(match f {
        Some(f) if f.trim() == "json" => Format::Default,
        f => Format::parse_for(f, Missing::MapKey, false).map_err(|e| {
            // docker's inspect exits 64 on a template it cannot parse.
            match e.downcast_ref::<TemplateError>() {
                Some(t) => crate::cmd::Coded {
                    code: 64,
                    message: t.to_string(),
                }
                .into(),
                None => e,
            }
        })?,
    })
}

/// docker's errors for the names that matched nothing: one line per name with `--type`,
/// one line for all of them without.
fn report_missing(kind: Option<&str>, missing: &[String]) {
    let what = match kind {
        Some("image") => "image",
        Some("container") => "container",
        _ => {
            eprintln!("Error: No such object: {}", missing.join(", "));
            return;
        }
    };
    for m in missing {
        eprintln!("Error response from daemon: No such {what}: {m}");
    }
}

/// What a container's inspect JSON shows of its image: its `Env` and its manifest.
fn container_image(
    ctx: &strata_image::Images,
    c: &strata_runner::state::Container,
) -> crate::cmd::inspect_container::ContainerImage {
    let Ok((img, _)) = ctx
        .catalog()
        .image_of(c.image_manifest.as_deref(), &c.image_id)
    else {
        return Default::default();
    };
    let env = ctx
        .catalog()
        .config(&img)
        .ok()
        .and_then(|cfg| cfg.config.and_then(|c| c.env.get().cloned()))
        .unwrap_or_default();
    let manifest = ctx.store().get_blob(&img.manifest).ok().map(|m| {
        let size = m.len() as u64;
        (
            strata_oci::manifest::media_type_of(&m),
            img.manifest.to_string(),
            size,
        )
    });
    crate::cmd::inspect_container::ContainerImage { env, manifest }
}
