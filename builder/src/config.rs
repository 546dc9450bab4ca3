//! What metadata instructions do to an image config (the `config` object docker keeps:
//! `Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, `Labels`, `ExposedPorts`, `Volumes`,
//! `StopSignal`, `Healthcheck`, `OnBuild`, `Shell`).

use serde_json::{Map, Value, json};

use crate::dockerfile::CommandForm;

/// The shell RUN, CMD and ENTRYPOINT use in shell form unless SHELL says otherwise.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into()]
}

/// The argument vector of a command form.
pub fn argv(form: &CommandForm, shell: &[String]) -> Vec<String> {
    match form {
        CommandForm::Exec(v) => v.clone(),
        CommandForm::Shell(s) => {
            let mut v = shell.to_vec();
            v.push(s.clone());
            v
        }
    }
}

/// `Env` as `(key, value)` pairs.
pub fn env_pairs(cfg: &Map<String, Value>) -> Vec<(String, String)> {
    cfg.get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (e.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Sets (or replaces) `key` in `Env`.
pub fn set_env(cfg: &mut Map<String, Value>, key: &str, value: &str) {
    let mut env = env_pairs(cfg);
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
    let list: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    cfg.insert("Env".into(), json!(list));
}

fn object<'a>(cfg: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = cfg.entry(key.to_string()).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("just made an object")
}

/// Adds `key` → `{}` to a set-like object (`ExposedPorts`, `Volumes`).
pub fn add_to_set(cfg: &mut Map<String, Value>, set: &str, key: &str) {
    object(cfg, set).insert(key.to_string(), json!({}));
}

/// Sets a label.
pub fn set_label(cfg: &mut Map<String, Value>, key: &str, value: &str) {
    object(cfg, "Labels").insert(key.to_string(), json!(value));
}

/// `80` → `80/tcp`; `53/udp` kept.
pub fn port(p: &str) -> String {
    if p.contains('/') {
        p.to_ascii_lowercase()
    } else {
        format!("{p}/tcp")
    }
}

/// WORKDIR: an absolute path, or relative to the current one; cleaned.
pub fn workdir(current: Option<&str>, path: &str) -> String {
    let base = if path.starts_with('/') {
        String::new()
    } else {
        current.unwrap_or("/").to_string()
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in base.split('/').chain(path.split('/')) {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A Go duration (`30s`, `1m30s`, `500ms`, `1h`) in nanoseconds.
pub fn duration_ns(s: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(0);
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(total as i64)
}

/// The `Healthcheck` object of `HEALTHCHECK [flags] CMD ...` (or `NONE` when `cmd` is None).
pub fn healthcheck(flags: &[(String, String)], cmd: Option<&CommandForm>) -> Result<Value, String> {
    let Some(cmd) = cmd else {
        return Ok(json!({"Test": ["NONE"]}));
    };
    let test = match cmd {
        CommandForm::Exec(v) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(v.iter().cloned());
            t
        }
        CommandForm::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
    };
    let mut h = json!({"Test": test});
    for (name, value) in flags {
        let key = match name.as_str() {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("HEALTHCHECK --retries={value}: not a number"))?;
                h["Retries"] = json!(n);
                continue;
            }
            other => return Err(format!("HEALTHCHECK --{other} is not a known flag")),
        };
        let ns = duration_ns(value)
            .ok_or_else(|| format!("HEALTHCHECK --{name}={value}: not a duration"))?;
        h[key] = json!(ns);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_table() {
        for (cur, p, want) in [
            (None, "/a", "/a"),
            (Some("/a"), "b", "/a/b"),
            (Some("/a/b"), "../c/./d/", "/a/c/d"),
            (Some("/x"), "/y/..", "/"),
            (None, "rel", "/rel"),
        ] {
            assert_eq!(workdir(cur, p), want, "{cur:?} {p}");
        }
    }

    #[test]
    fn durations_and_healthcheck() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("1.5h"), Some(5_400_000_000_000));
        assert_eq!(duration_ns("5 s"), None);
        let h = healthcheck(
            &[
                ("interval".into(), "5s".into()),
                ("retries".into(), "3".into()),
            ],
            Some(&CommandForm::Shell("curl -f localhost".into())),
        )
        .unwrap();
        assert_eq!(
            h,
            json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000i64, "Retries": 3})
        );
        assert_eq!(healthcheck(&[], None).unwrap(), json!({"Test": ["NONE"]}));
        assert!(
            healthcheck(
                &[("bogus".into(), "1".into())],
                Some(&CommandForm::Exec(vec![]))
            )
            .is_err()
        );
    }

    #[test]
    fn env_and_sets() {
        let mut cfg = Map::new();
        set_env(&mut cfg, "A", "1");
        set_env(&mut cfg, "B", "2");
        set_env(&mut cfg, "A", "3");
        assert_eq!(cfg["Env"], json!(["A=3", "B=2"]));
        add_to_set(&mut cfg, "ExposedPorts", &port("80"));
        add_to_set(&mut cfg, "ExposedPorts", &port("53/UDP"));
        assert_eq!(cfg["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(
            argv(&CommandForm::Shell("echo".into()), &default_shell()),
            ["/bin/sh", "-c", "echo"]
        );
    }
}
