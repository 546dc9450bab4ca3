//! What `run` refuses before it starts anything, as docker does.

use std::io::IsTerminal as _;

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
            anyhow::bail!("linux spec user: uids and gids must be in range 0-{MAX_ID}");
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
