//! `berth completions SHELL`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::diagnostics::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "berth",
        &mut std::io::stdout(),
    );
    Ok(Exit::SUCCESS)
}
