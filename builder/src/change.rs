//! `commit -c` / `import -c`: Dockerfile instructions applied to an image config, read by the
//! same parser as `build` (so `ENV A=1 B=2`, `LABEL k v`, quotes and `ONBUILD` mean what they
//! mean in a Dockerfile). Only the instructions docker's commit accepts are allowed.

use serde_json::{Map, Value, json};

use crate::config::{self as cfgedit, argv, default_shell, env_pairs};
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
pub fn apply_changes(cfg: &mut Map<String, Value>, changes: &[String]) -> Result<(), ChangeError> {
    for c in changes {
        apply_change(cfg, c)?;
    }
    Ok(())
}

fn apply_change(cfg: &mut Map<String, Value>, change: &str) -> Result<(), ChangeError> {
    let ins =
        Dockerfile::parse_trigger(change.trim(), '\\').map_err(|source| ChangeError::Parse {
            change: change.to_string(),
            source,
        })?;
    let bad = |reason: String| ChangeError::Bad {
        change: change.to_string(),
        reason,
    };
    let env = env_pairs(cfg);
    let lookup = |n: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    let ex = |w: &str| expand(w, &lookup, '\\').map_err(|e| bad(e.to_string()));
    let shell: Vec<String> = cfg
        .get("Shell")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_else(default_shell);
    match &ins.kind {
        Kind::Env(raw) | Kind::Label(raw) => {
            let is_env = matches!(ins.kind, Kind::Env(_));
            for (k, v) in key_values(raw, '\\', true).map_err(|e| bad(e.to_string()))? {
                let v = v.ok_or_else(|| bad(format!("{k} has no value")))?;
                let (k, v) = (ex(&k)?, ex(&v)?);
                if is_env {
                    if k.is_empty() || k.contains('=') {
                        return Err(bad(format!("ENV key {k:?} is not a name")));
                    }
                    cfgedit::set_env(cfg, &k, &v);
                } else {
                    cfgedit::set_label(cfg, &k, &v);
                }
            }
        }
        Kind::Cmd(form) => {
            cfg.insert(
                "Cmd".into(),
                crate::builder::argv_value(&argv(form, &shell)),
            );
        }
        Kind::Entrypoint(form) => {
            cfg.insert(
                "Entrypoint".into(),
                crate::builder::argv_value(&argv(form, &shell)),
            );
        }
        Kind::Expose(words) => {
            for w in words {
                cfgedit::add_to_set(cfg, "ExposedPorts", &cfgedit::port(&ex(w)?));
            }
        }
        Kind::Volume(words) => {
            for w in words {
                let v = ex(w)?;
                if v.is_empty() {
                    return Err(bad("VOLUME specified can not be an empty string".into()));
                }
                cfgedit::add_to_set(cfg, "Volumes", &v);
            }
        }
        Kind::User(raw) => {
            cfg.insert("User".into(), json!(ex(raw)?));
        }
        Kind::Workdir(raw) => {
            let current = cfg
                .get("WorkingDir")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let w = cfgedit::workdir(current.as_deref(), &ex(raw)?);
            cfg.insert("WorkingDir".into(), json!(w));
        }
        Kind::Stopsignal(raw) => {
            cfg.insert("StopSignal".into(), json!(ex(raw)?));
        }
        Kind::Onbuild(trigger) => {
            let list = cfg.entry("OnBuild").or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            list.as_array_mut().expect("an array").push(json!(trigger));
        }
        Kind::Healthcheck(h) => {
            let value = match h {
                Health::None => cfgedit::healthcheck(&[], None),
                Health::Check { flags, cmd } => cfgedit::healthcheck(flags, Some(cmd)),
            }
            .map_err(bad)?;
            cfg.insert("Healthcheck".into(), value);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> Map<String, Value> {
        let mut cfg = Map::new();
        cfg.insert("Env".into(), json!(["PATH=/bin", "HOME=/root"]));
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut cfg, &changes).unwrap();
        cfg
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
        let mut cfg = Map::new();
        let e = apply_changes(&mut cfg, &["RUN rm -rf /".into()]).unwrap_err();
        assert_eq!(e.to_string(), "run is not a valid change command");
        assert!(apply_changes(&mut cfg, &["ENV".into()]).is_err());
    }
}
