//! The `arbiter` binary: parse, set up logging, run, map the result to an
//! exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use arbiter::cli::{Cli, LogFormat};
use clap::Parser;

// The server allocates and frees small objects at a high rate from two or
// more threads; mimalloc measured faster than glibc's malloc here
// (scripts/bench-http).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for errors (bad input, a policy that will not load, ...).
const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    // clap exits 2 on bad usage and 0 for --help/--version by itself.
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARBITER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match cli.log_format() {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match arbiter::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("arbiter: {}", report(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The error and its causes, for one line on stderr. Arbiter's errors say
/// their cause in their own message and keep it as their source too, so a
/// cause is added only where the line does not say it already.
fn report(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        let cause = cause.trim_end();
        if !line.contains(cause) {
            line.push_str(": ");
            line.push_str(cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let e = arbiter::config::Config::parse("[server]\nlisten = 5\n", "bad.toml")
            .expect_err("bad type");
        let line = report(&anyhow::Error::new(e).context("cannot start"));
        assert!(
            line.starts_with("cannot start: configuration `bad.toml`: "),
            "{line}"
        );
        assert_eq!(line.matches("TOML parse error").count(), 1, "{line}");

        let io = std::io::Error::other("disk on fire");
        let line = report(&anyhow::Error::new(io).context("cannot write"));
        assert_eq!(line, "cannot write: disk on fire");
    }
}
