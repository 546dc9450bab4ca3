//! `commit -c` / `import -c`: Dockerfile instructions applied to an image config, read by the
//! same parser as `build` (so `ENV A=1 B=2`, `LABEL k v`, quotes and `ONBUILD` mean what they
//! mean in a Dockerfile). Only the instructions docker's commit accepts are allowed.

use strata_oci::config::ContainerConfig;
use strata_oci::nullable::Nullable;

use crate::config::{self as cfgedit, argv, argv_value, default_shell};
use crate::dockerfile::{Dockerfile, Health, Kind};
use crate::words::{expand, key_values};

/// Errors applying a change.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The text is not a Dockerfile instruction.
    #[error("invalid change {change:?}")]
    Parse {
        /// The change as given.
        change: String,
        /// The parser's error.
        #[source]
        source: crate::dockerfile::DockerfileError,
    },
    /// An instruction commit does not take (RUN, COPY, FROM, ...).
    #[error("{keyword} is not a valid change command")]
    NotAllowed {
        /// The instruction's keyword.
        keyword: String,
    },
    /// An argument that does not make sense.
    #[error("invalid change {change:?}: {reason}")]
    Bad {
        /// The change as given.
        change: String,
        /// Why.
        reason: String,
    },
}

/// Applies `changes` in order to `cfg` (the config's `config` object). Variables expand from
/// the config's `Env` as it is at each change, as docker's commit does.
pub fn apply_changes(cfg: &mut ContainerConfig, changes: &[String]) -> Result<(), ChangeError> {
    for c in changes {
        apply_change(cfg, c)?;
    }
    Ok(())
}

fn apply_change(cfg: &mut ContainerConfig, change: &str) -> Result<(), ChangeError> {
    let ins =
        Dockerfile::parse_trigger(change.trim(), '\\').map_err(|source| ChangeError::Parse {
            change: change.to_string(),
            source,
        })?;
    let bad = |reason: String| ChangeError::Bad {
        change: change.to_string(),
        reason,
    };
    let env = cfg.env_pairs();
    let lookup = |n: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let ex = |w: &str| expand(w, &lookup, '\\').map_err(|e| bad(e.to_string()));
    let shell: Vec<String> = cfg.shell.get().cloned().unwrap_or_else(default_shell);
    match &ins.kind {
        Kind::Env(raw) | Kind::Label(raw) => {
            set_pairs(cfg, raw, matches!(ins.kind, Kind::Env(_)), &ex, &bad)?;
        }
        Kind::Cmd(form) => {
            cfg.cmd = argv_value(&argv(form, &shell));
        }
        Kind::Entrypoint(form) => {
            cfg.entrypoint = argv_value(&argv(form, &shell));
        }
        Kind::Expose(words) => {
            for w in words {
                cfg.expose(&cfgedit::port(&ex(w)?));
            }
        }
        Kind::Volume(words) => {
            for w in words {
                let v = ex(w)?;
                if v.is_empty() {
                    return Err(bad("VOLUME specified can not be an empty string".into()));
                }
                cfg.add_volume(&v);
            }
        }
        Kind::User(raw) => {
            cfg.user = Nullable::Set(ex(raw)?);
        }
        Kind::Workdir(raw) => {
            let w = cfgedit::workdir(cfg.workdir(), &ex(raw)?);
            cfg.working_dir = Nullable::Set(w);
        }
        Kind::Stopsignal(raw) => {
            cfg.stop_signal = Nullable::Set(ex(raw)?);
        }
        Kind::Onbuild(trigger) => {
            cfg.on_build.get_or_default().push(trigger.clone());
        }
        Kind::Healthcheck(h) => {
            let value = match h {
                Health::None => cfgedit::healthcheck(&[], None),
                Health::Check { flags, cmd } => cfgedit::healthcheck(flags, Some(cmd)),
            }
            .map_err(bad)?;
            cfg.healthcheck = Nullable::Set(value);
        }
        _ => {
            let keyword = change
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            return Err(ChangeError::NotAllowed { keyword });
        }
    }
    Ok(())
}

/// ENV or LABEL pairs of a change, expanded and set.
fn set_pairs(
    cfg: &mut ContainerConfig,
    raw: &str,
    is_env: bool,
    ex: &dyn Fn(&str) -> Result<String, ChangeError>,
    bad: &dyn Fn(String) -> ChangeError,
) -> Result<(), ChangeError> {
    for (k, v) in key_values(raw, '\\', true).map_err(|e| bad(e.to_string()))? {
        let v = v.ok_or_else(|| bad(format!("{k} has no value")))?;
        let (k, v) = (ex(&k)?, ex(&v)?);
        if is_env {
            if k.is_empty() || k.contains('=') {
                return Err(bad(format!("ENV key {k:?} is not a name")));
            }
            cfg.set_env(&k, &v);
        } else {
            cfg.set_label(&k, &v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn applied(changes: &[&str]) -> serde_json::Value {
        let mut cfg = ContainerConfig {
            env: Nullable::Set(vec!["PATH=/bin".into(), "HOME=/root".into()]),
            ..ContainerConfig::default()
        };
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut cfg, &changes).unwrap();
        serde_json::to_value(&cfg).unwrap()
    }

    #[test]
    fn changes_read_like_a_dockerfile() {
        let c = applied(&["ENV A=1 B=2", "ENV C \"x y\"", "ENV D=$A-${HOME}"]);
        assert_eq!(
            c["Env"],
            json!([
                "PATH=/bin",
                "HOME=/root",
                "A=1",
                "B=2",
                "C=x y",
                "D=1-/root"
            ])
        );
        let c = applied(&["LABEL k v", "LABEL \"a b\"=\"c d\" e=f"]);
        assert_eq!(c["Labels"], json!({"k": "v", "a b": "c d", "e": "f"}));
        let c = applied(&["CMD echo hi", "ENTRYPOINT [\"/bin/sh\", \"-c\"]"]);
        assert_eq!(c["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c"]));
        let c = applied(&[
            "ONBUILD RUN echo x",
            "EXPOSE 80 53/udp",
            "WORKDIR /a",
            "WORKDIR b",
        ]);
        assert_eq!(c["OnBuild"], json!(["RUN echo x"]));
        assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(c["WorkingDir"], "/a/b");
        let mut cfg = ContainerConfig::default();
        let e = apply_changes(&mut cfg, &["RUN rm -rf /".into()]).unwrap_err();
        assert_eq!(e.to_string(), "run is not a valid change command");
        assert!(apply_changes(&mut cfg, &["ENV".into()]).is_err());
    }
}
