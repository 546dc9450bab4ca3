//! The `strata` command: wiring only. Each subcommand lives in its own file under `cmd/` with its
//! arguments beside its handler. Errors print one line and exit like docker's CLI: 1, or 125 for
//! `run`-time errors (the container's own failures give 126/127 or its exit code).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cmd;
mod format;
mod global;
mod gotmpl;
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
    // Files strata makes (state, upper layers, /etc/hosts) and the containers' processes get
    // docker's umask, whatever the caller's: under umask 000 a container's / was 0777.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(usage_error(&e)),
    };
    global::init_logging(&cli.global);
    // docker gives 125 only for errors of commands that start a container.
    // `run`'s errors end with a hint naming the verb.
    let verb = match &cli.command {
        cmd::Command::Profile(_) => "profile",
        _ => "run",
    };
    let error_code = if cli.command.starts_container() {
        125
    } else {
        1
    };
    quiet_broken_pipe_panics();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cmd::run(cli.command, &cli.global)
    }));
    let code = match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            report(&e, (error_code == 125).then_some(verb));
            e.downcast_ref::<cmd::Coded>()
                .map_or(error_code, |c| c.code)
        }
        Err(payload) if is_broken_pipe(payload.as_ref()) => die_of_sigpipe(),
        Err(payload) => std::panic::resume_unwind(payload),
    };
    std::process::exit(code);
}

/// An error as docker's CLI prints it: a daemon's error as "Error response from daemon: …",
/// others as their message alone; `run`'s (and `profile`'s) with the CLI's name before and
/// a hint after.
fn report(e: &anyhow::Error, run: Option<&str>) {
    if let Some(c) = e.downcast_ref::<cmd::Coded>() {
        eprintln!("{c}");
        return;
    }
    let msg = match e.downcast_ref::<cmd::Daemon>() {
        Some(d) => format!("Error response from daemon: {d}"),
        None => one_line(e),
    };
    if let Some(verb) = run {
        eprintln!("strata: {msg}\n\nRun 'strata {verb} --help' for more information");
    } else {
        eprintln!("{msg}");
    }
}

/// A usage error as docker prints it: one line and where to read more; exit 125 for a bad
/// flag, 1 for a wrong count of arguments (docker/cli's `FlagErrorFunc` and `cli.ExactArgs`).
/// Help and version go to stdout with exit 0.
fn usage_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return 0;
    }
    let text = e.render().to_string();
    // The usage line names the subcommand path: "Usage: strata image prune [OPTIONS]".
    let path: Vec<&str> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| {
            u.split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect()
        })
        .unwrap_or_default();
    let path = if path.is_empty() {
        "strata".to_string()
    } else {
        path.join(" ")
    };
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return 1;
    }
    if let Some(code) = arg_count_error(e, &path) {
        return code;
    }
    if let Some(code) = unknown_flag(e, &path) {
        return code;
    }
    let first = text.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("strata: {first}\nSee '{path} --help'.");
    if is_flag_error(e) { 125 } else { 1 }
}

/// How many arguments a command takes, as docker/cli checks them, and its usage line.
enum Count {
    Exact(usize),
    AtLeast(usize),
    Range(usize, usize),
}

/// docker/cli's argument counts and usage lines of the verbs strata shares with docker.
const ARG_COUNTS: &[(&str, Count, &str)] = &[
    ("build", Count::Exact(1), "build [OPTIONS] PATH | URL | -"),
    (
        "commit",
        Count::Range(1, 2),
        "commit [OPTIONS] CONTAINER [REPOSITORY[:TAG]]",
    ),
    (
        "exec",
        Count::AtLeast(2),
        "exec [OPTIONS] CONTAINER COMMAND [ARG...]",
    ),
    ("export", Count::Exact(1), "export [OPTIONS] CONTAINER"),
    ("history", Count::Exact(1), "history [OPTIONS] IMAGE"),
    (
        "import",
        Count::AtLeast(1),
        "import [OPTIONS] file|URL|- [REPOSITORY[:TAG]]",
    ),
    (
        "inspect",
        Count::AtLeast(1),
        "inspect [OPTIONS] NAME|ID [NAME|ID...]",
    ),
    (
        "kill",
        Count::AtLeast(1),
        "kill [OPTIONS] CONTAINER [CONTAINER...]",
    ),
    ("logs", Count::Exact(1), "logs [OPTIONS] CONTAINER"),
    ("pull", Count::Exact(1), "pull [OPTIONS] NAME[:TAG|@DIGEST]"),
    ("push", Count::Exact(1), "push [OPTIONS] NAME[:TAG]"),
    (
        "restart",
        Count::AtLeast(1),
        "restart [OPTIONS] CONTAINER [CONTAINER...]",
    ),
    (
        "rm",
        Count::AtLeast(1),
        "rm [OPTIONS] CONTAINER [CONTAINER...]",
    ),
    ("rmi", Count::AtLeast(1), "rmi [OPTIONS] IMAGE [IMAGE...]"),
    (
        "run",
        Count::AtLeast(1),
        "run [OPTIONS] IMAGE [COMMAND] [ARG...]",
    ),
    ("save", Count::AtLeast(1), "save [OPTIONS] IMAGE [IMAGE...]"),
    (
        "start",
        Count::AtLeast(1),
        "start [OPTIONS] CONTAINER [CONTAINER...]",
    ),
    (
        "stop",
        Count::AtLeast(1),
        "stop [OPTIONS] CONTAINER [CONTAINER...]",
    ),
    (
        "tag",
        Count::Exact(2),
        "tag SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]",
    ),
];

/// Usage lines of verbs whose arguments docker/cli does not count (for flag errors).
const MORE_USAGES: &[(&str, &str)] = &[
    ("images", "images [OPTIONS] [REPOSITORY[:TAG]]"),
    ("ps", "ps [OPTIONS]"),
    ("load", "load [OPTIONS]"),
    ("system df", "system df [OPTIONS]"),
    ("image ls", "image ls [OPTIONS] [REPOSITORY[:TAG]]"),
];

/// An unknown flag as docker/cli reports it (cobra's words, the usage line, a hint; exit 125):
/// "unknown flag: --nope", "unknown shorthand flag: 'x' in -x".
fn unknown_flag(e: &clap::Error, path: &str) -> Option<i32> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let verb = path.strip_prefix("strata ")?;
    let usage = ARG_COUNTS
        .iter()
        .find(|(v, _, _)| *v == verb)
        .map(|(_, _, u)| *u)
        .or_else(|| {
            MORE_USAGES
                .iter()
                .find(|(v, _)| *v == verb)
                .map(|(_, u)| *u)
        })?;
    let what = if let Some(long) = arg.strip_prefix("--") {
        format!("unknown flag: --{}", long.split('=').next().unwrap_or(long))
    } else if let Some(short) = arg.strip_prefix('-') {
        let c = short.chars().next()?;
        format!("unknown shorthand flag: '{c}' in -{short}")
    } else {
        return None;
    };
    eprintln!("{what}\n\nUsage:  strata {usage}\n\nRun '{path} --help' for more information");
    Some(125)
}

/// A wrong count of arguments as docker/cli reports it (`cli.ExactArgs`, `RequiresMinArgs`,
/// `RequiresRangeArgs`): the count, the usage line and a hint; exit 1.
fn arg_count_error(e: &clap::Error, path: &str) -> Option<i32> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let wrong_count = match e.kind() {
        ErrorKind::MissingRequiredArgument => true,
        ErrorKind::UnknownArgument => matches!(
            e.get(ContextKind::InvalidArg),
            Some(ContextValue::String(a)) if !a.starts_with('-')
        ),
        _ => false,
    };
    let verb = path.strip_prefix("strata ")?;
    let (_, count, usage) = ARG_COUNTS.iter().find(|(v, _, _)| *v == verb)?;
    if !wrong_count {
        return None;
    }
    let plural = |n: &usize| if *n == 1 { "argument" } else { "arguments" };
    let (what, hint) = match count {
        Count::Exact(n) => (format!("{n} {}", plural(n)), "Run"),
        Count::AtLeast(n) => (format!("at least {n} {}", plural(n)), "See"),
        Count::Range(n, m) => (format!("at least {n} and at most {m} arguments"), "Run"),
    };
    eprintln!(
        "strata: '{path}' requires {what}\n\nUsage:  strata {usage}\n\n{hint} '{path} --help' for more information"
    );
    Some(1)
}

/// docker/cli's flag errors (an unknown flag, a bad flag value) exit 125 for every command;
/// a wrong count of arguments or an unknown command exits 1.
fn is_flag_error(e: &clap::Error) -> bool {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::UnknownArgument => matches!(
            e.get(ContextKind::InvalidArg),
            Some(ContextValue::String(a)) if a.starts_with('-')
        ),
        ErrorKind::InvalidValue | ErrorKind::NoEquals | ErrorKind::ValueValidation => true,
        ErrorKind::ArgumentConflict => true,
        _ => false,
    }
}

/// The panic `println!` raises when stdout is a closed pipe is not a bug to report: it is
/// caught in `main` after the command's guards have unwound.
fn quiet_broken_pipe_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default(info);
        }
    }));
}

fn is_broken_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe")
}

/// Ends the process as docker's CLI ends when its reader went away: by SIGPIPE, silently.
fn die_of_sigpipe() -> ! {
    // SAFETY: restoring the default disposition and raising a signal have no preconditions;
    // nothing else runs on this thread afterwards.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(141)
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
    // One line, and never raw bytes from the input (a library quoting a binary header).
    out.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}
