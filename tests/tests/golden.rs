//! Fidelity against the real Docker Engine: runs every scenario of `tests/golden/scenarios/` on
//! strata (own registry, a fresh `--root` per scenario) and compares each step, normalized by
//! `tests/golden/normalize.rules`, with docker's recording in `tests/golden/out/`.
//!
//! Steps that differ must be listed in `tests/golden/DIFFERENCES` with a reason; a listed step
//! that now matches is a failure too, so the list stays honest. Prints the ratio of identical
//! steps and how many exit codes agree. strata's own outcomes are written to
//! `target/golden-actual/` to diff against `tests/golden/out/`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use strata_tests::golden::{self, Outcome, Rules, Runner, Scenario};
use strata_tests::registry::Registry;
use strata_tests::{require_root_fuse, strata};

/// `DIFFERENCES`: `SCENARIO/STEP  KIND  REASON`, KIND `deliberate` or `#N` (the issue to fix it).
fn differences() -> BTreeMap<String, String> {
    let path = golden::golden_dir().join("DIFFERENCES");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let id = parts.next().unwrap().to_string();
        let kind = parts.next().unwrap_or("");
        let reason: Vec<&str> = parts.collect();
        assert!(
            (kind == "deliberate" || kind.starts_with('#')) && !reason.is_empty(),
            "DIFFERENCES:{}: want `STEP deliberate|#ISSUE REASON`, got {line:?}",
            n + 1
        );
        assert!(
            out.insert(id.clone(), line.to_string()).is_none(),
            "DIFFERENCES: {id} twice"
        );
    }
    out
}

fn show(label: &str, text: &str) -> String {
    let mut s = format!("    {label}:\n");
    for l in text.lines() {
        s.push_str(&format!("      |{l}\n"));
    }
    s
}

fn describe(want: &Outcome, got: &Outcome) -> String {
    let mut s = format!("  {} ($ {})\n", want.id, want.cmd.replace('\n', " "));
    if want.code != got.code {
        s.push_str(&format!(
            "    exit: docker {} strata {}\n",
            want.code, got.code
        ));
    }
    if want.stdout != got.stdout {
        s.push_str(&show("docker stdout", &want.stdout));
        s.push_str(&show("strata stdout", &got.stdout));
    }
    if want.stderr != got.stderr {
        s.push_str(&show("docker stderr", &want.stderr));
        s.push_str(&show("strata stderr", &got.stderr));
    }
    s
}

#[test]
fn strata_matches_docker_goldens() {
    if !require_root_fuse("strata_matches_docker_goldens") {
        return;
    }
    let mut scs = golden::scenarios(&golden::golden_dir().join("scenarios"));
    // STRATA_GOLDEN_ONLY=10-import-export,11-save-load runs only those scenarios (while
    // working on them); the ratio printed is then theirs.
    if let Ok(only) = std::env::var("STRATA_GOLDEN_ONLY") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        scs.retain(|sc| only.contains(&sc.name.as_str()));
    }
    let actual_dir = strata::bin()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("golden-actual");
    std::fs::create_dir_all(&actual_dir).unwrap();
    let results = run_all(&scs, &actual_dir);
    let fail = compare(&scs, &results, &actual_dir);
    assert!(fail.is_empty(), "{fail}");
}

/// Compares with the recordings and DIFFERENCES; prints the ratios, returns what fails.
fn compare(
    scs: &[Scenario],
    results: &BTreeMap<String, Vec<Outcome>>,
    actual_dir: &Path,
) -> String {
    let listed = differences();
    let mut seen = std::collections::BTreeSet::new();
    let (mut total, mut same, mut codes_same) = (0, 0, 0);
    let mut unlisted = String::new();
    let mut now_matching = Vec::new();
    let mut stale = Vec::new();
    let mut code_diffs = Vec::new();
    for sc in scs {
        let file = golden::golden_dir()
            .join("out")
            .join(format!("{}.golden", sc.name));
        let want = golden::parse(&std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (record it with scripts/record-docker.sh)",
                file.display()
            )
        }));
        let got = &results[&sc.name];
        let want_ids: Vec<&str> = want.iter().map(|o| o.id.as_str()).collect();
        let got_ids: Vec<&str> = got.iter().map(|o| o.id.as_str()).collect();
        if want_ids != got_ids || want.iter().zip(got).any(|(w, g)| w.cmd != g.cmd) {
            stale.push(sc.name.clone());
            continue;
        }
        for (w, g) in want.iter().zip(got) {
            total += 1;
            seen.insert(w.id.clone());
            if w.code == g.code {
                codes_same += 1;
            } else {
                code_diffs.push(format!("{} (docker {}, strata {})", w.id, w.code, g.code));
            }
            match (w.same(g), listed.contains_key(&w.id)) {
                (true, false) => same += 1,
                (true, true) => {
                    same += 1;
                    now_matching.push(w.id.clone());
                }
                (false, true) => {}
                (false, false) => unlisted.push_str(&describe(w, g)),
            }
        }
    }
    let ran = |k: &str| {
        scs.iter()
            .any(|sc| k.split('/').next() == Some(sc.name.as_str()))
    };
    let unknown: Vec<&String> = listed
        .keys()
        .filter(|k| !seen.contains(*k) && (ran(k) || std::env::var("STRATA_GOLDEN_ONLY").is_err()))
        .collect();
    println!(
        "golden: {same}/{total} steps identical to docker ({:.1}%), exit codes identical in {codes_same}/{total} ({:.1}%); {} listed in DIFFERENCES",
        100.0 * same as f64 / total.max(1) as f64,
        100.0 * codes_same as f64 / total.max(1) as f64,
        listed.len()
    );
    if !code_diffs.is_empty() {
        println!("exit codes that differ:\n  {}", code_diffs.join("\n  "));
    }
    let mut fail = String::new();
    if !stale.is_empty() {
        fail.push_str(&format!(
            "scenarios whose steps differ from their recording (re-record with scripts/record-docker.sh): {stale:?}\n"
        ));
    }
    if !unlisted.is_empty() {
        fail.push_str(&format!(
            "steps that differ from docker and are not in DIFFERENCES (strata's outcomes in {}):\n{unlisted}",
            actual_dir.display()
        ));
    }
    if !now_matching.is_empty() {
        fail.push_str(&format!(
            "steps listed in DIFFERENCES that now match docker (remove them): {now_matching:?}\n"
        ));
    }
    if !unknown.is_empty() {
        fail.push_str(&format!(
            "DIFFERENCES names steps no scenario has: {unknown:?}\n"
        ));
    }
    fail
}

/// Runs every scenario on strata (3 at a time); writes each to `actual_dir` and returns them.
fn run_all(scs: &[Scenario], actual_dir: &Path) -> BTreeMap<String, Vec<Outcome>> {
    let bin = strata::bin();
    let rules = Rules::load();
    let reg = Registry::start();
    let bases = golden::push_bases(&reg.addr);

    // Scenarios are independent (own root, own repositories in the registry): run them on a
    // few threads to keep the test short.
    let queue: Mutex<Vec<&Scenario>> = Mutex::new(scs.iter().rev().collect());
    let results: Mutex<BTreeMap<String, Vec<Outcome>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let Some(sc) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let scratch = tempfile::tempdir().unwrap();
                    let runner = Runner {
                        cli: format!(
                            "{} --root {}",
                            bin.display(),
                            scratch.path().join("root").display()
                        ),
                        reg: reg.addr.clone(),
                        env: vec![("BB_DIGEST".into(), bases.bb1_digest.clone())],
                        rules: &rules,
                        timeout: 60,
                    };
                    let outcomes = runner.run(sc, scratch.path());
                    // Containers left running would keep their mounts in the scratch dir.
                    let _ = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(format!(
                            "{} rm -f $({} ps -aq) >/dev/null 2>&1",
                            runner.cli, runner.cli
                        ))
                        .status();
                    std::fs::write(
                        actual_dir.join(format!("{}.golden", sc.name)),
                        golden::render(&outcomes),
                    )
                    .unwrap();
                    results.lock().unwrap().insert(sc.name.clone(), outcomes);
                }
            });
        }
    });
    results.into_inner().unwrap()
}
