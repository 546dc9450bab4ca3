//! One cold (or warm) start of each scenario of the table, timed through the shaped link.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::shaper::Shaper;
use crate::{SCENARIOS, drop_caches, nydus, peers, sh, stop_store, strata};

/// One timed run.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) secs: f64,
    pub(crate) bytes: u64,
    pub(crate) requests: u64,
}

pub(crate) fn time_it(shaper: &Shaper, f: impl FnOnce()) -> Sample {
    shaper.reset();
    let t = Instant::now();
    f();
    let secs = t.elapsed().as_secs_f64();
    let (bytes, requests) = shaper.counts();
    Sample {
        secs,
        bytes,
        requests,
    }
}

/// The scenarios of this run: strata's and the full pull, then each peer that is ready.
pub(crate) fn scenarios(ready: &[peers::Peer], nydus: bool) -> Vec<&'static str> {
    let mut v = SCENARIOS.to_vec();
    v.extend(ready.iter().map(|p| p.scenario()));
    if nydus {
        v.extend([nydus::STRATA_MOUNT, nydus::NYDUS]);
    }
    v
}

/// What one workload runs and on which images.
pub(crate) struct Workload<'a> {
    pub(crate) code: &'a str,
    /// The peers found and those whose images are ready.
    pub(crate) peers: &'a peers::Peers,
    pub(crate) ready: &'a [peers::Peer],
    /// The Nydus image, when its tools were found and it was made.
    pub(crate) nydus: Option<&'a nydus::Nydus>,
    /// The native image with this workload's prefetch profile.
    pub(crate) profiled_tag: &'a str,
    /// The native image in a repository where a `run --learn` published a learned profile.
    pub(crate) learned_tag: &'a str,
    /// A root filled by one earlier cold run (for "warm").
    pub(crate) warm_root: &'a Path,
}

pub(crate) fn run_scenario(s: &str, shaper: &Shaper, work: &Path, w: &Workload) -> Sample {
    let (code, warm_root) = (w.code, w.warm_root);
    let link = &shaper.addr;
    match s {
        "full pull (skopeo+umoci)" => full_pull(shaper, work, code),
        "strata cold native"
        | "strata cold gzip"
        | "strata gzip+SOCI index"
        | "strata cold profiled"
        | "strata cold learned" => strata_cold(s, shaper, work, w),
        "strata warm" => {
            // The warm root was filled by a cold run of the same workload; kernel caches dropped
            // and no process of it left running.
            stop_store(warm_root);
            drop_caches();
            time_it(shaper, || {
                sh(strata(warm_root)
                    .args(["run", "--rm"])
                    .arg(format!("{link}/bench/py:native"))
                    .args(["python3", "-c", code])
                    .stdout(Stdio::null()));
            })
        }
        nydus::STRATA_MOUNT => strata_mount(shaper, work, code),
        nydus::NYDUS => {
            let n = w.nydus.expect("nydus image");
            let dir = Path::new("/run/sny");
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).expect("nydus dir");
            drop_caches();
            let mut daemon = None;
            let r = time_it(shaper, || daemon = Some(n.cold_start(dir, link, code)));
            drop(daemon);
            let _ = std::fs::remove_dir_all(dir);
            r
        }
        other => {
            let peer = *w
                .ready
                .iter()
                .find(|p| p.scenario() == other)
                .unwrap_or_else(|| panic!("unknown scenario {other}"));
            let node = peers::fresh_node(w.peers, link, peer);
            let image = format!("{link}/bench/py:{}", peer.tag());
            time_it(shaper, || node.cold_start(peer, &image, code))
        }
    }
}

/// skopeo copy + umoci unpack + chroot: what a full pull costs.
fn full_pull(shaper: &Shaper, work: &Path, code: &str) -> Sample {
    let link = &shaper.addr;
    let dir = work.join("full");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    drop_caches();
    let r = time_it(shaper, || {
        sh(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{link}/bench/py:gzip"))
            .arg(format!("oci:{}:py", dir.join("oci").display())));
        sh(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:py", dir.join("oci").display()))
            .arg(dir.join("bundle"))
            .stdout(Stdio::null()));
        sh(Command::new("chroot")
            .arg(dir.join("bundle/rootfs"))
            .args(["python3", "-c", code])
            .stdout(Stdio::null()));
    });
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// `strata run --rm` of scenario `s`'s image on a fresh root.
fn strata_cold(s: &str, shaper: &Shaper, work: &Path, w: &Workload) -> Sample {
    let link = &shaper.addr;
    let image = match s {
        "strata cold native" => "bench/py:native",
        "strata cold gzip" => "bench/py:gzip",
        "strata gzip+SOCI index" => "bench/py:gzip-soci",
        "strata cold learned" => w.learned_tag,
        _ => w.profiled_tag,
    };
    let root = work.join("cold-root");
    stop_store(&root);
    let _ = std::fs::remove_dir_all(&root);
    drop_caches();
    let r = time_it(shaper, || {
        sh(strata(&root)
            .args(["run", "--rm"])
            .arg(format!("{link}/{image}"))
            .args(["python3", "-c", w.code])
            .stdout(Stdio::null()));
    });
    stop_store(&root);
    let _ = std::fs::remove_dir_all(&root);
    r
}

/// `strata mount --detach` of the native image on a fresh root, the workload by chroot.
fn strata_mount(shaper: &Shaper, work: &Path, code: &str) -> Sample {
    let link = &shaper.addr;
    let root = work.join("cold-root");
    let mnt = work.join("mnt");
    stop_store(&root);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&mnt).expect("mnt");
    drop_caches();
    let r = time_it(shaper, || {
        sh(strata(&root)
            .args(["mount", "--detach"])
            .arg(format!("{link}/bench/py:native"))
            .arg(&mnt));
        sh(Command::new("chroot")
            .arg(&mnt)
            .args(["python3", "-c", code])
            .stdout(Stdio::null()));
    });
    sh(strata(&root).arg("umount").arg(&mnt));
    stop_store(&root);
    let _ = std::fs::remove_dir_all(&root);
    r
}
