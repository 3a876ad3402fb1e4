//! `zeroci`: the ZeroCI command-line client. See `args.rs` for the commands and `commands/mod.rs` for
//! the exit statuses.

use std::process::ExitCode;

use clap::Parser;

mod args;
mod client;
mod commands;
mod diagnose;
mod display;
mod follow;
mod git;
mod render;

fn main() -> ExitCode {
    zeroci::install_crypto_provider();
    let args = match args::Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            // --help and --version come this way too, and are not errors.
            return if e.use_stderr() {
                ExitCode::from(commands::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // One thread is plenty for one client talking to one controller.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            display::eprint_line(&format!("zeroci: cannot start: {e}"));
            return ExitCode::from(commands::EXIT_TROUBLE);
        }
    };
    match runtime.block_on(commands::dispatch(args)) {
        Ok(code) => code,
        // The reader of our output went away (`zeroci logs 1 | head`): it has what it wanted.
        Err(e) if display::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            display::eprint_line(&format!("zeroci: {e:#}"));
            ExitCode::from(commands::EXIT_TROUBLE)
        }
    }
}
