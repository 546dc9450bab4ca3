//! `strata build`: a Dockerfile built on lazily mounted parents (see the strata-build crate),
//! printed like docker's classic builder.

use std::path::PathBuf;

use anyhow::Context as _;
use strata_build::{Builder, Event, Host, Options};
use strata_fetcher::Reference;
use strata_fetcher::image::Context;
use strata_fetcher::store::ImageRecord;

use crate::cmd::mount::find_or_pull;
use crate::cmd::run::INIT_ARG;
use crate::global::{GlobalArgs, runtime};

/// Arguments of `build`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name and optionally a tag (name:tag); may be repeated.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Build-time variable KEY=VALUE (or KEY, taken from the environment); may be repeated.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Do not use the build cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print only the image ID on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Build up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Platform of the base images.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// The build context directory, or `-` for a Dockerfile on stdin and no context.
    pub context: PathBuf,
}

struct Printer<'a> {
    ctx: &'a Context,
    rt: &'a tokio::runtime::Runtime,
    quiet: bool,
}

impl Host for Printer<'_> {
    fn image(&mut self, name: &str, platform: &str) -> Result<ImageRecord, String> {
        find_or_pull(self.ctx, self.rt, name, platform).map_err(|e| format!("{e:#}"))
    }

    fn event(&mut self, event: Event<'_>) {
        if self.quiet {
            if let Event::Warning(w) = event {
                eprintln!("{w}");
            }
            return;
        }
        match event {
            Event::Step { n, total, text } => println!("Step {n}/{total} : {text}"),
            Event::Triggers(n) => println!(
                "# Executing {n} build trigger{}",
                if n == 1 { "" } else { "s" }
            ),
            Event::UsingCache => println!(" ---> Using cache"),
            Event::RunningIn(id) => println!(" ---> Running in {id}"),
            Event::Removed(id) => println!("Removing intermediate container {id}"),
            Event::Image(img) => println!(" ---> {}", img.config.short()),
            Event::Warning(w) => eprintln!("[Warning] {w}"),
        }
    }
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let tags: Vec<Reference> = a
        .tags
        .iter()
        .map(|t| t.parse().with_context(|| format!("invalid tag {t:?}")))
        .collect::<anyhow::Result<_>>()?;
    // `build -`: the Dockerfile on stdin and no context (docker's `docker build - < Dockerfile`).
    let stdin_ctx = if a.context.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the Dockerfile from stdin")?;
        let empty = tempfile::tempdir().context("creating an empty build context")?;
        Some((text, empty))
    } else {
        None
    };
    let context = match &stdin_ctx {
        Some((_, empty)) => empty.path().to_path_buf(),
        None => a.context.clone(),
    };
    if !context.is_dir() {
        anyhow::bail!(
            "unable to prepare context: path {:?} not found",
            a.context.display().to_string()
        );
    }
    let file = match &a.file {
        _ if stdin_ctx.is_some() => PathBuf::new(),
        Some(f) => f.clone(),
        // The context's own Dockerfile: a symlink is followed inside the context only.
        None => strata_runner::InRoot::open(&a.context)
            .and_then(|r| r.resolve(std::path::Path::new("Dockerfile")))
            .map_err(std::io::Error::from)
            .with_context(|| {
                format!(
                    "reading the Dockerfile {}",
                    a.context.join("Dockerfile").display()
                )
            })?,
    };
    let dockerfile = match &stdin_ctx {
        Some((text, _)) => text.clone(),
        None => std::fs::read_to_string(&file)
            .with_context(|| format!("reading the Dockerfile {}", file.display()))?,
    };
    let build_args = a
        .build_args
        .iter()
        .map(|b| match b.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (b.clone(), None),
        })
        .collect();
    let ctx = g.context()?;
    let rt = runtime()?;
    let opts = Options {
        context,
        dockerfile,
        build_args,
        no_cache: a.no_cache,
        target: a.target.clone(),
        quiet: a.quiet,
        platform: a.platform.clone(),
        exe: std::env::current_exe()?,
        init_arg: INIT_ARG.to_string(),
    };
    let mut builder = Builder::new(&ctx, rt.handle().clone(), &g.root(), opts)?;
    let mut printer = Printer {
        ctx: &ctx,
        rt: &rt,
        quiet: a.quiet,
    };
    let img = match builder.build(&mut printer) {
        Ok(img) => img,
        Err(e) => {
            eprintln!("strata: {e}");
            return Ok(1);
        }
    };
    for t in &tags {
        ctx.tag(&img, t)?;
    }
    if a.quiet {
        println!("{}", img.config);
    } else {
        println!("Successfully built {}", img.config.short());
        for t in &a.tags {
            println!("Successfully tagged {t}");
        }
    }
    Ok(0)
}
