//! `berth man`: the man page, generated from the same clap definitions.

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::diagnostics::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<Exit> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .context("could not write the man page")?;
    Ok(Exit::SUCCESS)
}
