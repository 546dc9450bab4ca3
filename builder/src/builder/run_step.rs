//! RUN: the command in a container on the stage's image (mounted lazily, under a fresh
//! upper), confined like `strata run`'s default; its upper becomes the step's layer.

use std::collections::BTreeMap;

use strata_oci::timefmt::now_secs;
use strata_runner::state::{Container, State};
use strata_runner::{Network, Process, Spec, Stdio, container_spec};
use strata_storage::store::ImageRecord;

use super::{BuildError, Builder, Event, Host, PROXY_ARGS, StageState, random_id, step_err};
use crate::config::argv;
use crate::dockerfile::{CommandForm, Instruction};

/// What a RUN step runs: its argv, the environment it adds (build args, then proxy args) and
/// its history line.
struct RunStep {
    args: Vec<String>,
    env: Vec<String>,
    created_by: String,
}

impl Builder<'_> {
    pub(super) fn run(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        form: &CommandForm,
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        let step = self.run_step(st, form);
        let Some(k) = self.try_cache(st, ins, &step.created_by, host)? else {
            return Ok(());
        };
        let img = self.run_container(st, ins, &step, host)?;
        self.advance(st, ins, k, img)
    }

    /// The argv, environment and history line of a RUN: build arguments reach RUN as
    /// environment (ENV wins) and key its cache entry; the predefined proxy ARGs reach RUN
    /// without an ARG but, as docker keeps them, not its history line (only the `|N` prefix,
    /// N not counting them).
    fn run_step(&self, st: &StageState, form: &CommandForm) -> RunStep {
        let args = argv(form, &st.shell());
        let env_keys: Vec<String> = st.env().into_iter().map(|(k, _)| k).collect();
        let build_env: BTreeMap<String, String> = st
            .args
            .iter()
            .filter(|(k, _)| !env_keys.contains(k))
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
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
        let env = (build_env.iter().chain(&proxies))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        RunStep {
            args,
            env,
            created_by,
        }
    }

    /// Runs `step` in a container on the stage's image and commits its upper layer; the
    /// container and its directory are removed whatever happens.
    fn run_container(
        &self,
        st: &StageState,
        ins: &Instruction,
        step: &RunStep,
        host: &mut dyn Host,
    ) -> Result<ImageRecord, BuildError> {
        let b = self;
        let (quiet, exe, init_arg) = (self.opts.quiet, &self.opts.exe, &self.opts.init_arg);
        let (args, created_by) = (&step.args, &step.created_by);
        let id = random_id();
        let (dir, root, parent) = b.mount_step(st, ins, &id)?;
        let process = Process {
            args: args.clone(),
            env: step.env.clone(),
            ..Process::default()
        };
        let place = Spec {
            rootfs: root.rootfs.clone(),
            hostname: id[..12].to_string(),
            network: Network::Host,
            binds: Vec::new(),
            state_dir: dir.clone(),
            // docker's default profile, as `run` gets it.
            ..Spec::default()
        };
        let spec = container_spec(st.config.config.as_ref(), process, place);
        let record = step_record(&id, &parent, args);
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
        let started = strata_runner::start_with(&spec, exe, init_arg, stdio)
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
            .commit_upper(st, ins, &dir, &parent, created_by)
            .map_err(cleanup)?;
        let _ = b.containers.remove(&id);
        let _ = std::fs::remove_dir_all(&dir);
        host.event(Event::Removed(&id[..12]));
        Ok(img)
    }
}

/// The container record of a RUN step's container (`strata_build_<id>`), running on `parent`.
fn step_record(id: &str, parent: &ImageRecord, args: &[String]) -> Container {
    Container {
        id: id.to_string(),
        name: format!("strata_build_{}", &id[..8]),
        image: parent.config.short(),
        image_id: parent.config.to_string(),
        image_manifest: Some(parent.manifest.to_string()),
        command: args.to_vec(),
        created: now_secs(),
        state: State::Running,
        pid: None,
        exit_code: None,
        finished: None,
        started: None,
    }
}
