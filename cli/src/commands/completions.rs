//! `zeroci completions SHELL`.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::{Args, CompletionsArgs};
use crate::display::write_stdout;

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    // Generated into memory first: clap_complete panics when its writer fails (closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Args::command(), "zeroci", &mut script);
    write_stdout(&script)?;
    Ok(ExitCode::SUCCESS)
}
