//! Pausing a running container for a consistent snapshot (what `commit` of a running
//! container does, like docker's default pause): every process in the container's pid
//! namespace gets SIGSTOP, and SIGCONT when the [`Frozen`] guard is dropped.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Stopped processes, continued on drop.
#[derive(Debug)]
pub struct Frozen {
    pids: Vec<Pid>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in &self.pids {
            let _ = kill(*p, Signal::SIGCONT);
        }
    }
}

fn ppid_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((ppid, state))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Stops every process of the container whose supervising helper is `helper`.
pub fn freeze(helper: u32) -> std::io::Result<Frozen> {
    let helper = i32::try_from(helper)
        .map_err(|_| std::io::Error::other(format!("helper pid {helper} out of range")))?;
    let init = all_pids()
        .into_iter()
        .find(|p| ppid_and_state(*p).is_some_and(|(pp, _)| pp == helper))
        .ok_or_else(|| {
            std::io::Error::other(format!("no container process under helper {helper}"))
        })?;
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid"))?;
    let members: Vec<Pid> = all_pids()
        .into_iter()
        .filter(|p| {
            *p != helper && std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ns)
        })
        .map(Pid::from_raw)
        .collect();
    for p in &members {
        let _ = kill(*p, Signal::SIGSTOP);
    }
    // Wait (briefly) until they are all stopped, so no write is half done.
    for _ in 0..200 {
        if members.iter().all(|p| {
            ppid_and_state(p.as_raw()).is_none_or(|(_, s)| s == 'T' || s == 't' || s == 'Z')
        }) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(Frozen { pids: members })
}
