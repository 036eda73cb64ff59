//! `gnno`: the command-line front of the pipeline. Owns the CLI, logging, progress
//! bars, the stage runner and exit codes; the stages live in their own crates.

mod cli;
mod commands;
mod gates;
mod history;
mod history_view;
mod pipeline;
mod runner;
mod stages;
mod ui;

use clap::Parser;
use std::process::ExitCode;

/// Exit codes: 0 success, 1 internal failure, 2 bad input, config or usage,
/// 3 a gate failed (nothing published), 75 the workdir is locked by another run.
pub mod exit {
    pub const INTERNAL: u8 = 1;
    pub const USER: u8 = 2;
    pub const GATE: u8 = 3;
    pub const BUSY: u8 = 75;
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    ui::init_logging(cli.verbose, cli.quiet);
    match commands::dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`gnno report | head`) is a normal end.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, hint) = classify(&e);
            eprintln!("error: {e:#}");
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            ExitCode::from(code)
        }
    }
}

/// Was the error a write to a closed stdout? (Rust ignores SIGPIPE, so the write
/// returns EPIPE instead of killing the process.)
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Map an error to its exit code and hint.
fn classify(e: &anyhow::Error) -> (u8, Option<String>) {
    if e.downcast_ref::<gates::GateFailed>().is_some() {
        return (
            exit::GATE,
            Some("the last accepted outputs stay published; see `gnno history` and docs/OPERATIONS.md".into()),
        );
    }
    if let Some(b) = e.downcast_ref::<runner::Busy>() {
        return (exit::BUSY, Some(format!("wait for pid {} to finish; a lock left by a dead process is taken over automatically", b.pid)));
    }
    for cause in e.chain() {
        if let Some(g) = cause.downcast_ref::<gnno_core::Error>() {
            let code = if g.is_user_error() {
                exit::USER
            } else {
                exit::INTERNAL
            };
            return (code, g.hint().map(str::to_owned));
        }
    }
    (exit::INTERNAL, None)
}
