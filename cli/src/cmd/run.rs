//! `strata run`: a container on the lazily mounted image, with a private writable layer.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use strata_runner::cgroup::Resources;
use strata_runner::security::{Security, normalize_cap};
use strata_runner::state::{Container, Containers, State};
use strata_runner::{Bind, Network, Process, Spec, container_spec, image_command};

use crate::cmd::container::{Streams, execute, respawn_in_background};
use crate::cmd::mount::find_or_pull;
use crate::global::{GlobalArgs, runtime};
use strata_formats::profile::{Prefetch, Profile};
use strata_oci::config::ContainerConfig;
use strata_overlay::root::mount_root_with;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true, disable_help_flag = true)]
pub struct Args {
    /// Print help (`-h` is `--hostname`, as docker's).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Name of the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables (KEY=VALUE, or KEY to copy it from here).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines).
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Set metadata on the container (KEY=VALUE, or KEY for an empty value).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// user[:group] (names from the image's /etc/passwd and /etc/group, or numbers).
    #[arg(short = 'u', long, allow_negative_numbers = true)]
    pub user: Option<String>,
    /// Overwrite the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container host name (default: the short container id).
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// host (default) or none.
    #[arg(long, default_value = "host")]
    pub network: String,
    /// Bind mount HOST:CONTAINER[:ro].
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Run in the background; print the container id; output goes to `strata logs`.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Internal: the id a detached run chose.
    #[arg(long, hide = true)]
    pub cid: Option<String>,
    /// Keep standard input open and attached.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Platform to choose from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// What to fetch before it is read: auto (the image's prefetch profile, then the rest of an
    /// image that has one, at low priority), profile, all, none.
    #[arg(long, default_value = "auto")]
    pub prefetch: Prefetch,
    /// Record what the container reads, if the image has no prefetch profile, and publish it
    /// beside the image in its registry when the command exits 0 (a learned profile that cold
    /// starts anywhere replay).
    #[arg(long)]
    pub learn: bool,
    /// Give the container every capability, every device, no seccomp filter and no masked paths.
    #[arg(long)]
    pub privileged: bool,
    /// Add a Linux capability (NET_ADMIN, CAP_NET_ADMIN, ALL).
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (or ALL).
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// seccomp=unconfined, seccomp=PROFILE.json, no-new-privileges.
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Memory limit (bytes, or with a unit: 32m, 1g).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// Number of CPUs (1.5 is one and a half).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes (-1: unlimited).
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// Image reference or ID.
    pub image: String,
    /// Command and arguments (default: the image's).
    #[arg(allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn parse_volume(v: &str) -> anyhow::Result<Bind> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        _ => bail!("invalid volume specification: {v:?} (want HOST:CONTAINER[:ro])"),
    };
    if !dst.starts_with('/') {
        bail!("invalid volume specification: {v:?}: the container path must be absolute");
    }
    let source = std::fs::canonicalize(src)
        .with_context(|| format!("invalid mount config: bind source path does not exist: {src}"))?;
    Ok(Bind {
        source,
        target: dst.to_string(),
        readonly: ro,
    })
}

/// docker's memory sizes: a number of bytes with an optional b, k, m or g (powers of 1024).
fn parse_bytes(s: &str) -> anyhow::Result<i64> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&lower);
    let (num, unit) = match lower.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => lower.split_at(i),
        None => (lower, ""),
    };
    let shift = match unit {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => bail!("invalid size: {s:?}"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size: {s:?}"))?;
    if n < 0.0 {
        bail!("invalid size: {s:?}");
    }
    let bytes = n * 2f64.powi(shift);
    if bytes >= 9.2e18 {
        bail!("invalid size: {s:?}");
    }
    #[allow(clippy::cast_possible_truncation)] // in range (checked above); fractions of a byte drop
    Ok(bytes as i64)
}

/// `--privileged`, `--cap-add/--cap-drop`, `--security-opt`, `--memory`, `--cpus`,
/// `--pids-limit` as the container's security settings and limits.
fn containment(a: &Args) -> anyhow::Result<(Security, Resources)> {
    let mut sec = Security {
        privileged: a.privileged,
        ..Security::default()
    };
    for c in &a.cap_add {
        sec.cap_add.push(normalize_cap(c)?);
    }
    for c in &a.cap_drop {
        sec.cap_drop.push(normalize_cap(c)?);
    }
    for o in &a.security_opt {
        sec.apply_opt(o)?;
    }
    let memory = a
        .memory
        .as_deref()
        .map(parse_bytes)
        .transpose()?
        .unwrap_or(0);
    if memory > 0 && memory < 6 << 20 {
        bail!("Minimum memory limit allowed is 6MB");
    }
    let nano_cpus = match a.cpus {
        Some(c) if c.is_nan() || c < 0.0 => bail!("invalid value {c} for --cpus"),
        Some(0.0) => 0,
        Some(c) => {
            // docker's daemon check (moby daemon/daemon_unix.go): 0.01 up to the CPUs there are.
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            if c < 0.01 || c > n as f64 {
                bail!("Range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available");
            }
            // At most the CPU count × 1e9 (checked above): far inside i64.
            #[allow(clippy::cast_possible_truncation)]
            let nanos = (c * 1e9) as i64;
            nanos
        }
        None => 0,
    };
    let res = Resources {
        memory,
        nano_cpus,
        pids_limit: a.pids_limit.unwrap_or(0),
    };
    Ok((sec, res))
}

pub fn run(a: Args, g: &GlobalArgs) -> anyhow::Result<i32> {
    if crate::cmd::run_checks::tty_missing(a.interactive, a.tty) {
        // docker/cli's CheckTty: before anything is created, exit 1.
        eprintln!("the input device is not a TTY");
        return Ok(1);
    }
    if let Some(u) = &a.user {
        crate::cmd::run_checks::check_user(u)?;
    }
    run_recorded(a, g, false).map(|(code, _)| code)
}

/// `run`, and with `record` the prefetch profile of what the container read.
pub fn run_recorded(
    a: Args,
    g: &GlobalArgs,
    record: bool,
) -> anyhow::Result<(i32, Option<Profile>)> {
    let setup = setup(&a)?;
    let root = g.root();
    let containers = Containers::new(&root);
    crate::cmd::run_checks::check_daemon_side(
        a.name.as_deref(),
        a.workdir.as_deref(),
        &containers,
    )?;
    let mut ctx = g.context()?;
    ctx.prefetch = a.prefetch;
    let rt = runtime()?;
    let img = find_or_pull(&ctx, &rt, &a.image, &a.platform)?;
    // The background half of `run -d` gets `--cid` and runs in the foreground.
    if a.detach && a.cid.is_none() {
        return detach(&containers, a.name.as_deref()).map(|c| (c, None));
    }
    // The background half: its output (the container's) goes to the log as records.
    let _capture = capture_log(&containers, a.cid.as_deref())?;
    let config = ctx.catalog().config(&img)?;
    let cfg = config.container();
    let args = image_command(&cfg, a.entrypoint.as_deref(), &a.command);
    if args.is_empty() {
        return Err(crate::cmd::daemon("no command specified"));
    }
    let id = match &a.cid {
        Some(id) => id.clone(),
        None => Containers::new_id()?,
    };
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("strata_{}", &id[..8]));
    let dir = containers.dir_of(&id);
    let cleanup_dir = |e: anyhow::Error| {
        let _ = std::fs::remove_dir_all(&dir);
        e
    };
    let learning = !record && crate::cmd::learn::wants(&ctx, &img, a.learn);
    let (root_mount, recording) =
        mount_root_with(&ctx, rt.handle(), &img, &dir, record || learning)
            .map_err(|e| cleanup_dir(e.into()))?;
    let spec = setup.spec(&a, &cfg, args.clone(), &id, &root_mount.rootfs, &dir);
    if let Err(e) = prepare_root(&root_mount, &spec) {
        drop(root_mount);
        return Err(cleanup_dir(e));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let record = new_record(&id, name, &a.image, &img, args, now);
    containers.save(&record)?;
    let mut extra = crate::cmd::run_checks::extra(&ctx, &img, &config, &a.labels, &a.network);
    extra.created_nanos = now.subsec_nanos();
    fill_extra(&mut extra, &a, &cfg);
    extra.save(&dir)?;
    let streams = streams(&a);
    let _tee = tee(&a, streams, &dir)?;
    let code = match execute(&rt, &containers, &spec, record, streams, root_mount) {
        Ok(code) => code,
        Err(e) => {
            let _ = containers.remove(&id);
            return Err(e);
        }
    };
    if a.rm {
        containers.remove(&id)?;
    }
    let profile = recording.map(|r| r.profile());
    if learning {
        learned(&ctx, &rt, &img, code, profile.as_ref());
        return Ok((code, None));
    }
    Ok((code, profile))
}

/// A container in the foreground keeps its output in its log too (`logs` shows it, as
/// docker's), unless --rm takes the log away or a terminal carries the output.
fn tee(
    a: &Args,
    streams: Streams,
    dir: &Path,
) -> anyhow::Result<Option<crate::cmd::logs::Capture>> {
    Ok(match (&a.cid, a.rm, streams) {
        (None, false, Streams::Output | Streams::Interactive) => {
            Some(crate::cmd::logs::tee(&dir.join("container.log"))?)
        }
        _ => None,
    })
}

/// docker's init layer entries (/.dockerenv, /etc/mtab, ...) the image lacks, and checks that
/// the spec's user exists in the mounted root and its working directory is not a file.
fn prepare_root(root: &strata_overlay::root::RootMount, spec: &Spec) -> anyhow::Result<()> {
    strata_runner::initlayer::write(&root.rootfs).map_err(|e| crate::cmd::daemon(e.to_string()))?;
    strata_runner::user::resolve(&spec.rootfs, &spec.user)
        .map_err(|e| crate::cmd::daemon(e.to_string()))?;
    // docker's daemon makes the working directory when it creates the container and refuses
    // one that is a file (`setupWorkingDirectory`).
    if let Ok(p) = strata_runner::resolve_in(&spec.rootfs, Path::new(&spec.cwd), false)
        && p.symlink_metadata().is_ok_and(|m| !m.is_dir())
    {
        return Err(crate::cmd::daemon(format!(
            "Cannot mkdir: {} is not a directory",
            spec.cwd
        )));
    }
    Ok(())
}

/// The options docker's inspect shows that `run` keeps beside the container record.
fn fill_extra(extra: &mut crate::cmd::ps_filter::Extra, a: &Args, cfg: &ContainerConfig) {
    extra.interactive = a.interactive;
    extra.detached = a.cid.is_some();
    extra.entrypoint = match &a.entrypoint {
        Some(e) if e.is_empty() => None,
        Some(e) => Some(vec![e.clone()]),
        None => cfg.entrypoint.get().cloned().filter(|e| !e.is_empty()),
    };
}

/// What `run`'s options ask of the container, checked before anything is pulled or started.
struct Setup {
    network: Network,
    security: Security,
    resources: Resources,
    binds: Vec<Bind>,
    env: Vec<String>,
}

/// `run`'s network, containment, volumes and environment; an error for the first bad one.
fn setup(a: &Args) -> anyhow::Result<Setup> {
    let network = parse_network(&a.network)?;
    let (security, resources) = containment(a)?;
    let binds = a
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let env = env_args(a)?;
    Ok(Setup {
        network,
        security,
        resources,
        binds,
        env,
    })
}

impl Setup {
    /// The container's spec: the image's config with the options over it, running `args`
    /// on `rootfs`, its state in `dir`; the host name defaults to the short container id.
    fn spec(
        self,
        a: &Args,
        cfg: &ContainerConfig,
        args: Vec<String>,
        id: &str,
        rootfs: &Path,
        dir: &Path,
    ) -> Spec {
        let process = Process {
            args,
            env: self.env,
            workdir: a.workdir.clone(),
            user: a.user.clone(),
        };
        let host = Spec {
            rootfs: rootfs.to_path_buf(),
            hostname: a.hostname.clone().unwrap_or_else(|| id[..12].to_string()),
            network: self.network,
            binds: self.binds,
            state_dir: dir.to_path_buf(),
            tty: a.tty,
            security: self.security,
            resources: self.resources,
            // Detached, the error goes to the log, and `run -d` shows it from there.
            failure_hint: Some("Run 'strata run --help' for more information".to_string()),
            ..Spec::default()
        };
        container_spec(Some(cfg), process, host)
    }
}

/// `--network`: the host's or none.
fn parse_network(network: &str) -> anyhow::Result<Network> {
    Ok(match network {
        "host" => Network::Host,
        "none" => Network::None,
        other => bail!("network {other:?} not supported (host or none)"),
    })
}

/// The environment given on the command line: `--env-file` lines (blank lines and comments
/// skipped), then `-e`.
fn env_args(a: &Args) -> anyhow::Result<Vec<String>> {
    let mut env_args = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("open {}: {}", f.display(), crate::cmd::go_errno(&e)))?;
        for line in text.trim_start_matches('\u{feff}').lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            env_args.push(
                env_file_line(line)
                    .map_err(|why| anyhow::anyhow!("invalid env file ({}): {why}", f.display()))?,
            );
        }
    }
    env_args.extend(a.env.iter().cloned());
    Ok(env_args)
}

/// One `--env-file` line as docker/cli reads it (`opts.parseKeyValueFile`): the name may not
/// hold blanks and the value is kept as is.
fn env_file_line(line: &str) -> Result<String, String> {
    let (name, value) = match line.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (line, None),
    };
    let name = name.trim_start_matches([' ', '\t']);
    if name.contains([' ', '\t']) {
        return Err(format!("variable '{name}' contains whitespaces"));
    }
    if name.is_empty() {
        return Err(format!("no variable name on line '{line}'"));
    }
    Ok(match value {
        Some(v) => format!("{name}={v}"),
        None => name.to_string(),
    })
}

/// The record of a container just created from `img`, `now` since the epoch.
fn new_record(
    id: &str,
    name: String,
    image: &str,
    img: &strata_storage::store::ImageRecord,
    command: Vec<String>,
    now: std::time::Duration,
) -> Container {
    Container {
        id: id.to_string(),
        name,
        image: image.to_string(),
        image_id: img.config.to_string(),
        image_manifest: Some(img.manifest.to_string()),
        command,
        created: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
        state: State::Created,
        pid: None,
        exit_code: None,
        finished: None,
        started: None,
    }
}

/// How the container's streams are connected: `-t`, `-i`, or output only.
fn streams(a: &Args) -> Streams {
    if a.tty {
        Streams::Tty
    } else if a.interactive {
        Streams::Interactive
    } else {
        Streams::Output
    }
}

/// `run -d`: the same command line without `-d`, in the background with its output in the
/// container's log; returns once the container has started (or has already finished).
fn detach(containers: &Containers, name: Option<&str>) -> anyhow::Result<i32> {
    let id = Containers::new_id()?;
    let dir = containers.dir_of(&id);
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("container.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child =
        respawn_in_background("run", &format!("--cid={id}"), log, &dir.join("strata.log"))?;
    loop {
        if containers
            .find(&id)
            .is_some_and(|c| c.state != State::Created)
        {
            println!("{id}");
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            match containers.find(&id) {
                // Its command could not start: the error is all its log holds. As docker's
                // `run -d`: the id (the container stays, created), the error, its exit code.
                Some(c) if c.state == State::Created => {
                    println!("{id}");
                    let _ = crate::cmd::logs::print(&log_path, None, false);
                    return Ok(c.exit_code.unwrap_or(125));
                }
                Some(_) => {
                    println!("{id}");
                    return Ok(0);
                }
                // It ran, ended and was removed (`--rm`) between two looks: it started.
                None if !dir.exists() => {
                    println!("{id}");
                    return Ok(0);
                }
                None => {}
            }
            let last = crate::cmd::logs::last_line(&log_path);
            let _ = std::fs::remove_dir_all(&dir);
            let last = last.trim_start_matches("strata: ");
            bail!(
                "container {} did not start ({status}): {last}",
                name.unwrap_or(&id[..12])
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The background half of `run -d` (`--cid ID`) writes the container's output to its log.
fn capture_log(
    containers: &Containers,
    cid: Option<&str>,
) -> anyhow::Result<Option<crate::cmd::logs::Capture>> {
    Ok(match cid {
        Some(id) => Some(crate::cmd::logs::capture(
            &containers.dir_of(id).join("container.log"),
        )?),
        None => None,
    })
}

/// `run --learn`: publishes what the run read when it exited 0; a failure to publish is a
/// warning (the run itself succeeded).
fn learned(
    ctx: &strata_image::Images,
    rt: &tokio::runtime::Runtime,
    img: &strata_storage::store::ImageRecord,
    code: i32,
    profile: Option<&Profile>,
) {
    let Some(profile) = profile.filter(|p| code == 0 && !p.files.is_empty()) else {
        return;
    };
    match crate::cmd::learn::publish(ctx, rt, img, profile) {
        Ok(artifact) => eprintln!(
            "Learned profile: {}, published as {artifact}",
            crate::cmd::learn::summary(profile)
        ),
        Err(e) => eprintln!("strata: warning: {}", strata_oci::causes::with_causes(&*e)),
    }
}

#[cfg(test)]
mod tests {
    use super::{env_file_line, parse_bytes};

    #[test]
    fn env_file_lines_as_docker_reads_them() {
        assert_eq!(env_file_line("A=1 ").unwrap(), "A=1 ");
        assert_eq!(env_file_line("A").unwrap(), "A");
        assert_eq!(env_file_line("A==b").unwrap(), "A==b");
        assert_eq!(
            env_file_line("export X=1").unwrap_err(),
            "variable 'export X' contains whitespaces"
        );
        assert_eq!(
            env_file_line("=x").unwrap_err(),
            "no variable name on line '=x'"
        );
    }

    #[test]
    fn sizes_as_docker_reads_them() {
        assert_eq!(parse_bytes("32m").unwrap(), 32 << 20);
        assert_eq!(parse_bytes("32MB").unwrap(), 32 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("100b").unwrap(), 100);
        for bad in ["", "m", "-1m", "12x", "1mm"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
