//! `berth completions SHELL`.

use crate::error::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `cli`: berth's whole command line, which the script completes.
pub fn run(args: Args, mut cli: clap::Command) -> anyhow::Result<Exit> {
    clap_complete::generate(args.shell, &mut cli, "berth", &mut std::io::stdout());
    Ok(Exit::SUCCESS)
}
