//! The layer store's server (`strata __layer-store`, started by the first command that needs
//! the store) and how commands start it.

use std::ffi::OsString;
use std::time::Duration;

use strata_layerstore::client::{Launcher, set_launcher};
use strata_layerstore::server::{ServeOptions, serve};

use crate::global::{GlobalArgs, runtime};

/// Default seconds the store stays up with no user (`STRATA_LAYER_STORE_IDLE_SECS`).
const DEFAULT_IDLE_SECS: u64 = 60;

/// The global options a child strata process needs to act as this one: state root, log
/// level, insecure registries, rate-limit wait, cache size.
pub fn global_args(g: &GlobalArgs) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--root".into(),
        g.root_path().into(),
        "--log-level".into(),
        g.log_level.clone().into(),
    ];
    for r in &g.insecure_registries {
        args.extend(["--insecure-registry".into(), r.into()]);
    }
    args.extend([
        "--rate-limit-wait".into(),
        g.rate_limit_wait.to_string().into(),
    ]);
    if let Some(mb) = g.cache_mb {
        args.extend(["--cache-mb".into(), mb.to_string().into()]);
    }
    args
}

/// Lets this process start the store's server with its own options.
pub fn configure(g: &GlobalArgs) {
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    let mut args = global_args(g);
    if g.log_level == "warn" {
        // The server's log says what it served.
        args[3] = "info".into();
    }
    args.push("__layer-store".into());
    set_launcher(Launcher { program, args });
}

/// Serves the layer store of the state root until it ends.
pub fn run(g: &GlobalArgs) -> anyhow::Result<i32> {
    let idle = std::env::var("STRATA_LAYER_STORE_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_IDLE_SECS);
    let images = g.context()?;
    let rt = runtime()?;
    serve(
        images,
        &rt,
        &g.root(),
        ServeOptions {
            idle: Duration::from_secs(idle),
        },
    )?;
    Ok(0)
}
