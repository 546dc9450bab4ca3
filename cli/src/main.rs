//! The `strata` command: wiring only. Each subcommand lives in its own file under `cmd/` with its
//! arguments beside its handler. Errors print one line and exit 125, like docker.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cmd;
mod global;
mod progress;

use clap::Parser;

/// Start containers from OCI images without pulling them first.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    #[command(flatten)]
    global: global::GlobalArgs,
    #[command(subcommand)]
    command: cmd::Command,
}

fn main() {
    let cli = Cli::parse();
    global::init_logging(&cli.global);
    let code = match cmd::run(cli.command, &cli.global) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata: {}", one_line(&e));
            125
        }
    };
    std::process::exit(code);
}

/// The error and its causes on one line, without repeating a cause the message already has.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}
