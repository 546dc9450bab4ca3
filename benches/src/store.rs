//! The layer store's figures (issue 14): memory per additional container of a running image,
//! 50 containers of one image started at once, and the cost of stacking many layer
//! directories (a 40-layer image) against the per-container merged mount.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::prepare::Image;
use crate::shaper::Shaper;
use crate::{drop_caches, sh, strata};

/// What the long-running containers do: import, say so, wait.
const RESIDENT: &str =
    "import json, sqlite3, email, time; print('ready', flush=True); time.sleep(3600)";

/// All the layer store figures, on the store and (for comparison) with it off.
pub fn figures(work: &Path, img: &Image, shaper: &Shaper) -> Value {
    let native = format!("{}/bench/py:native", shaper.addr);
    let slope_store = slope(work, &native, true);
    let slope_old = slope(work, &native, false);
    let fifty = fifty_at_once(work, &native, shaper);
    let deep = deep_image(work, img);
    json!({
        "per_container_MiB": {"store": slope_store, "per_container_mount": slope_old,
            "target_MiB": 2.0},
        "fifty_at_once": fifty,
        "deep_image_40_layers": deep,
    })
}

/// PSS of every process whose command line names `root`, plus the page cache, in KiB.
fn footprint_kib(root: &Path) -> (u64, u64) {
    let want = root.to_string_lossy().into_owned();
    let mut pss = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmd).contains(&want) {
            continue;
        }
        pss += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
    }
    (pss, kib_field("/proc/meminfo", "Cached:"))
}

fn kib_field(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `n` detached resident containers of `image` and waits until each has imported.
fn start_resident(root: &Path, image: &str, n: usize, store: bool) -> Vec<String> {
    let ids: Vec<String> = (0..n)
        .map(|_| {
            let mut c = strata(root);
            if !store {
                c.env("STRATA_LAYER_STORE", "0");
            }
            sh(c.args(["run", "-d", image, "python3", "-c", RESIDENT]))
                .trim()
                .to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    for id in &ids {
        while !sh(strata(root).args(["logs", id])).contains("ready") {
            assert!(Instant::now() < deadline, "container {id} never got ready");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    ids
}

/// Memory (strata's PSS + page cache) per container, as the slope between 2 and 12 resident
/// containers of one image, in MiB.
fn slope(work: &Path, image: &str, store: bool) -> Value {
    let root = work.join("store-root");
    let _ = std::fs::remove_dir_all(&root);
    sh(strata(&root).args(["pull", image]));
    drop_caches();
    let mut ids = start_resident(&root, image, 2, store);
    std::thread::sleep(Duration::from_secs(2));
    let (pss2, cache2) = footprint_kib(&root);
    ids.extend(start_resident(&root, image, 10, store));
    std::thread::sleep(Duration::from_secs(2));
    let (pss12, cache12) = footprint_kib(&root);
    for id in &ids {
        sh(strata(&root).args(["rm", "-f", id]).stdout(Stdio::null()));
    }
    let _ = std::fs::remove_dir_all(&root);
    // Signed: the page cache may shrink meanwhile (other work on the machine evicts pages).
    let per = |a: u64, b: u64| (b as f64 - a as f64) / 10.0 / 1024.0;
    json!({
        "strata_pss_MiB": per(pss2, pss12),
        "page_cache_MiB": per(cache2, cache12),
        "total_MiB": per(pss2 + cache2, pss12 + cache12),
    })
}

/// 50 `run --rm` of one image at once on a fresh state root: how many ran, how long until
/// all ended, and what crossed the link (against one cold run alone).
fn fifty_at_once(work: &Path, image: &str, shaper: &Shaper) -> Value {
    let root = work.join("store-root");
    let cold = |root: &Path| {
        let _ = std::fs::remove_dir_all(root);
        sh(strata(root).args(["pull", image]));
        drop_caches();
        shaper.reset();
    };
    cold(&root);
    sh(strata(&root).args(["run", "--rm", image, "python3", "-c", "import json"]));
    let (one_bytes, one_requests) = shaper.counts();
    cold(&root);
    let t = Instant::now();
    let children: Vec<_> = (0..50)
        .map(|_| {
            strata(&root)
                .args(["run", "--rm", image, "python3", "-c", "import json"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn strata")
        })
        .collect();
    let ok = children
        .into_iter()
        .filter_map(|mut c| c.wait().ok())
        .filter(|s| s.success())
        .count();
    let secs = t.elapsed().as_secs_f64();
    let (bytes, requests) = shaper.counts();
    let _ = std::fs::remove_dir_all(&root);
    json!({"started": 50, "succeeded": ok, "seconds": secs,
        "MB_fetched": bytes as f64 / 1e6, "requests": requests,
        "one_alone_MB": one_bytes as f64 / 1e6, "one_alone_requests": one_requests})
}

/// A 40-layer image (the Debian+python rootfs plus 39 small layers): cold start and metadata
/// walk of a container's root, over the store's stacked layer directories and over the
/// per-container merged mount.
fn deep_image(work: &Path, img: &Image) -> Value {
    let root = work.join("store-root");
    let _ = std::fs::remove_dir_all(&root);
    let ctx = work.join("deep-ctx");
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).expect("mkdir");
    let base = format!("{}/bench/py:native", img.registry.addr);
    let mut dockerfile = format!("FROM {base}\n");
    for i in 0..39 {
        dockerfile.push_str(&format!(
            "RUN mkdir -p /deep/l{i} && echo {i} > /deep/l{i}/f && echo {i} >> /deep/all\n"
        ));
    }
    std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("write");
    let tag = format!("{}/bench/deep:1", img.registry.addr);
    sh(strata(&root)
        .args(["build", "-q", "-t", &tag])
        .arg(&ctx)
        .stdout(Stdio::null()));
    sh(strata(&root).args(["push", &tag]).stdout(Stdio::null()));
    let mut out = serde_json::Map::new();
    for store in [true, false] {
        let fresh = work.join("deep-root");
        let _ = std::fs::remove_dir_all(&fresh);
        sh(strata(&fresh).args(["pull", &tag]).stdout(Stdio::null()));
        drop_caches();
        let run = |args: &[&str]| {
            let mut c = strata(&fresh);
            if !store {
                c.env("STRATA_LAYER_STORE", "0");
            }
            let t = Instant::now();
            sh(c.args(["run", "--rm", &tag]).args(args));
            t.elapsed().as_secs_f64()
        };
        let start = run(&["python3", "-c", "print(1)"]);
        let walk = run(&["sh", "-c", "find / -xdev > /dev/null"]);
        let key = if store {
            "store"
        } else {
            "per_container_mount"
        };
        out.insert(key.into(), json!({"print_s": start, "find_walk_s": walk}));
        let _ = std::fs::remove_dir_all(&fresh);
        let _ = Command::new("true").status();
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&ctx);
    Value::Object(out)
}
