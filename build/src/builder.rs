//! The build: stages in order, each instruction a step that is taken from the cache or
//! carried out — metadata steps edit the config, RUN runs a container on the lazily mounted
//! parent, COPY and ADD write into a fresh upper layer — and committed as a new image.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use strata_fetcher::commit::history_entry;
use strata_fetcher::image::Context;
use strata_fetcher::store::ImageRecord;
use strata_fetcher::timefmt::now_secs;
use strata_fs::root::{RootMount, is_runtime_artifact, mount_root};
use strata_runner::state::{Container, Containers, State};
use strata_runner::{InRoot, Network, Spec, Stdio};

use crate::cache::{BuildCache, Entry, key};
use crate::config::{self as cfgedit, argv, default_shell};
use crate::context::Sources;
use crate::copy::{self, Attrs};
use crate::dockerfile::{CommandForm, CopyArgs, Dockerfile, Health, Instruction, Kind};
use crate::unpack;

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
    config: Value,
    args: Vec<(String, Option<String>)>,
    cmd_set: bool,
}

impl StageState {
    /// The config's `config` object, to edit.
    fn inner(&self) -> Map<String, Value> {
        self.config
            .get("config")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// One field of the config's `config` object.
    fn field(&self, key: &str) -> Option<&Value> {
        self.config.get("config")?.get(key)
    }

    fn env(&self) -> Vec<(String, String)> {
        self.config
            .get("config")
            .and_then(Value::as_object)
            .map(cfgedit::env_pairs)
            .unwrap_or_default()
    }

    fn shell(&self) -> Vec<String> {
        self.field("Shell")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
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
    ctx: &'a Context,
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
        ctx: &'a Context,
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
            .base_config(image.as_ref())
            .map_err(|e| step_err(ins, e))?;
        let mut st = StageState {
            image,
            config,
            args: Vec::new(),
            cmd_set: false,
        };
        // ONBUILD triggers of the base run now and are not inherited.
        let triggers: Vec<String> = st
            .field("OnBuild")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if !triggers.is_empty() {
            self.edit(&mut st, |c| {
                c.remove("OnBuild");
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

    fn edit(&self, st: &mut StageState, f: impl FnOnce(&mut Map<String, Value>)) {
        let mut inner = st.inner();
        f(&mut inner);
        st.config["config"] = Value::Object(inner);
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
        config: &Value,
        layer: Option<&strata_fetcher::commit::NewLayer>,
        step: Option<(&Instruction, &str)>,
    ) -> Result<ImageRecord, BuildError> {
        let mut config = config.clone();
        if let Some((_, created_by)) = step {
            let entry = history_entry(created_by, None, None, layer.is_none());
            match config.get_mut("history").and_then(Value::as_array_mut) {
                Some(h) => h.push(entry),
                None => config["history"] = json!([entry]),
            }
        }
        self.ctx
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
                .lookup(&self.ctx.store, &k)
                .map_err(|e| step_err(ins, e))?
        {
            host.event(Event::UsingCache);
            st.config = self.ctx.config(&hit).map_err(|e| step_err(ins, e))?;
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
        st.config = self.ctx.config(&img).map_err(|e| step_err(ins, e))?;
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
        let created_by = format!("/bin/sh -c #(nop)  {shown}");
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

    fn step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        globals: &[(String, Option<String>)],
        built: &[Built],
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        let esc = self.df.escape;
        // Metadata steps edit a copy of the config, committed by `metadata` (or replaced by
        // the cached image's, which is the same).
        let before = st.config.clone();
        let shown: String = match &ins.kind {
            Kind::From { .. } => return Err(step_err(ins, "FROM inside a stage")),
            Kind::Run(form) => return self.run(st, ins, form, host),
            Kind::Copy(args) => return self.copy(st, ins, args, false, built, host),
            Kind::Add(args) => return self.copy(st, ins, args, true, built, host),
            Kind::Env(raw) => {
                let mut shown = Vec::new();
                let mut sets = Vec::new();
                for (k, v) in key_values(raw, esc, true).map_err(|e| step_err(ins, e))? {
                    let v =
                        v.ok_or_else(|| step_err(ins, format!("ENV names {k} without a value")))?;
                    let k = self.expand_in(st, ins, &k)?;
                    let v = self.expand_in(st, ins, &v)?;
                    if k.is_empty() || k.contains('=') {
                        return Err(step_err(ins, format!("ENV key {k:?} is not a name")));
                    }
                    shown.push(format!("{k}={v}"));
                    sets.push((k, v));
                }
                self.edit(st, |c| {
                    for (k, v) in &sets {
                        cfgedit::set_env(c, k, v);
                    }
                });
                format!("ENV {}", shown.join(" "))
            }
            Kind::Arg(raw) => {
                for (k, default) in key_values(raw, esc, false).map_err(|e| step_err(ins, e))? {
                    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(step_err(ins, format!("ARG name {k:?} is not a name")));
                    }
                    let default = default.map(|d| self.expand_in(st, ins, &d)).transpose()?;
                    let value = match self.build_arg(&k) {
                        Some(v) => {
                            self.consumed.insert(k.clone());
                            v
                        }
                        None => default.or_else(|| {
                            globals
                                .iter()
                                .rev()
                                .find(|(g, _)| *g == k)
                                .and_then(|(_, v)| v.clone())
                        }),
                    };
                    st.args.push((k, value));
                }
                format!("ARG {raw}")
            }
            Kind::Label(raw) => {
                let mut sets = Vec::new();
                for (k, v) in key_values(raw, esc, true).map_err(|e| step_err(ins, e))? {
                    let v = v.ok_or_else(|| step_err(ins, format!("LABEL {k} needs a value")))?;
                    sets.push((self.expand_in(st, ins, &k)?, self.expand_in(st, ins, &v)?));
                }
                self.edit(st, |c| {
                    for (k, v) in &sets {
                        cfgedit::set_label(c, k, v);
                    }
                });
                let shown: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("LABEL {}", shown.join(" "))
            }
            Kind::Maintainer(name) => {
                st.config["author"] = json!(name);
                format!("MAINTAINER {name}")
            }
            Kind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    ports.push(cfgedit::port(&self.expand_in(st, ins, w)?));
                }
                self.edit(st, |c| {
                    ports
                        .iter()
                        .for_each(|p| cfgedit::add_to_set(c, "ExposedPorts", p))
                });
                format!("EXPOSE {}", ports.join(" "))
            }
            Kind::Volume(words) => {
                let mut vols = Vec::new();
                for w in words {
                    vols.push(self.expand_in(st, ins, w)?);
                }
                if vols.iter().any(String::is_empty) {
                    return Err(step_err(ins, "VOLUME specified can not be an empty string"));
                }
                self.edit(st, |c| {
                    vols.iter()
                        .for_each(|v| cfgedit::add_to_set(c, "Volumes", v))
                });
                format!("VOLUME {vols:?}")
            }
            Kind::User(raw) => {
                let u = self.expand_in(st, ins, raw)?;
                self.edit(st, |c| {
                    c.insert("User".into(), json!(u));
                });
                format!("USER {u}")
            }
            Kind::Workdir(raw) => {
                let w = self.expand_in(st, ins, raw)?;
                let current = st
                    .field("WorkingDir")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                let w = cfgedit::workdir(current.as_deref(), &w);
                self.edit(st, |c| {
                    c.insert("WorkingDir".into(), json!(w));
                });
                let user = st
                    .field("User")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if !workdir::is_root(&user) {
                    let result = self.workdir_as_user(st, ins, &w, &user, host);
                    if result.is_err() {
                        st.config = before;
                    }
                    return result;
                }
                format!("WORKDIR {w}")
            }
            Kind::Cmd(form) => {
                let v = argv(form, &st.shell());
                self.edit(st, |c| {
                    c.insert("Cmd".into(), argv_value(&v));
                });
                st.cmd_set = true;
                format!("CMD {}", json!(v))
            }
            Kind::Entrypoint(form) => {
                let v = argv(form, &st.shell());
                let reset_cmd = !st.cmd_set;
                self.edit(st, |c| {
                    c.insert("Entrypoint".into(), argv_value(&v));
                    if reset_cmd {
                        c.insert("Cmd".into(), Value::Null);
                    }
                });
                format!("ENTRYPOINT {}", json!(v))
            }
            Kind::Onbuild(trigger) => {
                let t = trigger.clone();
                self.edit(st, |c| {
                    let list = c.entry("OnBuild").or_insert_with(|| json!([]));
                    if !list.is_array() {
                        *list = json!([]);
                    }
                    list.as_array_mut().expect("an array").push(json!(t));
                });
                format!("ONBUILD {trigger}")
            }
            Kind::Shell(v) => {
                if v.is_empty() {
                    return Err(step_err(
                        ins,
                        "SHELL requires a JSON array of at least one element",
                    ));
                }
                let v = v.clone();
                self.edit(st, |c| {
                    c.insert("Shell".into(), json!(v));
                });
                format!("SHELL {}", json!(st.shell()))
            }
            Kind::Stopsignal(raw) => {
                let s = self.expand_in(st, ins, raw)?;
                self.edit(st, |c| {
                    c.insert("StopSignal".into(), json!(s));
                });
                format!("STOPSIGNAL {s}")
            }
            Kind::Healthcheck(h) => {
                let value = match h {
                    Health::None => cfgedit::healthcheck(&[], None),
                    Health::Check { flags, cmd } => cfgedit::healthcheck(flags, Some(cmd)),
                }
                .map_err(|e| step_err(ins, e))?;
                let shown = format!("HEALTHCHECK {value}");
                self.edit(st, |c| {
                    c.insert("Healthcheck".into(), value);
                });
                shown
            }
        };
        let result = self.metadata(st, ins, &shown, host);
        if result.is_err() {
            st.config = before;
        }
        result
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
        let layers = self.ctx.open_layers(parent).map_err(|e| step_err(ins, e))?;
        let tree = strata_fs::Tree::build(layers.iter().map(|l| &l.index))
            .map_err(|e| step_err(ins, e))?;
        let skip = |rel: &Path, meta: &std::fs::Metadata| is_runtime_artifact(rel, meta, &tree);
        let layer = strata_fs::union::upper_tar_stream(&dir.join("upper"), &skip, |tar| {
            self.ctx.write_layer(tar)
        })
        .map_err(|e| step_err(ins, e))?;
        self.store(
            Some(parent),
            &st.config,
            Some(&layer),
            Some((ins, created_by)),
        )
    }

    fn run(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        form: &CommandForm,
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        let args = argv(form, &st.shell());
        let env_keys: Vec<String> = st.env().into_iter().map(|(k, _)| k).collect();
        // Build arguments reach RUN as environment (ENV wins) and key its cache entry.
        let build_env: BTreeMap<String, String> = st
            .args
            .iter()
            .filter(|(k, _)| !env_keys.contains(k))
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        // The predefined proxy ARGs reach RUN without an ARG but, as docker keeps them, not
        // its history line (only the `|N` prefix, N not counting them).
        let proxies: BTreeMap<String, String> = PROXY_ARGS
            .iter()
            .filter(|k| !env_keys.iter().any(|e| e == *k) && !st.args.iter().any(|(a, _)| a == *k))
            .filter_map(|k| self.build_arg(k).flatten().map(|v| (k.to_string(), v)))
            .collect();
        let mut created_by = String::new();
        if !build_env.is_empty() || !proxies.is_empty() {
            created_by.push_str(&format!("|{} ", build_env.len()));
            for (k, v) in &build_env {
                created_by.push_str(&format!("{k}={v} "));
            }
        }
        created_by.push_str(&args.join(" "));
        let quiet = self.opts.quiet;
        let exe = self.opts.exe.clone();
        let init_arg = self.opts.init_arg.clone();
        let Some(k) = self.try_cache(st, ins, &created_by, host)? else {
            return Ok(());
        };
        let b = &*self;
        let img = {
            let id = random_id();
            let (dir, root, parent) = b.mount_step(st, ins, &id)?;
            let mut env: Vec<String> = st
                .env()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            env.extend(build_env.iter().map(|(k, v)| format!("{k}={v}")));
            env.extend(proxies.iter().map(|(k, v)| format!("{k}={v}")));
            let spec = Spec {
                rootfs: root.rootfs.clone(),
                args: args.clone(),
                env: strata_runner::merge_env(&env, &[]),
                cwd: st
                    .field("WorkingDir")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("/")
                    .to_string(),
                user: st
                    .field("User")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                hostname: id[..12].to_string(),
                network: Network::Host,
                binds: Vec::new(),
                state_dir: dir.clone(),
                // docker's default profile, as `run` gets it.
                ..Spec::default()
            };
            let record = Container {
                id: id.clone(),
                name: format!("strata_build_{}", &id[..8]),
                image: parent.config.short(),
                image_id: parent.config.to_string(),
                image_manifest: Some(parent.manifest.to_string()),
                command: args.clone(),
                created: now_secs(),
                state: State::Running,
                pid: None,
                exit_code: None,
                finished: None,
            };
            let cleanup = |e: BuildError| {
                let _ = b.containers.remove(&id);
                let _ = std::fs::remove_dir_all(&dir);
                e
            };
            host.event(Event::RunningIn(&id[..12]));
            let log_path = dir.join("build.log");
            let stdio = if quiet {
                Stdio::Log(std::fs::File::create(&log_path).map_err(|e| cleanup(step_err(ins, e)))?)
            } else {
                Stdio::NoStdin
            };
            b.containers
                .save(&record)
                .map_err(|e| cleanup(step_err(ins, e)))?;
            let started = strata_runner::start_with(&spec, &exe, &init_arg, stdio)
                .map_err(|e| cleanup(step_err(ins, e)))?;
            let code = started.wait().map_err(|e| cleanup(step_err(ins, e)))?;
            drop(root);
            if code != 0 {
                if quiet && let Ok(text) = std::fs::read_to_string(&log_path) {
                    host.event(Event::Warning(text.trim_end().to_string()));
                }
                return Err(cleanup(BuildError::RunFailed {
                    line: ins.line,
                    text: ins.text.clone(),
                    command: args.join(" "),
                    code,
                }));
            }
            let img = b
                .commit_upper(st, ins, &dir, &parent, &created_by)
                .map_err(cleanup)?;
            let _ = b.containers.remove(&id);
            let _ = std::fs::remove_dir_all(&dir);
            host.event(Event::Removed(&id[..12]));
            img
        };
        self.advance(st, ins, k, img)
    }

    fn copy(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        args: &CopyArgs,
        add: bool,
        built: &[Built],
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        let word = if add { "ADD" } else { "COPY" };
        let mut srcs = Vec::new();
        for s in &args.srcs {
            srcs.push(self.expand_in(st, ins, s)?);
        }
        let dest_raw = self.expand_in(st, ins, &args.dest)?;
        let workdir = st
            .field("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            let joined = cfgedit::workdir(Some(&workdir), &dest_raw);
            if dest_raw.ends_with('/') || dest_raw == "." {
                format!("{}/", joined.trim_end_matches('/'))
            } else {
                joined
            }
        };
        let chown = args
            .chown
            .as_deref()
            .map(|c| self.expand_in(st, ins, c))
            .transpose()?;
        let chmod = match &args.chmod {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .map_err(|_| step_err(ins, format!("--chmod={m} is not an octal mode")))?,
            ),
            None => None,
        };
        // Where the sources come from: another stage, an image, or the context.
        let mut source_mount: Option<(PathBuf, RootMount)> = None;
        let sources = match &args.from {
            Some(f) => {
                let f = self.expand_in(st, ins, f)?;
                let img = match built.iter().enumerate().find(|(i, b)| {
                    b.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(&f))
                        || i.to_string() == f
                }) {
                    Some((_, b)) => b.image.clone(),
                    // Not an earlier stage (the current or a later one included): an image,
                    // as docker's classic builder takes it; its message names the flag.
                    None => host
                        .image(&f, &self.opts.platform)
                        .map_err(|e| step_err(ins, format!("invalid from flag value {f}: {e}")))?,
                };
                let dir = self.containers.dir_of(&random_id());
                let m = mount_root(self.ctx, &self.rt, &img, &dir).map_err(|e| step_err(ins, e))?;
                let s = match Sources::image_root(&m.rootfs) {
                    Ok(s) => s,
                    Err(e) => {
                        drop(m);
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(step_err(ins, e));
                    }
                };
                source_mount = Some((dir, m));
                s
            }
            None => Sources::context(&self.opts.context).map_err(|e| step_err(ins, e))?,
        };
        let drop_source = |m: Option<(PathBuf, RootMount)>| {
            if let Some((dir, mount)) = m {
                drop(mount);
                let _ = std::fs::remove_dir_all(dir);
            }
        };
        // Resolve and hash everything before touching anything.
        let mut resolved: Vec<(String, Vec<PathBuf>)> = Vec::new();
        let mut downloads: Vec<(String, PathBuf)> = Vec::new();
        let mut hashes = Vec::new();
        let fail = |m: &mut Option<(PathBuf, RootMount)>, e: BuildError| {
            drop_source(m.take());
            e
        };
        for s in &srcs {
            if add && (s.starts_with("http://") || s.starts_with("https://")) {
                let tmp = strata_fetcher::atomic::temp_path(
                    &self
                        .ctx
                        .root
                        .join("tmp")
                        .join(format!("add-{}", random_id())),
                );
                let digest = crate::fetch::download(&self.rt, s, &tmp)
                    .map_err(|e| fail(&mut source_mount, step_err(ins, e)))?;
                hashes.push(format!("url:{digest}"));
                downloads.push((s.clone(), tmp));
                continue;
            }
            let rels = sources.resolve(s).map_err(|e| {
                fail(
                    &mut source_mount,
                    step_err(ins, format!("{word} failed: {e}")),
                )
            })?;
            hashes.push(
                sources
                    .hash(&rels)
                    .map_err(|e| fail(&mut source_mount, step_err(ins, e)))?,
            );
            resolved.push((s.clone(), rels));
        }
        let count: usize = resolved.iter().map(|(_, r)| r.len()).sum::<usize>() + downloads.len();
        let dest_is_dir = dest.ends_with('/') || count > 1;
        let mut flags = String::new();
        if let Some(c) = &chown {
            flags.push_str(&format!("--chown={c} "));
        }
        if let Some(m) = &args.chmod {
            flags.push_str(&format!("--chmod={m} "));
        }
        if let Some(f) = &args.from {
            flags.push_str(&format!("--from={f} "));
        }
        let created_by = format!(
            "/bin/sh -c #(nop) {word} {flags}sha256:{} in {dest} ",
            hashes.join(",")
        );
        let b = &*self;
        let result = (|| {
            let Some(k) = b.try_cache(st, ins, &created_by, host)? else {
                return Ok(());
            };
            let id = random_id();
            let (dir, root, parent) = b.mount_step(st, ins, &id)?;
            let cleanup = |e: BuildError| {
                let _ = std::fs::remove_dir_all(&dir);
                e
            };
            let rootfs = root.rootfs.clone();
            let owner = match &chown {
                Some(c) => {
                    // docker's --chown: no group means the group named like the user
                    // (`--chown=1001` is 1001:1001).
                    let spec = match c.contains(':') {
                        true => c.clone(),
                        false => format!("{c}:{c}"),
                    };
                    let u = strata_runner::user::resolve(&rootfs, &spec)
                        .map_err(|e| cleanup(step_err(ins, e)))?;
                    (u.uid, u.gid)
                }
                None => (0, 0),
            };
            let attrs = Attrs { owner, chmod };
            let into = InRoot::open(&rootfs).map_err(|e| cleanup(step_err(ins, e)))?;
            let dest = Path::new(&dest);
            let dest_dir = dest_is_dir || into.resolve(dest).is_ok_and(|h| h.is_dir());
            let base = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
            let work = || -> Result<(), BuildError> {
                for (_, rels) in &resolved {
                    for rel in rels {
                        let host_path = sources.host_path(rel).map_err(|e| step_err(ins, e))?;
                        let is_dir = std::fs::metadata(&host_path).is_ok_and(|m| m.is_dir());
                        if add
                            && !is_dir
                            && let Some(reader) = unpack::archive_reader(&host_path)
                        {
                            copy::extract(&into, reader, dest).map_err(|e| step_err(ins, e))?;
                            continue;
                        }
                        let target = if is_dir || !dest_dir {
                            dest.to_path_buf()
                        } else {
                            copy::join(dest, &base(rel))
                        };
                        copy::copy_source(&into, &sources, rel, &target, attrs)
                            .map_err(|e| step_err(ins, e))?;
                    }
                }
                for (url, tmp) in &downloads {
                    let name = url
                        .rsplit('/')
                        .next()
                        .filter(|n| !n.is_empty())
                        .unwrap_or("download");
                    let target = if dest_dir {
                        copy::join(dest, Path::new(name))
                    } else {
                        dest.to_path_buf()
                    };
                    let mut f = std::fs::File::open(tmp).map_err(|e| step_err(ins, e))?;
                    copy::write_file(&into, &target, &mut f, chmod.unwrap_or(0o600), owner, None)
                        .map_err(|e| step_err(ins, e))?;
                }
                Ok(())
            };
            let worked = work();
            drop(root);
            worked.map_err(cleanup)?;
            let img = b
                .commit_upper(st, ins, &dir, &parent, &created_by)
                .map_err(cleanup)?;
            let _ = std::fs::remove_dir_all(&dir);
            b.advance(st, ins, k, img)
        })();
        for (_, tmp) in &downloads {
            let _ = std::fs::remove_file(tmp);
        }
        drop_source(source_mount);
        result
    }
}

/// A CMD or ENTRYPOINT as docker stores it: `[]` clears the value (`null`).
pub(crate) fn argv_value(v: &[String]) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}
