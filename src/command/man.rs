//! `berth man`: the man page, generated from the same clap definitions.

use anyhow::Context;

use crate::error::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {}

/// `cli`: berth's whole command line, which the page describes.
pub fn run(_args: Args, cli: clap::Command) -> anyhow::Result<Exit> {
    clap_mangen::Man::new(cli)
        .render(&mut std::io::stdout())
        .context("could not write the man page")?;
    Ok(Exit::SUCCESS)
}
