//! `strata-bench`: cold starts of a Debian + python3 image over a shaped link, side by side
//! with a full pull (skopeo + umoci), alternating runs with everything cleared between them.
//! Prints a table with the machine it ran on and writes JSON. See BENCHMARKS.md.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod nydus;
mod peers;
mod prepare;
mod scenario;
mod shaper;
mod store;
mod trace_summary;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use scenario::{Sample, Workload, run_scenario, scenarios};
use serde_json::json;
use shaper::{PROFILES, Profile, Shaper};

/// The workloads: what the container runs.
const WORKLOADS: [(&str, &str); 3] = [
    ("print", "print(1)"),
    ("imports", "import json, sqlite3, email"),
    (
        "import-heavy",
        "import json, sqlite3, email.parser, http.server, asyncio, decimal, xml.etree.ElementTree",
    ),
];

/// The scenarios compared in each run, in the order they alternate.
const SCENARIOS: [&str; 7] = [
    "full pull (skopeo+umoci)",
    "strata cold native",
    "strata cold gzip",
    "strata gzip+SOCI index",
    "strata cold profiled",
    "strata cold learned",
    "strata warm",
];

struct Opts {
    runs: usize,
    profiles: Vec<Profile>,
    json: PathBuf,
    work: PathBuf,
    /// Only serve the image through the first profile's link, for manual runs.
    serve: bool,
    /// Only the micro-benchmarks.
    micro_only: bool,
    /// Only the cold starts (no micro-benchmarks).
    cold_only: bool,
    /// Only the layer store's figures.
    store_only: bool,
    /// Where the peers' binaries are (else PATH); `--no-peers` leaves them out.
    peers_dir: Option<PathBuf>,
    no_peers: bool,
    /// Only these workloads (all when empty).
    workloads: Vec<String>,
}

fn opts() -> Opts {
    let mut o = Opts {
        runs: 5,
        profiles: PROFILES.to_vec(),
        json: PathBuf::from("bench-results.json"),
        work: PathBuf::from("/var/tmp/strata-bench"),
        serve: false,
        micro_only: false,
        cold_only: false,
        store_only: false,
        peers_dir: None,
        no_peers: false,
        workloads: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--runs" => o.runs = v.parse().expect("--runs N"),
            "--profile" => o.profiles.retain(|p| p.name == v),
            "--json" => o.json = PathBuf::from(v),
            "--work" => o.work = PathBuf::from(v),
            "--peers" => o.peers_dir = Some(PathBuf::from(v)),
            "--workload" => o.workloads.push(v),
            "--no-peers" => {
                o.no_peers = true;
                i += 1;
                continue;
            }
            "--micro-only" => {
                o.micro_only = true;
                i += 1;
                continue;
            }
            "--cold-only" => {
                o.cold_only = true;
                i += 1;
                continue;
            }
            "--store-only" => {
                o.store_only = true;
                i += 1;
                continue;
            }
            "--serve" => {
                o.serve = true;
                i += 1;
                continue;
            }
            other => {
                eprintln!(
                    "usage: strata-bench [--runs N] [--profile 200mbit-10ms|50mbit-40ms] [--json FILE] [--work DIR] [--peers DIR|--no-peers] [--workload NAME]... [--serve] [--micro-only|--cold-only] [--store-only] | --trace-summary FILE\nunknown argument {other}"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

/// Runs `cmd` (its stderr shown) and returns its stdout; panics when it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes dirty pages back and drops the page cache, so the next read is cold.
pub fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// `strata --root ROOT`.
pub fn strata(root: &Path) -> Command {
    let mut c = Command::new(strata_bin());
    c.arg("--root").arg(root);
    c
}

/// The `strata` binary next to this one (both in the same target directory).
pub fn strata_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    exe.parent().expect("dir").join("strata")
}

/// Stops the layer store a strata command under `root` left running (it outlives the command
/// for its idle time) and unmounts it, so the next run starts with nothing in memory.
pub fn stop_store(root: &Path) {
    let want = root.to_string_lossy().into_owned();
    let holders = || -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.contains("__layer-store") && cmd.contains(&want)).then_some(pid)
            })
            .collect()
    };
    for pid in holders() {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !holders().is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = Command::new("umount")
        .arg("-l")
        .arg(root.join("layers"))
        .stderr(Stdio::null())
        .status();
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    >> 20
            })
        })
        .unwrap_or(0);
    let kernel = sh(Command::new("uname").arg("-r")).trim().to_string();
    format!("{cpu}, {cores} cores, {mem} GiB, Linux {kernel}")
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn main() {
    if let [flag, file] = &std::env::args().skip(1).collect::<Vec<_>>()[..]
        && flag == "--trace-summary"
    {
        return trace_summary::run(file);
    }
    let o = opts();
    std::fs::create_dir_all(&o.work).expect("work dir");
    let machine = machine();
    println!("strata-bench on {machine}");
    let img = prepare::image(&o.work);
    if o.serve {
        serve(&o, &img);
    }
    if o.store_only {
        return store_only(&o, &machine, &img);
    }
    let mut results = Vec::new();
    let mut table = vec![table_header()];
    if !o.micro_only {
        cold_starts(&o, &img, &mut table, &mut results);
    }
    micro_and_report(&o, &machine, &img, &table, results);
}

/// The peers to compare with: found (named when missing) and their images made.
fn peers_ready(
    o: &Opts,
    img: &prepare::Image,
) -> (peers::Peers, Vec<peers::Peer>, Option<nydus::Nydus>) {
    let mut found = peers::discover(o.peers_dir.as_deref());
    if o.no_peers {
        println!("peers: left out (--no-peers)");
        return (found, Vec::new(), None);
    }
    let ny = match nydus::discover(o.peers_dir.as_deref()) {
        Ok(bin) => nydus::prepare(&bin, &o.work, &img.registry.addr)
            .map_err(|e| println!("{}: image not made, left out: {e}", nydus::NYDUS))
            .ok(),
        Err(missing) => {
            found.missing.push(missing);
            None
        }
    };
    for m in &found.missing {
        println!("peer missing: {m} (build with ../shared/peers/build.sh; --peers DIR)");
    }
    let ready = peers::prepare(&found, &o.work, &img.registry.addr);
    (found, ready, ny)
}

/// Every workload's cold starts, per link: the table rows and the JSON results.
fn cold_starts(
    o: &Opts,
    img: &prepare::Image,
    table: &mut Vec<Vec<String>>,
    results: &mut Vec<serde_json::Value>,
) {
    let (found, ready, ny) = peers_ready(o, img);
    let workloads: Vec<(&str, &str)> = WORKLOADS
        .iter()
        .copied()
        .filter(|(n, _)| o.workloads.is_empty() || o.workloads.iter().any(|w| w == n))
        .collect();
    // Per workload, whatever the link: its working set and its profiled image.
    let prepared: Vec<_> = workloads
        .iter()
        .map(|(wname, code)| {
            (
                prepare::working_set(img, code),
                prepare::profiled_image(&o.work, img, wname, code),
                prepare::learned_image(&o.work, img, wname, code),
            )
        })
        .collect();
    for p in &o.profiles {
        let shaper = Shaper::start(&img.registry.addr, *p);
        prepare::check_link(&shaper, p, img);
        for ((wname, code), (ws, profiled_tag, learned_tag)) in workloads.iter().zip(&prepared) {
            let (wname, code) = (*wname, *code);
            let compressed_ws = ws.native_bytes as f64;
            // Transfer of the working set, plus connect, manifest, config+TOCs, chunks.
            let floor = compressed_ws * 8.0 / p.bits_per_sec as f64 + 4.0 * p.rtt.as_secs_f64();
            let warm_root = o.work.join("warm-root");
            let _ = std::fs::remove_dir_all(&warm_root);
            sh(strata(&warm_root)
                .args(["run", "--rm"])
                .arg(format!("{}/bench/py:native", shaper.addr))
                .args(["python3", "-c", code])
                .stdout(Stdio::null()));
            let workload = Workload {
                code,
                peers: &found,
                ready: &ready,
                nydus: ny.as_ref(),
                profiled_tag,
                learned_tag,
                warm_root: &warm_root,
            };
            let samples = run_scenarios(o, &shaper, p.name, wname, &workload);
            let m = Summary {
                link: p.name,
                wname,
                code,
                ws,
                floor,
                ready: &ready,
                nydus: ny.is_some(),
            };
            summarize(&m, &samples, table, results);
            println!(
                "{} {wname}: working set {} files, {:.1} MB uncompressed ({:.1} MB in the native format), floor {floor:.2} s",
                p.name,
                ws.files,
                ws.bytes as f64 / 1e6,
                compressed_ws / 1e6
            );
            stop_store(&warm_root);
            let _ = std::fs::remove_dir_all(&warm_root);
        }
    }
    if !found.missing.is_empty() {
        println!("peers missing from this run: {}", found.missing.join("; "));
    }
}

/// The micro-benchmarks, then the table, their figures and the JSON.
fn micro_and_report(
    o: &Opts,
    machine: &str,
    img: &prepare::Image,
    table: &[Vec<String>],
    results: Vec<serde_json::Value>,
) {
    let micro = if o.cold_only {
        json!({})
    } else {
        let p = o.profiles.first().expect("a profile");
        let shaper = Shaper::start(&img.registry.addr, *p);
        prepare::micro(&o.work, img, &shaper, p)
    };
    print_table(table);
    for (k, v) in micro.as_object().into_iter().flatten() {
        println!("{k}: {v}");
    }
    write_json(o, machine, img, results, micro);
}

/// `--store-only`: the layer store's figures over the first profile's link.
fn store_only(o: &Opts, machine: &str, img: &prepare::Image) {
    let p = o.profiles.first().expect("a profile");
    let shaper = Shaper::start(&img.registry.addr, *p);
    let figures = store::figures(&o.work, img, &shaper);
    println!("layer store on {machine}, link {}:", p.name);
    println!("{}", serde_json::to_string_pretty(&figures).expect("json"));
    write_json(
        o,
        machine,
        img,
        Vec::new(),
        json!({ "layer_store": figures }),
    );
}

/// The whole run as JSON in `o.json`.
fn write_json(
    o: &Opts,
    machine: &str,
    img: &prepare::Image,
    results: Vec<serde_json::Value>,
    micro: serde_json::Value,
) {
    let doc = json!({
        "machine": machine, "runs": o.runs,
        "image": {"compressed_gzip": img.gzip_bytes, "compressed_native": img.native_bytes, "uncompressed": img.uncompressed_bytes, "files": img.files},
        "results": results, "micro": micro,
    });
    std::fs::write(&o.json, serde_json::to_vec_pretty(&doc).expect("json")).expect("write json");
    println!("JSON written to {}", o.json.display());
}

/// The columns of the printed table.
fn table_header() -> Vec<String> {
    vec![
        "link".to_string(),
        "workload".into(),
        "scenario".into(),
        "median s".into(),
        "min s".into(),
        "max s".into(),
        "MB fetched".into(),
        "requests".into(),
        "× full pull".into(),
        "× floor".into(),
    ]
}

/// `--serve`: the images over the first profile's link until interrupted.
fn serve(o: &Opts, img: &prepare::Image) -> ! {
    let p = o.profiles.first().expect("a profile");
    let shaper = Shaper::start(&img.registry.addr, *p);
    println!(
        "serving {0}/bench/py:native and :gzip over {1} (registry {2}); Ctrl-C to stop",
        shaper.addr, p.name, img.registry.addr
    );
    loop {
        std::thread::park();
    }
}

/// Every scenario `o.runs` times, alternating: `samples[scenario][run]`.
fn run_scenarios(
    o: &Opts,
    shaper: &Shaper,
    link: &str,
    wname: &str,
    workload: &Workload<'_>,
) -> Vec<Vec<Sample>> {
    let all = scenarios(workload.ready, workload.nydus.is_some());
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); all.len()];
    for run in 0..o.runs {
        for (i, s) in all.iter().enumerate() {
            let r = run_scenario(s, shaper, &o.work, workload);
            eprintln!(
                "{} {wname} run {run}: {s}: {:.3} s, {} bytes, {} requests",
                link, r.secs, r.bytes, r.requests
            );
            samples[i].push(r);
        }
    }
    samples
}

/// What one (link, workload) pair's rows are about.
struct Summary<'a> {
    link: &'a str,
    wname: &'a str,
    code: &'a str,
    ws: &'a prepare::WorkingSet,
    floor: f64,
    ready: &'a [peers::Peer],
    nydus: bool,
}

/// One table row and one JSON result per scenario: median/min/max seconds, median bytes and
/// requests, and the median against the full pull's and against the link's floor.
fn summarize(
    m: &Summary<'_>,
    samples: &[Vec<Sample>],
    table: &mut Vec<Vec<String>>,
    results: &mut Vec<serde_json::Value>,
) {
    let full_median = stats(&samples[0].iter().map(|s| s.secs).collect::<Vec<_>>()).0;
    for (i, s) in scenarios(m.ready, m.nydus).iter().enumerate() {
        let secs: Vec<f64> = samples[i].iter().map(|s| s.secs).collect();
        let (med, min, max) = stats(&secs);
        let median = |f: fn(&Sample) -> f64| stats(&samples[i].iter().map(f).collect::<Vec<_>>()).0;
        let bytes = median(|s| s.bytes as f64);
        let reqs = median(|s| s.requests as f64);
        table.push(vec![
            m.link.to_string(),
            m.wname.to_string(),
            s.to_string(),
            format!("{med:.2}"),
            format!("{min:.2}"),
            format!("{max:.2}"),
            format!("{:.1}", bytes / 1e6),
            format!("{reqs:.0}"),
            format!("{:.3}", med / full_median),
            format!("{:.2}", med / m.floor),
        ]);
        results.push(json!({
            "link": m.link, "workload": m.wname, "code": m.code, "scenario": s,
            "seconds": secs, "median": med, "min": min, "max": max,
            "bytes": samples[i].iter().map(|s| s.bytes).collect::<Vec<_>>(),
            "requests": samples[i].iter().map(|s| s.requests).collect::<Vec<_>>(),
            "working_set_files": m.ws.files, "working_set_bytes": m.ws.bytes,
            "working_set_native_bytes": m.ws.native_bytes, "floor_seconds": m.floor,
        }));
    }
}

fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", dashes.join("-|-"));
        }
    }
}
