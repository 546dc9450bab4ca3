//! Options every subcommand shares, and the context they open.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use strata_distribution::ClientOptions;
use strata_distribution::auth::CredentialStore;
use strata_image::Images;
use strata_storage::cache::DEFAULT_CACHE_BYTES;

/// Global options.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// State directory (images, cache, containers).
    #[arg(long, global = true, env = "STRATA_ROOT")]
    pub root: Option<PathBuf>,
    /// Registry (host[:port]) to reach over plain HTTP; may be repeated.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Chunk cache size limit in MiB (at least 8: below that, chunks fetched for one read are
    /// evicted by the same read's other chunks before it can use them).
    #[arg(long, global = true, env = "STRATA_CACHE_MB", value_parser = clap::value_parser!(u64).range(8..))]
    pub cache_mb: Option<u64>,
    /// Longest total wait, in seconds, for one registry request that is rate limited (429/503
    /// with Retry-After); past it the command fails naming the registry.
    #[arg(
        long,
        global = true,
        env = "STRATA_RATE_LIMIT_WAIT",
        default_value_t = 60
    )]
    pub rate_limit_wait: u64,
    /// Longest time, in seconds, a registry request may make no progress (no answer, no byte
    /// of a blob received or sent) before the command fails naming the registry and the blob.
    #[arg(
        long,
        global = true,
        env = strata_distribution::STALL_TIMEOUT_ENV,
        default_value_t = strata_distribution::DEFAULT_STALL_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub stall_timeout: u64,
    /// Log level (error, warn, info, debug, trace); STRATA_LOG takes a full filter.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
}

impl GlobalArgs {
    /// The state root: --root, STRATA_ROOT, /var/lib/strata for root, else XDG data dir.
    /// Made private (0700, secrets 0600) the first time a command asks for it.
    pub fn root(&self) -> PathBuf {
        let root = self.root_path();
        static SECURED: std::sync::Once = std::sync::Once::new();
        SECURED.call_once(|| {
            if let Err(e) = strata_runner::stateroot::secure_root(&root) {
                tracing::warn!("making state root {} private: {e}", root.display());
            }
            sweep_leftovers(&root);
        });
        root
    }

    pub(crate) fn root_path(&self) -> PathBuf {
        if let Some(r) = &self.root {
            return r.clone();
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/strata");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(x).join("strata");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        home.join(".local/share/strata")
    }

    /// Opens the store, cache and registry client.
    pub fn context(&self) -> anyhow::Result<Images> {
        let root = self.root();
        let opts = ClientOptions {
            insecure_registries: self.insecure_registries.clone(),
            credentials: CredentialStore::standard(&root),
            rate_limit_wait_secs: self.rate_limit_wait,
            stall_timeout_secs: self.stall_timeout,
            ..ClientOptions::default()
        };
        let cache = self
            .cache_mb
            .map(|m| m << 20)
            .unwrap_or(DEFAULT_CACHE_BYTES);
        Images::open(&root, opts, cache)
            .with_context(|| format!("opening state root {}", root.display()))
    }
}

/// What killed commands left: their temporaries, the mounts nobody serves, and their
/// containers' directories and cgroups.
fn sweep_leftovers(root: &std::path::Path) {
    strata_storage::leftovers::sweep(root);
    // A directory without a record may belong to a container that made its cgroups.
    let forget = |id: &str| {
        let host = strata_runner::cgroup::Host::current();
        strata_runner::cgroup::remove_empty_for(&host, id);
    };
    for point in strata_lazyfs::stale::sweep_root(root, &forget) {
        eprintln!("strata: unmounted {} (its server is gone)", point.display());
    }
    remove_dead_cgroups(root);
}

/// How old a container record must be before its cgroups may be taken for left over: one
/// being started now has made its cgroups and not yet moved its first process in.
const DEAD_CGROUP_AGE_SECS: i64 = 10;

/// Removes the cgroups of containers whose supervisor was killed (`run`, a build step: the
/// record says running, nobody runs it) once no process is in them.
fn remove_dead_cgroups(root: &std::path::Path) {
    use strata_runner::state::{Containers, State};
    let host = strata_runner::cgroup::Host::current();
    let now = strata_oci::timefmt::now_secs();
    for c in Containers::new(root).list() {
        let gone = c.state == State::Running
            && !c.pid.is_some_and(strata_storage::leftovers::pid_alive)
            && now.saturating_sub(c.created) > DEAD_CGROUP_AGE_SECS;
        if gone && strata_runner::cgroup::remove_empty_for(&host, &c.id) > 0 {
            tracing::debug!(
                container = c.id,
                "removed the cgroups a killed container left"
            );
        }
    }
}

/// Logs go to stderr; `STRATA_LOG` (an env filter) overrides `--log-level`.
pub fn init_logging(g: &GlobalArgs) {
    let filter = std::env::var("STRATA_LOG").unwrap_or_else(|_| g.log_level.clone());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// A tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strata-io")
        .build()
        .context("starting the async runtime")
}
