//! `strata save` and `strata load` (OCI image layout in a tar).

use anyhow::Context as _;

use crate::global::{GlobalArgs, runtime};

/// Arguments of `save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Write to this file (default: standard output).
    #[arg(short = 'o', long)]
    pub output: Option<std::path::PathBuf>,
    /// Images (references or ids).
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Arguments of `load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Read from this file (default: standard input).
    #[arg(short = 'i', long)]
    pub input: Option<std::path::PathBuf>,
    /// Suppress the load output (the loaded names still print, as docker's).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub fn run_save(a: SaveArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let mut images = Vec::new();
    for name in &a.images {
        let (img, key) = ctx
            .catalog()
            .resolve(name)
            .map_err(|_| crate::cmd::daemon(format!("No such image: {name}")))?;
        images.push((img, key));
    }
    let rt = runtime()?;
    match &a.output {
        Some(p) => {
            let tmp = p.with_extension("partial");
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            // A save that failed (a registry that stalled, a full disk) leaves no partial
            // archive behind.
            if let Err(e) = rt.block_on(ctx.archives().save(&images, std::io::BufWriter::new(f))) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::rename(&tmp, p)?;
        }
        None => rt.block_on(
            ctx.archives()
                .save(&images, std::io::BufWriter::new(std::io::stdout().lock())),
        )?,
    }
    Ok(0)
}

pub fn run_load(a: LoadArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let ctx = g.context()?;
    let loaded = match &a.input {
        Some(p) => ctx.archives().load(crate::cmd::open_file(p)?),
        None => ctx.archives().load(std::io::stdin().lock()),
    }
    .context("loading the archive")?;
    // As docker prints it: each name in its familiar form, or the ID of an unnamed image.
    for l in loaded {
        if l.names.is_empty() {
            println!("Loaded image ID: {}", l.image.config);
        }
        for n in l.names {
            println!(
                "Loaded image: {}:{}",
                n.familiar_repository(),
                n.tag.unwrap_or_else(|| "latest".into())
            );
        }
    }
    Ok(0)
}
