//! `strata search`: repositories of a registry whose name contains a term (from its catalog).

use anyhow::Context as _;
use strata_oci::Reference;

use crate::cmd::images::print_table;
use crate::global::{GlobalArgs, runtime};

/// Arguments of `search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// `REGISTRY/TERM` (e.g. 127.0.0.1:5000/app), or TERM with --registry.
    pub term: String,
    /// Registry to search (host[:port]).
    #[arg(long)]
    pub registry: Option<String>,
    /// Show at most this many results.
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
}

pub fn run_search(a: SearchArgs, g: &GlobalArgs) -> anyhow::Result<i32> {
    let (registry, term) = match (&a.registry, a.term.split_once('/')) {
        (Some(r), _) => (r.clone(), a.term.clone()),
        (None, Some((r, t))) if r.contains('.') || r.contains(':') || r == "localhost" => {
            (r.to_string(), t.to_string())
        }
        _ => anyhow::bail!("give the registry: strata search REGISTRY/TERM (or --registry HOST)"),
    };
    let probe: Reference = format!("{registry}/strata-search:latest").parse()?;
    let ctx = g.context()?;
    let repos = runtime()?
        .block_on(ctx.client().catalog(&probe))
        .with_context(|| format!("searching {registry}"))?;
    let mut rows = vec![vec!["NAME".to_string()]];
    rows.extend(
        repos
            .into_iter()
            .filter(|r| r.contains(&term))
            .take(a.limit)
            .map(|r| vec![format!("{registry}/{r}")]),
    );
    print_table(&rows);
    Ok(0)
}
