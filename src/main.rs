//! `sparsedit`: convert checkpoints to packs, inspect them, run the model and sample images.
//!
//! Every failure exits with status 2 and one line `error: <reason>` on stderr. The commands live
//! in `cli/`, one file each.

mod cli;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    // A panic is a bug, but it still ends as one line and status 2, never a backtrace dump.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("error: internal error: {}", msg.lines().next().unwrap_or(""));
    }));
    // Mesa's Vulkan drivers probe Wayland and print a stray line when XDG_RUNTIME_DIR is unset
    // (headless machines, CI); an absolute path silences it. Set before any thread starts.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the help shown for a bare `sparsedit`: clap prints them.
        Err(e) if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        // A bad flag or value (e.g. `--backend tpu`) is a failure like any other: one line, status 2.
        Err(e) => {
            eprintln!("error: {}", parse_error_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    match std::panic::catch_unwind(|| cli::run(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(2),
    }
}

/// The reason on one line: a captured backtrace (candle adds one when RUST_BACKTRACE is set) is
/// dropped, other line breaks become spaces.
fn one_line(msg: &str) -> String {
    let kept: Vec<&str> = msg.lines().take_while(|l| !l.trim_start().starts_with("0: ")).map(str::trim).collect();
    kept.join(" ").trim().to_string()
}

/// clap's message up to its first blank line (what is wrong, and the possible values), without
/// its `error: ` prefix and the usage / `--help` hint after it.
fn parse_error_line(msg: &str) -> String {
    let msg = msg.trim_start();
    let msg = msg.strip_prefix("error:").unwrap_or(msg);
    one_line(&msg.lines().take_while(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n"))
}
