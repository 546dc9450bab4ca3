//! What metadata instructions do to an image config (the `config` object docker keeps:
//! `Env`, `Cmd`, `Entrypoint`, `WorkingDir`, `User`, `Labels`, `ExposedPorts`, `Volumes`,
//! `StopSignal`, `Healthcheck`, `OnBuild`, `Shell`).

use strata_oci::config::Healthcheck;
use strata_oci::nullable::Nullable;

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
    // Nanoseconds in an i64, as Go's time.Duration: longer durations are refused.
    if !(0.0..9.2e18).contains(&total) {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)] // in range (checked above); fractions of a ns drop
    Some(total as i64)
}

/// The `Healthcheck` object of `HEALTHCHECK [flags] CMD ...` (or `NONE` when `cmd` is None).
pub fn healthcheck(
    flags: &[(String, String)],
    cmd: Option<&CommandForm>,
) -> Result<Healthcheck, String> {
    let Some(cmd) = cmd else {
        return Ok(Healthcheck {
            test: vec!["NONE".into()],
            ..Healthcheck::default()
        });
    };
    let test = match cmd {
        CommandForm::Exec(v) => {
            let mut t = vec!["CMD".to_string()];
            t.extend(v.iter().cloned());
            t
        }
        CommandForm::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
    };
    let mut h = Healthcheck {
        test,
        ..Healthcheck::default()
    };
    for (name, value) in flags {
        let field = match name.as_str() {
            "interval" => &mut h.interval,
            "timeout" => &mut h.timeout,
            "start-period" => &mut h.start_period,
            "start-interval" => &mut h.start_interval,
            "retries" => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("HEALTHCHECK --retries={value}: not a number"))?;
                h.retries = Some(n);
                continue;
            }
            other => return Err(format!("HEALTHCHECK --{other} is not a known flag")),
        };
        let ns = duration_ns(value)
            .ok_or_else(|| format!("HEALTHCHECK --{name}={value}: not a duration"))?;
        *field = Some(ns);
    }
    Ok(h)
}

/// A CMD or ENTRYPOINT as docker stores it: `[]` clears the value (`null`).
pub fn argv_value(v: &[String]) -> Nullable<Vec<String>> {
    if v.is_empty() {
        Nullable::Null
    } else {
        Nullable::Set(v.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use strata_oci::config::ContainerConfig;

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
            serde_json::to_value(&h).unwrap(),
            json!({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000i64, "Retries": 3})
        );
        assert_eq!(
            serde_json::to_value(healthcheck(&[], None).unwrap()).unwrap(),
            json!({"Test": ["NONE"]})
        );
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
        let mut cfg = ContainerConfig::default();
        cfg.set_env("A", "1");
        cfg.set_env("B", "2");
        cfg.set_env("A", "3");
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(v["Env"], json!(["A=3", "B=2"]));
        cfg.expose(&port("80"));
        cfg.expose(&port("53/UDP"));
        let v = serde_json::to_value(&cfg).unwrap();
        assert_eq!(v["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(
            argv(&CommandForm::Shell("echo".into()), &default_shell()),
            ["/bin/sh", "-c", "echo"]
        );
    }
}
