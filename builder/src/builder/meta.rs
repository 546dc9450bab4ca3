//! The metadata instructions of a stage (ENV, ARG, LABEL, WORKDIR, CMD, ...): each edits the
//! stage's typed config and is recorded as an empty layer with its history line.

use strata_oci::nullable::Nullable;

use super::{BuildError, Builder, Built, Host, StageState, step_err, workdir};
use crate::config::{self as cfgedit, argv, argv_value};
use crate::dockerfile::{Health, Instruction, Kind};
use crate::gofmt;
use crate::words::key_values;

impl Builder<'_> {
    pub(super) fn step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        globals: &[(String, Option<String>)],
        built: &[Built],
        host: &mut dyn Host,
    ) -> Result<(), BuildError> {
        // Metadata steps edit a copy of the config, committed by `metadata` (or replaced by
        // the cached image's, which is the same).
        let before = st.config.clone();
        let shown = match &ins.kind {
            Kind::From { .. } => return Err(step_err(ins, "FROM inside a stage")),
            Kind::Run(form) => return self.run(st, ins, form, host),
            Kind::Copy(args) => return self.copy(st, ins, args, false, built, host),
            Kind::Add(args) => return self.copy(st, ins, args, true, built, host),
            Kind::Env(raw) => self.env_step(st, ins, raw),
            Kind::Arg(raw) => self.arg_step(st, ins, raw, globals),
            Kind::Label(raw) => self.label_step(st, ins, raw),
            Kind::Workdir(raw) => self.workdir_step(st, ins, raw, host),
            _ => self.config_step(st, ins),
        };
        let result = match shown {
            Ok(Some(shown)) => self.metadata(st, ins, &shown, host),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if result.is_err() {
            st.config = before;
        }
        result
    }

    /// ENV: every `key=value` expanded, then set in the config.
    fn env_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        raw: &str,
    ) -> Result<Option<String>, BuildError> {
        let esc = self.df.escape;
        let mut shown = Vec::new();
        let mut sets = Vec::new();
        for (k, v) in key_values(raw, esc, true).map_err(|e| step_err(ins, e))? {
            let v = v.ok_or_else(|| step_err(ins, format!("ENV names {k} without a value")))?;
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
                c.set_env(k, v);
            }
        });
        Ok(Some(format!("ENV {}", shown.join(" "))))
    }

    /// ARG: a build argument of this stage, from `--build-arg`, its default or a global ARG.
    fn arg_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        raw: &str,
        globals: &[(String, Option<String>)],
    ) -> Result<Option<String>, BuildError> {
        let esc = self.df.escape;
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
        Ok(Some(format!("ARG {raw}")))
    }

    /// LABEL: every `key=value` expanded, then set in the config.
    fn label_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        raw: &str,
    ) -> Result<Option<String>, BuildError> {
        let esc = self.df.escape;
        let mut sets = Vec::new();
        for (k, v) in key_values(raw, esc, true).map_err(|e| step_err(ins, e))? {
            let v = v.ok_or_else(|| step_err(ins, format!("LABEL {k} needs a value")))?;
            sets.push((self.expand_in(st, ins, &k)?, self.expand_in(st, ins, &v)?));
        }
        self.edit(st, |c| {
            for (k, v) in &sets {
                c.set_label(k, v);
            }
        });
        let shown: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(Some(format!("LABEL {}", shown.join(" "))))
    }

    /// WORKDIR: relative to the current one; created in a layer of its own when the stage's
    /// user is not root (as BuildKit does), else recorded as metadata (`Some(shown)`).
    fn workdir_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        raw: &str,
        host: &mut dyn Host,
    ) -> Result<Option<String>, BuildError> {
        let w = self.expand_in(st, ins, raw)?;
        let w = cfgedit::workdir(st.container().workdir(), &w);
        self.edit(st, |c| {
            c.working_dir = Nullable::Set(w.clone());
        });
        let user = st.container().user_or_default().to_string();
        if !workdir::is_root(&user) {
            return self
                .workdir_as_user(st, ins, &w, &user, host)
                .map(|()| None);
        }
        Ok(Some(format!("WORKDIR {w}")))
    }

    /// The instructions that only set one config field.
    fn config_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
    ) -> Result<Option<String>, BuildError> {
        let shown = match &ins.kind {
            Kind::Maintainer(name) => {
                st.config.author = Some(name.clone());
                format!("MAINTAINER {name}")
            }
            Kind::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    ports.push(cfgedit::port(&self.expand_in(st, ins, w)?));
                }
                self.edit(st, |c| ports.iter().for_each(|p| c.expose(p)));
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
                self.edit(st, |c| vols.iter().for_each(|v| c.add_volume(v)));
                format!("VOLUME {}", gofmt::plain_list(&vols))
            }
            Kind::User(raw) => {
                let u = self.expand_in(st, ins, raw)?;
                self.edit(st, |c| {
                    c.user = Nullable::Set(u.clone());
                });
                format!("USER {u}")
            }
            _ => return self.command_step(st, ins),
        };
        Ok(Some(shown))
    }

    /// The instructions that set the stage's command, shell, triggers or health check.
    fn command_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
    ) -> Result<Option<String>, BuildError> {
        let shown = match &ins.kind {
            Kind::Cmd(form) => {
                let v = argv(form, &st.shell());
                self.edit(st, |c| {
                    c.cmd = argv_value(&v);
                });
                st.cmd_set = true;
                format!("CMD {}", gofmt::quoted_list(&v))
            }
            Kind::Entrypoint(form) => {
                let v = argv(form, &st.shell());
                let reset_cmd = !st.cmd_set;
                self.edit(st, |c| {
                    c.entrypoint = argv_value(&v);
                    if reset_cmd {
                        c.cmd = Nullable::Null;
                    }
                });
                format!("ENTRYPOINT {}", gofmt::quoted_list(&v))
            }
            Kind::Onbuild(trigger) => {
                let t = trigger.clone();
                self.edit(st, |c| {
                    c.on_build.get_or_default().push(t);
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
                    c.shell = Nullable::Set(v);
                });
                format!("SHELL {}", gofmt::plain_list(&st.shell()))
            }
            Kind::Stopsignal(raw) => {
                let s = self.expand_in(st, ins, raw)?;
                self.edit(st, |c| {
                    c.stop_signal = Nullable::Set(s.clone());
                });
                format!("STOPSIGNAL {s}")
            }
            Kind::Healthcheck(h) => {
                let value = match h {
                    Health::None => cfgedit::healthcheck(&[], None),
                    Health::Check { flags, cmd } => cfgedit::healthcheck(flags, Some(cmd)),
                }
                .map_err(|e| step_err(ins, e))?;
                // As docker's classic builder writes it: Go's %+v of its HealthConfig.
                let shown = format!("HEALTHCHECK {}", gofmt::healthcheck(&value));
                self.edit(st, |c| {
                    c.healthcheck = Nullable::Set(value);
                });
                shown
            }
            _ => unreachable!("handled by step"),
        };
        Ok(Some(shown))
    }
}
