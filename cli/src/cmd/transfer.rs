//! `strata export` (a container's filesystem as one tar) and `strata import` (a rootfs tarball
//! becomes a one-layer image in the native format).

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use strata_image::CommitMeta;
use strata_oci::Reference;
use strata_runner::state::{Containers, State};

use crate::global::{GlobalArgs, runtime};
use strata_overlay::root::mount_root;

/// Arguments of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Container (name or id).
    pub container: String,
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// Arguments of `import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A tar (or tar.gz / tar.zst) file, an http(s) URL, or `-` for standard input.
    pub file: String,
    /// REPOSITORY[:TAG] for the new image.
    pub reference: Option<String>,
    /// Commit message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, ...).
    #[arg(short = 'c', long = "change")]
    pub changes: Vec<String>,
}

pub fn run_export(a: ExportArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let containers = Containers::new(&g.root());
    let c = containers
        .find(&a.container)
        .ok_or_else(|| crate::cmd::daemon(format!("No such container: {}", a.container)))?;
    let dir = containers.dir_of(&c.id);
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let none = |_: &std::path::Path, _: &std::fs::Metadata| false;
    if c.state == State::Running {
        // Its root is mounted by its own strata process.
        let mut w = strata_overlay::union::upper_to_tar(&dir.join("rootfs"), &none, out)?;
        w.flush()?;
        return Ok(0);
    }
    let ctx = g.context()?;
    let rt = runtime()?;
    let (img, _) = ctx
        .catalog()
        .image_of(c.image_manifest.as_deref(), &c.image_id)?;
    let root = mount_root(&ctx, rt.handle(), &img, &dir)?;
    out = strata_overlay::union::upper_to_tar(&root.rootfs, &none, out)?;
    out.flush()?;
    drop(root);
    Ok(0)
}

pub fn run_import(a: ImportArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let target: Option<Reference> = a.reference.as_deref().map(str::parse).transpose()?;
    // Checked before any input is read.
    let mut config = strata_oci::config::ContainerConfig::default();
    strata_builder::change::apply_changes(&mut config, &a.changes)?;
    let ctx = g.context()?;
    let downloaded = g
        .root()
        .join("tmp")
        .join(format!(".tmp-{}-import.tar", std::process::id()));
    let mut input: Box<dyn Read> = if a.file == "-" {
        Box::new(std::io::stdin().lock())
    } else if a.file.starts_with("http://") || a.file.starts_with("https://") {
        std::fs::create_dir_all(g.root().join("tmp"))?;
        runtime()?
            .block_on(ctx.client().download(&a.file, &downloaded))
            .with_context(|| format!("downloading {}", a.file))?;
        let f = std::fs::File::open(&downloaded)?;
        let _ = std::fs::remove_file(&downloaded);
        Box::new(f)
    } else {
        Box::new(crate::cmd::open_file(std::path::Path::new(&a.file))?)
    };
    let mut head = [0u8; 4];
    let n = input.read(&mut head)?;
    if n == 0 {
        anyhow::bail!("importing {}: the file is empty, not a tar archive", a.file);
    }
    let chained = std::io::Cursor::new(head[..n].to_vec()).chain(input);
    let tar = strata_storage::plain::decompress(chained, strata_storage::plain::sniff(&head[..n]))?;
    let meta = CommitMeta {
        comment: a.message,
        author: None,
        // docker leaves an imported layer's history without a command.
        created_by: String::new(),
        config: Some(config),
    };
    let rec = ctx
        .committer()
        .commit(None, tar, &meta)
        .with_context(|| format!("importing {}", a.file))?;
    if let Some(t) = target {
        ctx.catalog().tag(&rec, &t)?;
    }
    println!("{}", rec.config);
    Ok(0)
}
