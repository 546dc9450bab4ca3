//! One file per subcommand.

mod archive;
mod build;
pub mod commit;
mod container;
mod convert;
mod cp;
mod df;
mod exec;
pub mod images;
mod images_filter;
pub mod inspect;
mod inspect_container;
mod inspect_json;
mod layer_store;
mod layer_store_als;
mod learn;
pub mod lifecycle;
mod login;
mod logs;
pub mod mount;
mod profile;
pub mod ps;
mod ps_filter;
pub mod pull;
pub mod push;
mod refs;
mod restart;
pub mod rmi;
pub mod run;
mod run_checks;
mod search;
mod snapshotter;
mod soci_index;
mod start;
mod system;
mod transfer;

use clap::Subcommand;

use crate::global::GlobalArgs;

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image lazily: manifest, config and tables of contents only.
    Pull(pull::Args),
    /// Build an image from a Dockerfile: each step runs on the lazily mounted parent and is
    /// committed as one lazily pullable layer.
    Build(build::Args),
    /// List images.
    Images(images::Args),
    /// Show low-level information on images, as JSON.
    Inspect(inspect::Args),
    /// Mount an image read-only; file contents are fetched when read.
    Mount(mount::MountArgs),
    /// Unmount an image mounted with `strata mount`.
    #[command(alias = "unmount")]
    Umount(mount::UmountArgs),
    /// Convert an image to the native lazy format (registry to registry).
    Convert(convert::Args),
    /// Build a SOCI index for a gzip image and push it (registry to registry).
    Index(soci_index::Args),
    /// Log in to a registry.
    Login(login::LoginArgs),
    /// Log out from a registry.
    Logout(login::LogoutArgs),
    /// Run a command in a new container.
    Run(Box<run::Args>),
    /// Run a command once and store what it read with the image, as its prefetch profile.
    Profile(Box<profile::ProfileArgs>),
    /// List containers.
    Ps(ps::PsArgs),
    /// Remove containers.
    Rm(ps::RmArgs),
    /// Create a new image from a container's changes.
    Commit(commit::CommitArgs),
    /// Give an image another name.
    Tag(commit::TagArgs),
    /// Upload an image to its registry (only what the registry lacks).
    Push(push::PushArgs),
    /// Remove images (untag; delete when no name and no container is left).
    Rmi(rmi::RmiArgs),
    /// Show the history of an image.
    History(rmi::HistoryArgs),
    /// Write images to an OCI layout tar archive.
    Save(archive::SaveArgs),
    /// Load images from an OCI layout tar archive.
    Load(archive::LoadArgs),
    /// Find repositories in a registry's catalog.
    Search(search::SearchArgs),
    /// Write a container's filesystem as a tar archive.
    Export(transfer::ExportArgs),
    /// Create an image from a rootfs tarball.
    Import(transfer::ImportArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(rmi::ImageCmd),
    /// Manage strata's data.
    #[command(subcommand)]
    System(system::SystemCmd),
    /// Manage the build cache.
    #[command(subcommand)]
    Builder(rmi::BuilderCmd),
    /// Start an exited container again, on its own writable layer.
    Start(start::StartArgs),
    /// Run a command in a running container (its namespaces, user, directory, environment).
    Exec(exec::ExecArgs),
    /// Copy files between a container and the host (CONTAINER:PATH on either side).
    Cp(cp::CpArgs),
    /// Stop containers and start them again, each on its own writable layer.
    Restart(restart::RestartArgs),
    /// Show the output of a detached container.
    Logs(lifecycle::LogsArgs),
    /// Stop containers: SIGTERM, then SIGKILL after a grace period.
    Stop(lifecycle::StopArgs),
    /// Send a signal to containers.
    Kill(lifecycle::KillArgs),
    /// Show what a container changed: A added, C changed, D deleted.
    Diff(lifecycle::DiffArgs),
    /// Serve containers/storage's additional layer store (podman, CRI-O) at a directory.
    #[command(name = "layer-store")]
    AdditionalLayerStore(layer_store_als::Args),
    /// Serve containerd's snapshots API (a proxy plugin): image layers served lazily by the
    /// layer store.
    Snapshotter(snapshotter::Args),
    /// Internal: the container helper process.
    #[command(name = "__container-init", hide = true)]
    ContainerInit {
        /// The container spec.
        spec: std::path::PathBuf,
    },
    /// Internal: the layer store's holder, or (with a descriptor) its server.
    #[command(name = "__layer-store", hide = true)]
    LayerStore(layer_store::Args),
}

impl Command {
    /// Whether the command creates and runs a container: its own errors exit 125, as docker's
    /// `run` does; every other command's errors exit 1.
    pub fn starts_container(&self) -> bool {
        matches!(self, Command::Run(_) | Command::Profile(_))
    }
}

/// Runs a subcommand; returns the exit code.
pub fn run(cmd: Command, g: &GlobalArgs) -> anyhow::Result<i32> {
    if !matches!(cmd, Command::ContainerInit { .. } | Command::LayerStore(_)) {
        layer_store::configure(g);
    }
    match cmd {
        Command::Pull(a) => pull::run(a, g),
        Command::Build(a) => build::run(a, g),
        Command::Images(a) => images::run(a, g),
        Command::Inspect(a) => inspect::run(a, g),
        Command::Mount(a) => mount::run_mount(a, g),
        Command::Umount(a) => mount::run_umount(a),
        Command::Convert(a) => convert::run(a, g),
        Command::Index(a) => soci_index::run(a, g),
        Command::Login(a) => login::run_login(a, g),
        Command::Logout(a) => login::run_logout(a, g),
        Command::Run(a) => run::run(*a, g),
        Command::Profile(a) => profile::run(*a, g),
        Command::Ps(a) => ps::run_ps(a, g),
        Command::Rm(a) => ps::run_rm(a, g),
        Command::Commit(a) => commit::run_commit(a, g),
        Command::Tag(a) => commit::run_tag(a, g),
        Command::Push(a) => push::run_push(a, g),
        Command::Rmi(a) => rmi::run_rmi(a, g),
        Command::Search(a) => search::run_search(a, g),
        Command::Save(a) => archive::run_save(a, g),
        Command::Load(a) => archive::run_load(a, g),
        Command::Export(a) => transfer::run_export(a, g),
        Command::Import(a) => transfer::run_import(a, g),
        Command::History(a) => rmi::run_history(a, g),
        Command::Image(c) => rmi::run_image(c, g),
        Command::System(c) => system::run_system(c, g),
        Command::Builder(c) => rmi::run_builder(c, g),
        Command::Start(a) => start::run_start(a, g),
        Command::Restart(a) => restart::run_restart(a, g),
        Command::Cp(a) => cp::run_cp(a, g),
        Command::Exec(a) => exec::run_exec(a, g),
        Command::Logs(a) => lifecycle::run_logs(a, g),
        Command::Stop(a) => lifecycle::run_stop(a, g),
        Command::Kill(a) => lifecycle::run_kill(a, g),
        Command::Diff(a) => lifecycle::run_diff(a, g),
        Command::Snapshotter(a) => snapshotter::run(a, g),
        Command::ContainerInit { spec } => Ok(strata_runner::init_main(&spec)),
        Command::LayerStore(a) => layer_store::run(a, g),
        Command::AdditionalLayerStore(a) => layer_store_als::run(a, g),
    }
}

/// An error docker's daemon would report (a missing image or container, a bad filter): the
/// CLI prints it as docker's does, "Error response from daemon: MESSAGE", without its own name.
#[derive(Debug)]
pub struct Daemon(pub String);

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Daemon {}

/// A [`Daemon`] error.
pub fn daemon(message: impl Into<String>) -> anyhow::Error {
    Daemon(message.into()).into()
}

/// Opens a file a command reads; failing, says so as Go does ("open nope.tar: no such file
/// or directory").
pub fn open_file(p: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(p).map_err(|e| anyhow::anyhow!("open {}: {}", p.display(), go_errno(&e)))
}

/// An I/O error as Go's syscall errors read: strerror in lower case, without "(os error N)".
pub fn go_errno(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An error with its own exit code (docker's `inspect` exits 64 on a template it cannot parse).
#[derive(Debug)]
pub struct Coded {
    /// The exit code.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// The process id of a container's recorded pid (a `u32` on disk; pids are below 2^22 on
/// Linux, so the conversion never saturates in practice).
pub fn pid(p: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(i32::try_from(p).unwrap_or(i32::MAX))
}
