//! `strata login` and `strata logout`.

use std::io::BufRead;

use anyhow::{Context as _, bail};
use strata_distribution::auth::{Credential, CredentialStore};
use strata_oci::Reference;

use crate::global::{GlobalArgs, runtime};

/// Arguments of `login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Registry host[:port].
    pub registry: String,
    /// User name.
    #[arg(long, short = 'u')]
    pub username: String,
    /// Password (prefer --password-stdin).
    #[arg(long, short = 'p')]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Arguments of `logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// Registry host[:port].
    pub registry: String,
}

pub fn run_login(a: LoginArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let password = match (a.password, a.password_stdin) {
        (Some(p), false) => p,
        (None, true) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        _ => bail!("give exactly one of --password and --password-stdin"),
    };
    let cred = Credential {
        username: a.username,
        password,
    };
    let root = g.root();
    let store = CredentialStore::standard(&root);
    // Check the credentials against the registry before keeping them.
    let probe: Reference = format!("{}/strata-login-probe", a.registry).parse()?;
    let tmp = tempdir_store(&root, &a.registry, &cred)?;
    let ctx = strata_image::Images::open(
        &root,
        strata_distribution::ClientOptions {
            insecure_registries: g.insecure_registries.clone(),
            credentials: tmp,
            stall_timeout_secs: g.stall_timeout,
            ..Default::default()
        },
        1 << 30,
    )?;
    let checked = runtime()?.block_on(ctx.client().ping(&probe));
    for f in &ctx_files(&ctx) {
        let _ = std::fs::remove_file(f);
    }
    checked.with_context(|| format!("logging in to {}", a.registry))?;
    store.store(&a.registry, &cred)?;
    println!("Login Succeeded");
    Ok(0)
}

fn ctx_files(ctx: &strata_image::Images) -> Vec<std::path::PathBuf> {
    vec![
        ctx.layout()
            .root()
            .join("tmp")
            .join(format!(".tmp-{}-login.json", std::process::id())),
    ]
}

fn tempdir_store(
    root: &std::path::Path,
    registry: &str,
    cred: &Credential,
) -> anyhow::Result<CredentialStore> {
    let path = root
        .join("tmp")
        .join(format!(".tmp-{}-login.json", std::process::id()));
    let s = CredentialStore { files: vec![path] };
    s.store(registry, cred)?;
    Ok(s)
}

pub fn run_logout(a: LogoutArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let store = CredentialStore::standard(&g.root());
    if store.remove(&a.registry)? {
        println!("Removing login credentials for {}", a.registry);
    } else {
        println!("Not logged in to {}", a.registry);
    }
    Ok(0)
}
