//! The build: stages in order, each instruction a step that is taken from the cache or
//! carried out — metadata steps edit the config, RUN runs a container on the lazily mounted
//! parent, COPY and ADD write into a fresh upper layer — and committed as a new image.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use strata_image::Images;
use strata_image::commit::history_entry;
use strata_oci::config::{ContainerConfig, ImageConfig};
use strata_oci::nullable::Nullable;
use strata_oci::timefmt::now_secs;
use strata_overlay::root::{RootMount, is_runtime_artifact, mount_root};
use strata_runner::state::Containers;
use strata_storage::store::ImageRecord;

use crate::cache::{BuildCache, Entry, key};
use crate::config::default_shell;
use crate::dockerfile::{Dockerfile, Instruction, Kind};

mod copy_step;
mod meta;
mod run_step;
mod workdir;
use crate::words::{expand, key_values};

/// A failed build: one line naming the Dockerfile line.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile could not be read.
    #[error("{0}")]
    Dockerfile(#[from] crate::dockerfile::DockerfileError),
    /// A step failed.
    #[error("dockerfile line {line}: {text}: {reason}")]
    Step {
        /// 1-based line (0 for an ONBUILD trigger).
        line: usize,
        /// The instruction.
        text: String,
        /// What went wrong.
        reason: String,
    },
    /// A RUN step exited non-zero.
    #[error(
        "dockerfile line {line}: {text}: the command '{command}' returned a non-zero code: {code}"
    )]
    RunFailed {
        /// 1-based line.
        line: usize,
        /// The instruction.
        text: String,
        /// The command as run.
        command: String,
        /// Its exit code.
        code: i32,
    },
    /// Something outside any one step.
    #[error("{0}")]
    Other(String),
}

impl BuildError {
    /// The error as docker's classic builder words it (what its CLI prints after a blank
    /// line): parse errors come from the daemon, a failed step says only its cause.
    pub fn docker_message(&self) -> String {
        match self {
            Self::Dockerfile(e) => format!("Error response from daemon: {e}"),
            Self::Step { reason, .. } => reason.clone(),
            Self::RunFailed { command, code, .. } => {
                format!("The command '{command}' returned a non-zero code: {code}")
            }
            Self::Other(m) => m.clone(),
        }
    }
}

/// What the builder reports as it goes (the CLI prints docker's classic builder lines).
#[derive(Debug)]
pub enum Event<'a> {
    /// `Step N/M : TEXT`.
    Step {
        /// 1-based step.
        n: usize,
        /// Steps in all.
        total: usize,
        /// The instruction.
        text: &'a str,
    },
    /// `# Executing N build triggers`.
    Triggers(usize),
    /// ` ---> Using cache`.
    UsingCache,
    /// ` ---> Running in ID`.
    RunningIn(&'a str),
    /// `Removing intermediate container ID`.
    Removed(&'a str),
    /// ` ---> IMAGE` after each step.
    Image(&'a ImageRecord),
    /// A warning.
    Warning(String),
}

/// What the builder needs from its caller.
pub trait Host {
    /// The image `name` for FROM or `COPY --from`, pulled (lazily) if it is not here.
    fn image(&mut self, name: &str, platform: &str) -> Result<ImageRecord, String>;
    /// Reports progress.
    fn event(&mut self, event: Event<'_>);
}

/// How to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// `--build-arg` values (`None`: take it from our environment).
    pub build_args: Vec<(String, Option<String>)>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--target`.
    pub target: Option<String>,
    /// RUN output goes to a log (shown only when the step fails) instead of our stdout.
    pub quiet: bool,
    /// Default platform for FROM.
    pub platform: String,
    /// The strata executable and the hidden argument its container helper runs as.
    pub exe: PathBuf,
    /// See `exe`.
    pub init_arg: String,
}

/// A finished stage.
#[derive(Debug, Clone)]
struct Built {
    name: Option<String>,
    image: ImageRecord,
}

/// The state of the stage being built.
struct StageState {
    image: Option<ImageRecord>,
    config: ImageConfig,
    args: Vec<(String, Option<String>)>,
    cmd_set: bool,
}

impl StageState {
    /// The config's `config` object.
    fn container(&self) -> std::borrow::Cow<'_, ContainerConfig> {
        self.config.container()
    }

    fn env(&self) -> Vec<(String, String)> {
        self.container().env_pairs()
    }

    fn shell(&self) -> Vec<String> {
        self.container()
            .shell
            .get()
            .cloned()
            .unwrap_or_else(default_shell)
    }

    /// ENV values first, then the stage's ARGs.
    fn lookup(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .or_else(|| {
                self.args
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| v.clone())
            })
    }
}

/// The build arguments docker predefines: usable in RUN without an ARG, never reported as
/// unconsumed, kept out of the image's history.
const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A builder over a store.
pub struct Builder<'a> {
    ctx: &'a Images,
    rt: tokio::runtime::Handle,
    opts: Options,
    cache: BuildCache,
    containers: Containers,
    df: Dockerfile,
    consumed: HashSet<String>,
}

fn step_err(ins: &Instruction, reason: impl std::fmt::Display) -> BuildError {
    BuildError::Step {
        line: ins.line,
        text: ins.text.clone(),
        reason: reason.to_string(),
    }
}

fn random_id() -> String {
    // /dev/urandom missing is not a build error worth a variant; ids then come from the clock.
    Containers::new_id().unwrap_or_else(|_| format!("{:064x}", now_secs()))
}

impl<'a> Builder<'a> {
    /// Reads the Dockerfile; nothing runs yet.
    pub fn new(
        ctx: &'a Images,
        rt: tokio::runtime::Handle,
        root: &Path,
        opts: Options,
    ) -> Result<Self, BuildError> {
        let df = Dockerfile::parse(&opts.dockerfile)?;
        Ok(Self {
            ctx,
            rt,
            cache: BuildCache::new(root),
            containers: Containers::new(root),
            df,
            opts,
            consumed: HashSet::new(),
        })
    }

    /// Builds every stage up to the target (or the last); returns the final image.
    pub fn build(&mut self, host: &mut dyn Host) -> Result<ImageRecord, BuildError> {
        let stages = self.df.stages.clone();
        let last = match &self.opts.target {
            Some(t) => stages
                .iter()
                .position(|s| matches!(&s.from.kind, Kind::From { alias: Some(a), .. } if a.eq_ignore_ascii_case(t)))
                .ok_or_else(|| BuildError::Other(format!("target stage {t:?} could not be found")))?,
            None => stages.len() - 1,
        };
        // docker counts and shows the ARGs before the first FROM as steps of their own.
        let global_steps = self.df.global_args.clone();
        let total: usize = global_steps.len()
            + stages[..=last]
                .iter()
                .map(|s| 1 + s.body.len())
                .sum::<usize>();
        let mut n = 0;
        for ins in &global_steps {
            n += 1;
            host.event(Event::Step {
                n,
                total,
                text: &ins.text,
            });
        }
        let globals = self.global_args()?;
        let mut built: Vec<Built> = Vec::new();
        for stage in &stages[..=last] {
            n += 1;
            host.event(Event::Step {
                n,
                total,
                text: &stage.from.text,
            });
            let mut st = self.from(&stage.from, &globals, &built, host)?;
            if let Some(img) = &st.image {
                host.event(Event::Image(img));
            }
            for ins in &stage.body {
                n += 1;
                host.event(Event::Step {
                    n,
                    total,
                    text: &ins.text,
                });
                self.step(&mut st, ins, &globals, &built, host)?;
                if let Some(img) = &st.image {
                    host.event(Event::Image(img));
                }
            }
            let image = match st.image {
                Some(i) => i,
                None => self.store(None, &st.config, None, None)?,
            };
            let name = match &stage.from.kind {
                Kind::From { alias, .. } => alias.clone(),
                _ => None,
            };
            built.push(Built { name, image });
        }
        let unused: Vec<&str> = self
            .opts
            .build_args
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !self.consumed.contains(*k) && !PROXY_ARGS.contains(k))
            .collect();
        if !unused.is_empty() {
            host.event(Event::Warning(format!(
                "One or more build-args [{}] were not consumed",
                unused.join(" ")
            )));
        }
        Ok(built.pop().map(|b| b.image).expect("at least one stage"))
    }

    fn build_arg(&self, name: &str) -> Option<Option<String>> {
        self.opts
            .build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone().or_else(|| std::env::var(name).ok()))
    }

    fn global_args(&mut self) -> Result<Vec<(String, Option<String>)>, BuildError> {
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        for ins in self.df.global_args.clone() {
            let Kind::Arg(raw) = &ins.kind else { continue };
            for (k, default) in
                key_values(raw, self.df.escape, false).map_err(|e| step_err(&ins, e))?
            {
                let lookup = |n: &str| {
                    out.iter()
                        .rev()
                        .find(|(k, _)| k == n)
                        .and_then(|(_, v)| v.clone())
                };
                let default = default
                    .map(|d| expand(&d, &lookup, self.df.escape))
                    .transpose()
                    .map_err(|e| step_err(&ins, e))?;
                let value = match self.build_arg(&k) {
                    Some(v) => {
                        self.consumed.insert(k.clone());
                        v
                    }
                    None => default,
                };
                out.push((k, value));
            }
        }
        Ok(out)
    }

    fn from(
        &mut self,
        ins: &Instruction,
        globals: &[(String, Option<String>)],
        built: &[Built],
        host: &mut dyn Host,
    ) -> Result<StageState, BuildError> {
        let Kind::From {
            image, platform, ..
        } = &ins.kind
        else {
            return Err(step_err(ins, "not a FROM instruction"));
        };
        let lookup = |n: &str| {
            globals
                .iter()
                .rev()
                .find(|(k, _)| k == n)
                .and_then(|(_, v)| v.clone())
        };
        let name = expand(image, &lookup, self.df.escape).map_err(|e| step_err(ins, e))?;
        if name.is_empty() {
            return Err(step_err(
                ins,
                format!("base name ({image}) should not be blank"),
            ));
        }
        let platform = match platform {
            Some(p) => expand(p, &lookup, self.df.escape).map_err(|e| step_err(ins, e))?,
            None => self.opts.platform.clone(),
        };
        let image = if name == "scratch" {
            None
        } else if let Some(b) = built.iter().rev().find(|b| {
            b.name
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(&name))
        }) {
            Some(b.image.clone())
        } else {
            Some(host.image(&name, &platform).map_err(|e| step_err(ins, e))?)
        };
        let config = self
            .ctx
            .committer()
            .base_config(image.as_ref())
            .map_err(|e| step_err(ins, e))?;
        let mut st = StageState {
            image,
            config,
            args: Vec::new(),
            cmd_set: false,
        };
        // ONBUILD triggers of the base run now and are not inherited.
        let triggers: Vec<String> = st.container().on_build.get().cloned().unwrap_or_default();
        if !triggers.is_empty() {
            self.edit(&mut st, |c| {
                c.on_build = Nullable::Absent;
            });
            host.event(Event::Triggers(triggers.len()));
            for t in &triggers {
                let trig =
                    Dockerfile::parse_trigger(t, self.df.escape).map_err(|e| step_err(ins, e))?;
                let trig = Instruction {
                    line: ins.line,
                    text: trig.text.clone(),
                    kind: trig.kind,
                };
                self.step(&mut st, &trig, globals, built, host)?;
            }
        }
        Ok(st)
    }

    fn edit(&self, st: &mut StageState, f: impl FnOnce(&mut ContainerConfig)) {
        f(st.config.container_mut());
    }

    fn expand_in(
        &self,
        st: &StageState,
        ins: &Instruction,
        word: &str,
    ) -> Result<String, BuildError> {
        expand(word, &|n| st.lookup(n), self.df.escape).map_err(|e| step_err(ins, e))
    }

    /// Stores `config` (and `layer`) on `parent` as a new image; with `step`, a history entry
    /// for that instruction and its created_by text is added.
    fn store(
        &self,
        parent: Option<&ImageRecord>,
        config: &ImageConfig,
        layer: Option<&strata_image::commit::NewLayer>,
        step: Option<(&Instruction, &str)>,
    ) -> Result<ImageRecord, BuildError> {
        let mut config = config.clone();
        if let Some((_, created_by)) = step {
            config.push_history(history_entry(created_by, None, None, layer.is_none()));
        }
        self.ctx
            .committer()
            .derive(parent, config, layer)
            .map_err(|e| match step {
                Some((i, _)) => step_err(i, e),
                None => BuildError::Other(e.to_string()),
            })
    }

    /// Takes the step from the cache if it is there (the stage moves to the cached image and
    /// `None` comes back); otherwise returns the key to record the step's image under.
    fn try_cache(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        created_by: &str,
        host: &mut dyn Host,
    ) -> Result<Option<String>, BuildError> {
        let k = key(st.image.as_ref(), created_by);
        if !self.opts.no_cache
            && let Some(hit) = self
                .cache
                .lookup(self.ctx.store(), &k)
                .map_err(|e| step_err(ins, e))?
        {
            host.event(Event::UsingCache);
            st.config = self
                .ctx
                .catalog()
                .config(&hit)
                .map_err(|e| step_err(ins, e))?;
            st.image = Some(hit);
            return Ok(None);
        }
        Ok(Some(k))
    }

    /// Records a step's new image in the cache and moves the stage to it.
    fn advance(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        k: String,
        img: ImageRecord,
    ) -> Result<(), BuildError> {
        self.cache
            .insert(
                k,
                Entry {
                    image: img.manifest,
                    parent: st.image.as_ref().map(|p| p.manifest),
                    created: now_secs(),
                },
            )
            .map_err(|e| step_err(ins, e))?;
        st.config = self
            .ctx
            .catalog()
            .config(&img)
            .map_err(|e| step_err(ins, e))?;
        st.image = Some(img);
        Ok(())
    }

    fn metadata(
        &self,
        st: &mut StageState,
        ins: &Instruction,
        shown: &str,
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        // docker's classic builder joins "#(nop) " and the text with a space, except for
        // WORKDIR (and COPY/ADD), whose text it appends to "#(nop) " directly.
        let gap = if shown.starts_with("WORKDIR ") {
            ""
        } else {
            " "
        };
        let created_by = format!("/bin/sh -c #(nop) {gap}{shown}");
        let Some(k) = self.try_cache(st, ins, &created_by, host)? else {
            return Ok(());
        };
        // docker commits a metadata step through an intermediate container it creates and
        // removes; strata edits the config directly, but prints the same two lines (with a
        // fresh id) so that transcripts parse alike.
        let id = random_id();
        host.event(Event::RunningIn(&id[..12]));
        host.event(Event::Removed(&id[..12]));
        let img = self.store(
            st.image.as_ref(),
            &st.config,
            None,
            Some((ins, &created_by)),
        )?;
        self.advance(st, ins, k, img)
    }

    /// A container directory for a step, with the parent mounted under a fresh upper layer.
    fn mount_step(
        &self,
        st: &StageState,
        ins: &Instruction,
        id: &str,
    ) -> Result<(PathBuf, RootMount, ImageRecord), BuildError> {
        let parent = match &st.image {
            Some(i) => i.clone(),
            None => self.store(None, &st.config, None, None)?,
        };
        let dir = self.containers.dir_of(id);
        let root = mount_root(self.ctx, &self.rt, &parent, &dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            step_err(ins, e)
        })?;
        Ok((dir, root, parent))
    }

    /// Commits the upper layer of a finished step's container as the stage's next image.
    fn commit_upper(
        &self,
        st: &StageState,
        ins: &Instruction,
        dir: &Path,
        parent: &ImageRecord,
        created_by: &str,
    ) -> Result<ImageRecord, BuildError> {
        let layers = self
            .ctx
            .catalog()
            .open_layers(parent)
            .map_err(|e| step_err(ins, e))?;
        let tree = strata_lazyfs::Tree::build(layers.iter().map(|l| &l.index))
            .map_err(|e| step_err(ins, e))?;
        let skip = |rel: &Path, meta: &std::fs::Metadata| is_runtime_artifact(rel, meta, &tree);
        let layer = strata_overlay::union::upper_tar_stream(&dir.join("upper"), &skip, |tar| {
            self.ctx.committer().write_layer(tar)
        })
        .map_err(|e| step_err(ins, e))?;
        self.store(
            Some(parent),
            &st.config,
            Some(&layer),
            Some((ins, created_by)),
        )
    }
}
