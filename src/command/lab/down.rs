//! `berth lab down`.

use crate::context::Context;
use crate::error::Exit;
use crate::lab::Lab;

use super::LabDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub dir: LabDir,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let dir = &args.dir.lab_dir;
    Lab::down(dir).await?;
    ctx.printer
        .event("lab_down", &serde_json::json!({ "dir": dir }));
    ctx.printer
        .line(format!("removed the lab in {}", dir.display()));
    Ok(Exit::SUCCESS)
}
