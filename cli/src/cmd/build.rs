//! `strata build`: a Dockerfile built on lazily mounted parents (see the strata-builder crate),
//! printed like docker's classic builder.

use std::path::PathBuf;

use anyhow::Context as _;
use strata_builder::{Builder, Event, Host, Options};
use strata_image::Images;
use strata_oci::Reference;
use strata_storage::store::ImageRecord;

use crate::cmd::container::INIT_ARG;
use crate::cmd::mount::{Shown, find_or_pull_shown};
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
    /// Set metadata on the image (KEY=VALUE); may be repeated.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Platform of the base images.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// The build context directory, or `-` for a Dockerfile on stdin and no context.
    pub context: PathBuf,
}

struct Printer<'a> {
    ctx: &'a Images,
    rt: &'a tokio::runtime::Runtime,
    quiet: bool,
}

impl Host for Printer<'_> {
    fn image(&mut self, name: &str, platform: &str) -> Result<ImageRecord, String> {
        let shown = if self.quiet {
            Shown::Quiet
        } else {
            Shown::Build
        };
        find_or_pull_shown(self.ctx, self.rt, name, platform, shown).map_err(|e| format!("{e:#}"))
    }

    fn event(&mut self, event: Event<'_>) {
        // docker's classic builder with -q prints nothing but the ID (warnings included).
        if self.quiet {
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
            // moby v2's classic builder wording.
            Event::Removed(id) => println!(" ---> Removed intermediate container {id}"),
            Event::Image(img) => println!(" ---> {}", img.config.short()),
            Event::Warning(w) => eprintln!("[Warning] {w}"),
        }
    }
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    let tags = parse_tags(&a.tags)?;
    let input = match read_input(&a)? {
        Ok(input) => input,
        Err(code) => return Ok(code),
    };
    let ctx = g.context()?;
    let rt = runtime()?;
    let opts = Options {
        context: input.context,
        dockerfile: with_labels(input.dockerfile, &a.labels),
        build_args: build_args(&a.build_args),
        no_cache: a.no_cache,
        target: a.target.clone(),
        quiet: a.quiet,
        platform: a.platform.clone(),
        exe: std::env::current_exe()?,
        init_arg: INIT_ARG.to_string(),
    };
    if !a.quiet {
        let size = strata_builder::context::Sources::context(&opts.context)
            .and_then(|s| s.tar_size())
            .with_context(|| format!("reading the build context {}", opts.context.display()))?;
        println!(
            "Sending build context to Docker daemon  {}",
            human_size(size)
        );
    }
    let mut printer = Printer {
        ctx: &ctx,
        rt: &rt,
        quiet: a.quiet,
    };
    // Build errors as docker's CLI prints them: a blank line, then the cause; exit 1.
    let built = Builder::new(&ctx, rt.handle().clone(), &g.root(), opts)
        .and_then(|mut b| b.build(&mut printer));
    let img = match built {
        Ok(img) => img,
        Err(e) => {
            tracing::debug!(error = %e, "build failed");
            eprintln!("\n{}", e.docker_message());
            return Ok(1);
        }
    };
    for t in &tags {
        ctx.catalog().tag(&img, t)?;
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

/// The `-t` names, refused as docker/cli refuses a bad flag value (exit 125).
fn parse_tags(tags: &[String]) -> anyhow::Result<Vec<Reference>> {
    tags.iter()
        .map(|t| {
            t.parse().map_err(|_| {
                anyhow::Error::from(crate::cmd::Coded {
                    code: 125,
                    message: format!(
                        "\ninvalid argument {t:?} for \"-t, --tag\" flag: {}\n\nUsage:  strata build [OPTIONS] PATH | URL | -\n\nRun 'strata build --help' for more information",
                        crate::cmd::refs::docker_reason(t)
                    ),
                })
            })
        })
        .collect()
}

/// What a build reads: its context directory and the Dockerfile's text.
struct Input {
    context: PathBuf,
    dockerfile: String,
    /// The empty context of `build -`, removed when the build is done.
    _empty: Option<tempfile::TempDir>,
}

/// The context and Dockerfile of the build; `Err(1)` once docker's message for a missing
/// context or Dockerfile is printed.
fn read_input(a: &Args) -> anyhow::Result<Result<Input, i32>> {
    // `build -`: the Dockerfile on stdin and no context (docker's `docker build - < Dockerfile`).
    if a.context.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the Dockerfile from stdin")?;
        let empty = tempfile::tempdir().context("creating an empty build context")?;
        return Ok(Ok(Input {
            context: empty.path().to_path_buf(),
            dockerfile: text,
            _empty: Some(empty),
        }));
    }
    if !a.context.is_dir() {
        eprintln!(
            "\nunable to prepare context: path {:?} not found",
            a.context.display().to_string()
        );
        return Ok(Err(1));
    }
    let file = match &a.file {
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
    let dockerfile = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let abs = std::path::absolute(&file).unwrap_or_else(|_| file.clone());
            eprintln!(
                "\nunable to prepare context: unable to evaluate symlinks in Dockerfile path: lstat {}: no such file or directory",
                abs.display()
            );
            return Ok(Err(1));
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the Dockerfile {}", file.display()));
        }
    };
    Ok(Ok(Input {
        context: a.context.clone(),
        dockerfile,
        _empty: None,
    }))
}

/// `--label`: docker's classic builder appends them to the Dockerfile as one LABEL step.
fn with_labels(dockerfile: String, labels: &[String]) -> String {
    if labels.is_empty() {
        return dockerfile;
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            format!("{k:?}={v:?}")
        })
        .collect();
    format!("{}\nLABEL {}\n", dockerfile.trim_end(), pairs.join(" "))
}

/// `--build-arg KEY=VALUE` or `KEY` (taken from the environment).
fn build_args(args: &[String]) -> Vec<(String, Option<String>)> {
    args.iter()
        .map(|b| match b.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (b.clone(), None),
        })
        .collect()
}

/// A size as docker's go-units `HumanSize` prints it: decimal units, `%.4g` (four significant
/// digits, trailing zeros dropped): 2048 is "2.048kB".
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    let int_digits = if v >= 100.0 {
        3
    } else if v >= 10.0 {
        2
    } else {
        1
    };
    let text = format!("{v:.*}", 4 - int_digits);
    let text = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => text,
    };
    format!("{text}{}", units[i])
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_as_go_units() {
        assert_eq!(super::human_size(2048), "2.048kB");
        assert_eq!(super::human_size(512), "512B");
        assert_eq!(super::human_size(1_500_000), "1.5MB");
        assert_eq!(super::human_size(123_456_789), "123.5MB");
    }
}
