//! What `run` refuses before it starts anything, as docker does, and what it records beside
//! the container for `ps` and `inspect`.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use strata_image::Images;
use strata_runner::state::Containers;
use strata_storage::store::ImageRecord;

use crate::cmd::ps_filter::Extra;

/// What docker's daemon refuses of `run`'s options (exit 125, "Error response from daemon"):
/// a name in use or not of docker's characters, a relative working directory.
pub fn check_daemon_side(
    name: Option<&str>,
    workdir: Option<&str>,
    cs: &Containers,
) -> anyhow::Result<()> {
    if let Some(n) = name {
        let valid = n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(crate::cmd::daemon(format!(
                "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if let Some(c) = cs.find(n).filter(|c| c.name == n) {
            return Err(crate::cmd::daemon(format!(
                "Conflict. The container name \"/{n}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                c.id
            )));
        }
    }
    if let Some(w) = workdir
        && !w.starts_with('/')
    {
        return Err(crate::cmd::daemon(format!(
            "the working directory '{w}' is invalid, it needs to be an absolute path"
        )));
    }
    Ok(())
}

/// What `ps` and `inspect` show beyond the container record: labels (the image's, then
/// `-l KEY=VALUE` over them), platform, network, the image's size.
pub fn extra(
    ctx: &Images,
    img: &ImageRecord,
    config: &strata_oci::config::ImageConfig,
    labels: &[String],
    network: &str,
) -> Extra {
    let mut all: BTreeMap<String, String> = config
        .config
        .as_ref()
        .and_then(|c| c.labels.get().cloned())
        .unwrap_or_default();
    let own: BTreeMap<String, String> = labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect();
    all.extend(own.clone());
    let image_size = img
        .layers
        .iter()
        .filter_map(|l| ctx.store().layer(l).ok().flatten())
        .map(|l| l.content_bytes.max(l.size))
        .sum();
    Extra {
        labels: all,
        own_labels: own,
        created_nanos: 0,
        network: network.to_string(),
        os: config.os.clone().unwrap_or_default(),
        arch: config.architecture.clone().unwrap_or_default(),
        image_size,
        ..Default::default()
    }
}

/// The largest uid or gid docker accepts (`1<<31 - 1`, for 32-bit compatibility).
const MAX_ID: i64 = (1 << 31) - 1;

/// A numeric user or group of `-u` outside 0-2147483647 is refused with docker's message.
pub fn check_user(user: &str) -> anyhow::Result<()> {
    for part in user.splitn(2, ':') {
        let numeric = part.strip_prefix('-').unwrap_or(part);
        if numeric.is_empty() || !numeric.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let in_range = part.parse::<i64>().is_ok_and(|n| (0..=MAX_ID).contains(&n));
        if !in_range {
            return Err(crate::cmd::daemon(format!(
                "uids and gids must be in range 0-{MAX_ID}"
            )));
        }
    }
    Ok(())
}

/// docker/cli's `CheckTty`: `-it` needs a terminal on standard input.
pub fn tty_missing(interactive: bool, tty: bool) -> bool {
    interactive && tty && !std::io::stdin().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_in_docker_range() {
        for ok in [
            "0",
            "1000:1000",
            "2147483647",
            "nobody",
            "app:staff",
            "1000:wheel",
        ] {
            assert!(check_user(ok).is_ok(), "{ok}");
        }
        for bad in ["2147483648", "-1", "0:2147483648", "99999999999999999999"] {
            let e = check_user(bad).unwrap_err().to_string();
            assert!(
                e.contains("uids and gids must be in range 0-2147483647"),
                "{bad}"
            );
        }
    }
}
