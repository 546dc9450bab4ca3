//! Records docker's golden transcripts: `golden record [SCENARIO...]` with `DOCKER_HOST` naming
//! a running Docker Engine. Starts its own registry, pushes the base images, runs each scenario
//! with `CLI=docker` and writes `tests/golden/out/SCENARIO.golden`. Between scenarios it removes
//! the containers and images the scenario made (what existed before is left alone).
//! Run through `scripts/record-docker.sh`, which also starts a private engine.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;
use std::process::Command;

use strata_tests::golden::{self, Rules, Runner};
use strata_tests::registry::Registry;

fn docker_lines(args: &[&str]) -> Vec<String> {
    let o = Command::new("docker")
        .args(args)
        .output()
        .expect("running docker");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn cleanup(keep_c: &HashSet<String>, keep_i: &HashSet<String>) {
    for c in docker_lines(&["ps", "-aq", "--no-trunc"]) {
        if !keep_c.contains(&c) {
            let _ = Command::new("docker").args(["rm", "-f", &c]).output();
        }
    }
    // Twice: removing a child can leave its parent removable.
    for _ in 0..2 {
        for i in docker_lines(&["images", "-aq", "--no-trunc"]) {
            if !keep_i.contains(&i) {
                let _ = Command::new("docker").args(["rmi", "-f", &i]).output();
            }
        }
    }
}

/// The scenarios of `tests/golden/roundtrip/`, run with both tools: `$DOCKER` and `$STRATA`
/// (target/debug/strata with a --root in the scenario's scratch dir). Written next to them.
fn roundtrips(
    reg: &str,
    digest: &str,
    rules: &Rules,
    keep_c: &HashSet<String>,
    keep_i: &HashSet<String>,
) -> usize {
    let dir = golden::golden_dir().join("roundtrip");
    let exe = std::env::current_exe().unwrap();
    let strata = exe.parent().unwrap().parent().unwrap().join("strata");
    assert!(
        strata.exists(),
        "{} is missing: cargo build -p strata",
        strata.display()
    );
    let mut steps = 0;
    for sc in golden::scenarios(&dir) {
        let scratch = tempfile::tempdir().unwrap();
        let cli = format!(
            "{} --root {}",
            strata.display(),
            scratch.path().join("sroot").display()
        );
        let runner = Runner {
            cli: "false".into(),
            reg: reg.to_string(),
            env: vec![
                ("BB_DIGEST".into(), digest.to_string()),
                ("DOCKER".into(), "docker".into()),
                ("STRATA".into(), cli.clone()),
                ("RT".into(), dir.display().to_string()),
            ],
            rules,
            timeout: 120,
        };
        let outcomes = runner.run(&sc, scratch.path());
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("{cli} rm -f $({cli} ps -aq) >/dev/null 2>&1"))
            .status();
        cleanup(keep_c, keep_i);
        steps += outcomes.len();
        println!("roundtrip {}: {} steps", sc.name, outcomes.len());
        std::fs::write(
            dir.join(format!("{}.golden", sc.name)),
            golden::render(&outcomes),
        )
        .unwrap();
    }
    steps
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(
        args.first().map(String::as_str),
        Some("record"),
        "usage: golden record [SCENARIO...]"
    );
    let only: Vec<&String> = args.iter().skip(1).collect();
    assert!(
        std::env::var("DOCKER_HOST").is_ok(),
        "DOCKER_HOST must name the engine to record"
    );
    let rules = Rules::load();
    let reg = Registry::start();
    let bases = golden::push_bases(&reg.addr);
    let runner = Runner {
        cli: "docker".into(),
        reg: reg.addr.clone(),
        env: vec![("BB_DIGEST".into(), bases.bb1_digest.clone())],
        rules: &rules,
        timeout: 120,
    };
    let keep_c: HashSet<String> = docker_lines(&["ps", "-aq", "--no-trunc"])
        .into_iter()
        .collect();
    let keep_i: HashSet<String> = docker_lines(&["images", "-aq", "--no-trunc"])
        .into_iter()
        .collect();
    let out_dir = golden::golden_dir().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut steps = 0;
    for sc in golden::scenarios(&golden::golden_dir().join("scenarios")) {
        if !only.is_empty() && !only.iter().any(|o| **o == sc.name) {
            continue;
        }
        let scratch = tempfile::tempdir().unwrap();
        let outcomes = runner.run(&sc, scratch.path());
        cleanup(&keep_c, &keep_i);
        steps += outcomes.len();
        println!("{}: {} steps", sc.name, outcomes.len());
        std::fs::write(
            out_dir.join(format!("{}.golden", sc.name)),
            golden::render(&outcomes),
        )
        .unwrap();
    }
    if only.is_empty() || only.iter().any(|o| *o == "roundtrip") {
        steps += roundtrips(&reg.addr, &bases.bb1_digest, &rules, &keep_c, &keep_i);
    }
    let version = Command::new("docker")
        .args(["version", "--format", "client {{.Client.Version}} (API {{.Client.APIVersion}}); server {{.Server.Version}} (API {{.Server.APIVersion}}, min {{.Server.MinAPIVersion}}); {{range .Server.Components}}{{.Name}} {{.Version}}; {{end}}"])
        .output()
        .unwrap();
    let dockerd = std::env::var("GOLDEN_DOCKERD_VERSION").unwrap_or_default();
    let header = format!(
        "# Engine that recorded tests/golden/out (written by scripts/record-docker.sh)\nrecorded: {steps} steps\ndocker: {}\ndockerd: {dockerd}\nbusybox: {}\n",
        String::from_utf8_lossy(&version.stdout).trim(),
        String::from_utf8_lossy(&Command::new("/bin/busybox").output().unwrap().stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    if only.is_empty() {
        std::fs::write(golden::golden_dir().join("ENGINE"), header).unwrap();
    }
    println!(
        "recorded {steps} steps with {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );
}
