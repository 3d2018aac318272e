//! `berth lab …`: throwaway target hosts on this machine.

mod down;
mod ssh;
mod status;
mod up;

use std::path::PathBuf;

use crate::context::Context;
use crate::env;
use crate::error::Exit;
use crate::lab::DEFAULT_DIR;

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Make hosts h1, h2, … and wait until each answers SSH
    Up(up::Args),
    /// Show the lab's hosts and whether they run
    Status(status::Args),
    /// Open a shell on a lab host, or run CMD there (as argv)
    Ssh(ssh::Args),
    /// Remove everything the lab made
    Down(down::Args),
}

/// Where the lab is recorded.
#[derive(Debug, clap::Args)]
pub struct LabDir {
    /// The lab's directory: keys, configs, logs, each host's /nix
    #[arg(long, value_name = "DIR", env = env::BERTH_LAB_DIR, default_value = DEFAULT_DIR)]
    pub lab_dir: PathBuf,
}

pub async fn run(ctx: &Context, cmd: LabCommand) -> anyhow::Result<Exit> {
    match cmd {
        LabCommand::Up(args) => up::run(ctx, args).await,
        LabCommand::Status(args) => status::run(ctx, args),
        LabCommand::Ssh(args) => ssh::run(ctx, args).await,
        LabCommand::Down(args) => down::run(ctx, args).await,
    }
}
