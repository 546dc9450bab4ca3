//! Golden transcripts of the real Docker Engine, and the machinery to replay them on strata.
//!
//! A scenario (`tests/golden/scenarios/*.steps`) is a list of CLI steps written once with `$CLI`
//! standing for `docker` or `strata --root …`. [`run_scenario`] runs each step with `bash -c`
//! in a scratch directory and keeps its exit code, stdout and stderr after normalization by the
//! rules of `tests/golden/normalize.rules` ([`Rules`]). `scripts/record-docker.sh` writes
//! docker's outcomes to `tests/golden/out/`; the `golden` test runs strata and compares.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use regex::Regex;

use crate::layers::{Item, dir, file, push_blob, sha, symlink, tar_of};

/// `tests/golden/` in the source tree.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// One step of a scenario.
#[derive(Debug, Clone)]
pub struct Step {
    /// `SCENARIO/NAME`, unique across all scenarios.
    pub id: String,
    /// The shell command, with `$CLI`, `$REG`, `$BB`, ... unexpanded.
    pub cmd: String,
    /// Setup lines (`! cmd`) run but are neither recorded nor compared.
    pub record: bool,
}

/// A scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file stem, e.g. `03-inspect`.
    pub name: String,
    /// Its steps in order.
    pub steps: Vec<Step>,
}

/// Reads every `*.steps` file of `dir`, sorted by name.
///
/// Syntax: `NAME  COMMAND` per step (NAME is `[a-z0-9-]+`), `! COMMAND` for setup, `#` comments,
/// a trailing `\` continues a line. A COMMAND starting `@unordered ` has its stdout lines sorted
/// (see [`sort_rows`]).
pub fn scenarios(dir: &Path) -> Vec<Scenario> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "steps"))
        .collect();
    files.sort();
    files.iter().map(|p| parse_scenario(p)).collect()
}

fn parse_scenario(path: &Path) -> Scenario {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if cur.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            cur.push_str(head);
            cur.push('\n');
            continue;
        }
        cur.push_str(line);
        logical.push(std::mem::take(&mut cur));
    }
    let name_re = Regex::new(r"^[a-z0-9][a-z0-9-]*$").unwrap();
    let mut seen = std::collections::HashSet::new();
    let steps = logical
        .into_iter()
        .map(|l| {
            let (head, cmd) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
            let cmd = cmd.trim().to_string();
            if head == "!" {
                return Step {
                    id: format!("{name}/!"),
                    cmd,
                    record: false,
                };
            }
            assert!(
                name_re.is_match(head),
                "{}: bad step name {head:?}",
                path.display()
            );
            assert!(
                seen.insert(head.to_string()),
                "{}: step {head} twice",
                path.display()
            );
            Step {
                id: format!("{name}/{head}"),
                cmd,
                record: true,
            }
        })
        .collect();
    Scenario { name, steps }
}

enum Rule {
    Drop(Regex),
    Sub(Regex, String),
}

/// The normalization rules of `normalize.rules` plus the literal substitutions of the scratch
/// directory (`<TMP>`) and the registry address (`<REG>`).
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Parses `tests/golden/normalize.rules`.
    pub fn load() -> Self {
        let path = golden_dir().join("normalize.rules");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || -> ! { panic!("{}:{}: bad rule {line:?}", path.display(), n + 1) };
            if let Some(re) = line.strip_prefix("drop: ") {
                rules.push(Rule::Drop(Regex::new(re).unwrap_or_else(|_| bad())));
            } else if let Some(rest) = line.strip_prefix("sub: ") {
                let (re, repl) = rest.rsplit_once(" => ").unwrap_or_else(|| bad());
                rules.push(Rule::Sub(
                    Regex::new(re).unwrap_or_else(|_| bad()),
                    repl.to_string(),
                ));
            } else {
                bad();
            }
        }
        Self { rules }
    }

    /// Normalizes one step's output. `ids` numbers hex identifiers by first appearance (keyed
    /// on their first 12 digits) and is shared by a step's stdout and stderr.
    pub fn apply(
        &self,
        text: &str,
        lits: &[(String, &str)],
        ids: &mut HashMap<String, usize>,
    ) -> String {
        let mut t = text.to_string();
        for (from, to) in lits {
            if !from.is_empty() {
                t = t.replace(from.as_str(), to);
            }
        }
        for rule in &self.rules {
            match rule {
                Rule::Drop(re) => {
                    let keep_nl = t.ends_with('\n');
                    let mut out: Vec<&str> = t.lines().filter(|l| !re.is_match(l)).collect();
                    if keep_nl || out.is_empty() {
                        out.push("");
                    }
                    t = out.join("\n");
                    if t == "\n" {
                        t.clear();
                    }
                }
                Rule::Sub(re, repl) => {
                    t = re
                        .replace_all(&t, |c: &regex::Captures| {
                            let mut r = String::new();
                            c.expand(repl, &mut r);
                            if r.contains('#') {
                                let key = c.get(1).unwrap_or_else(|| c.get(0).unwrap()).as_str();
                                let key: String = key.chars().take(12).collect();
                                let next = ids.len() + 1;
                                let n = *ids.entry(key).or_insert(next);
                                r = r.replace('#', &n.to_string());
                            }
                            r
                        })
                        .into_owned();
                }
            }
        }
        t
    }
}

/// What one step did, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `SCENARIO/NAME`.
    pub id: String,
    /// The command as written in the scenario.
    pub cmd: String,
    /// Exit code (`-1` when killed by a signal, 124 when it timed out).
    pub code: i32,
    /// Normalized stdout.
    pub stdout: String,
    /// Normalized stderr.
    pub stderr: String,
}

impl Outcome {
    /// Whether exit code and both streams agree.
    pub fn same(&self, other: &Outcome) -> bool {
        self.code == other.code && self.stdout == other.stdout && self.stderr == other.stderr
    }
}

/// How to run the steps of a scenario.
pub struct Runner<'a> {
    /// The value of `$CLI`.
    pub cli: String,
    /// The registry, `127.0.0.1:PORT`.
    pub reg: String,
    /// Extra environment (e.g. `BB_DIGEST`).
    pub env: Vec<(String, String)>,
    /// The rules.
    pub rules: &'a Rules,
    /// Per-step timeout in seconds.
    pub timeout: u32,
}

impl Runner<'_> {
    /// Runs `sc` in `scratch` (its working directory) and returns the recorded steps' outcomes.
    /// Setup steps that fail are reported on stderr and the scenario goes on.
    pub fn run(&self, sc: &Scenario, scratch: &Path) -> Vec<Outcome> {
        let ctx = golden_dir().join("contexts");
        let scratch_s = scratch.to_string_lossy().into_owned();
        let lits = vec![(scratch_s.clone(), "<TMP>"), (self.reg.clone(), "<REG>")];
        let mut out = Vec::new();
        for step in &sc.steps {
            let (unordered, cmd) = match step.cmd.strip_prefix("@unordered ") {
                Some(rest) => (true, rest),
                None => (false, step.cmd.as_str()),
            };
            let o = Command::new("timeout")
                .args(["-k", "5", &self.timeout.to_string(), "bash", "-c", cmd])
                .current_dir(scratch)
                .env("CLI", &self.cli)
                .env("REG", &self.reg)
                .env("BB", format!("{}/bb:1", self.reg))
                .env("BB2", format!("{}/bb:2", self.reg))
                .env("CTX", &ctx)
                .env("TMP", &scratch_s)
                .env("DOCKER_BUILDKIT", "0")
                .env("DOCKER_CLI_HINTS", "false")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .env_remove("STRATA_LOG")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let code = o.status.code().unwrap_or(-1);
            if !step.record {
                if code != 0 {
                    eprintln!(
                        "setup step of {} failed ({code}): {}\n{}",
                        sc.name,
                        step.cmd,
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                continue;
            }
            let mut ids = HashMap::new();
            let mut stdout = self
                .rules
                .apply(&String::from_utf8_lossy(&o.stdout), &lits, &mut ids);
            if unordered {
                stdout = sort_rows(&stdout);
            }
            let stderr = self
                .rules
                .apply(&String::from_utf8_lossy(&o.stderr), &lits, &mut ids);
            out.push(Outcome {
                id: step.id.clone(),
                cmd: step.cmd.clone(),
                code,
                stdout,
                stderr,
            });
        }
        out
    }
}

/// For `@unordered` steps: stdout's lines sorted, a table header (a first line of capitals)
/// kept first. docker orders images by creation time only, so rows of equal time (two tags of
/// one image) come in any order from run to run.
fn sort_rows(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let header = lines
        .first()
        .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_uppercase()) && *l == l.to_uppercase());
    let start = usize::from(header);
    lines[start..].sort_unstable();
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn quote(text: &str, out: &mut String) {
    for l in text.lines() {
        out.push_str("| ");
        out.push_str(l);
        out.push('\n');
    }
    if !text.is_empty() && !text.ends_with('\n') {
        out.push_str("\\ no newline at end\n");
    }
}

/// The text form of outcomes, one block per step.
pub fn render(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        s.push_str(&format!("### {}\n", o.id));
        for l in o.cmd.lines() {
            s.push_str(&format!("$ {l}\n"));
        }
        s.push_str(&format!("exit: {}\nstdout:\n", o.code));
        quote(&o.stdout, &mut s);
        s.push_str("stderr:\n");
        quote(&o.stderr, &mut s);
    }
    s
}

/// Parses [`render`]'s output.
pub fn parse(text: &str) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = Vec::new();
    let mut which = 0; // 1 stdout, 2 stderr
    for l in text.lines() {
        if let Some(id) = l.strip_prefix("### ") {
            out.push(Outcome {
                id: id.to_string(),
                cmd: String::new(),
                code: 0,
                stdout: String::new(),
                stderr: String::new(),
            });
            which = 0;
            continue;
        }
        let o = out.last_mut().expect("golden file starts with ###");
        if let Some(c) = l.strip_prefix("$ ") {
            if !o.cmd.is_empty() {
                o.cmd.push('\n');
            }
            o.cmd.push_str(c);
        } else if let Some(c) = l.strip_prefix("exit: ") {
            o.code = c.parse().unwrap();
        } else if l == "stdout:" {
            which = 1;
        } else if l == "stderr:" {
            which = 2;
        } else {
            let buf = if which == 1 {
                &mut o.stdout
            } else {
                &mut o.stderr
            };
            if l == "\\ no newline at end" {
                buf.pop();
            } else if let Some(c) = l
                .strip_prefix("| ")
                .or(l.strip_prefix('|').filter(|c| c.is_empty()))
            {
                buf.push_str(c);
                buf.push('\n');
            } else {
                panic!("bad golden line {l:?}");
            }
        }
    }
    out
}

/// What the harness pushed: `REG/bb:1` and `REG/bb:2`.
pub struct Bases {
    /// The manifest digest of `bb:1`.
    pub bb1_digest: String,
}

fn base_items() -> Vec<Item> {
    let bb = std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut items = vec![
        dir("bin"),
        Item::File {
            path: b"bin/busybox".to_vec(),
            mode: 0o755,
            data: bb,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
    ];
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|a| *a != "busybox" && !a.is_empty())
        .map(str::to_string)
        .collect();
    applets.sort();
    for a in applets {
        items.push(symlink(&format!("bin/{a}"), "busybox"));
    }
    items.extend([
        dir("etc"),
        file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        file("etc/group", b"root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n"),
        dir("home"),
        dir("root"),
        Item::Dir {
            path: b"tmp".to_vec(),
            mode: 0o1777,
        },
    ]);
    items
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(tar).unwrap();
    gz.finish().unwrap()
}

fn push_one(
    reg: &str,
    tag: &str,
    layers: &[Vec<Item>],
    created: &[&str],
    labels: serde_json::Value,
) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for (items, when) in layers.iter().zip(created) {
        let tar = tar_of(items);
        diff_ids.push(sha(&tar));
        let blob = gzip(&tar);
        let digest = push_blob(reg, "bb", &blob, scratch.path());
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": blob.len()}));
        history.push(serde_json::json!({"created": when, "created_by": format!("golden harness: layer {}", history.len() + 1)}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "created": created.last().unwrap(),
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))
    .unwrap();
    let cdigest = push_blob(reg, "bb", &config, scratch.path());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let mpath = scratch.path().join("manifest.json");
    std::fs::write(&mpath, &manifest).unwrap();
    let st = Command::new("curl")
        .args([
            "-sSf",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", mpath.display()))
        .arg(format!("http://{reg}/v2/bb/manifests/{tag}"))
        .status()
        .unwrap();
    assert!(st.success(), "pushing bb:{tag}");
    sha(&manifest)
}

/// Pushes the base images every scenario starts from: `bb:1` (busybox with all applets,
/// /etc/passwd with `app` 1000:1000, a `tier=one` label) and `bb:2` (plus a second layer).
pub fn push_bases(reg: &str) -> Bases {
    let l1 = base_items();
    let l2 = vec![
        dir("etc"),
        file("etc/motd", b"second layer\n"),
        dir("srv"),
        file("srv/data.txt", b"data\n"),
    ];
    let bb1_digest = push_one(
        reg,
        "1",
        std::slice::from_ref(&l1),
        &["2024-01-01T00:00:00Z"],
        serde_json::json!({"tier": "one"}),
    );
    push_one(
        reg,
        "2",
        &[l1, l2],
        &["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"],
        serde_json::json!({"tier": "two", "extra": "yes"}),
    );
    Bases { bb1_digest }
}
