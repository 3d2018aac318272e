//! `berth rollback FLAKE#NODE [--to GENERATION]`: put a host back on an
//! earlier generation (by default the one before the current).

use crate::agent::{self, call, Outcome};
use crate::context::Context;
use crate::error::Exit;
use crate::host::Host;
use crate::state;

use super::{deploy, nodes};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node, as FLAKE#NODE
    #[arg(value_name = "FLAKE#NODE")]
    pub node: String,
    /// The generation to go back to (default: the one before the current)
    #[arg(long, value_name = "GENERATION")]
    pub to: Option<u64>,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let node = nodes::one(ctx, &args.node).await?;
    let host = nodes::connect(ctx, &node).await?;
    let actor = deploy::audit(None).actor;
    let cmd = call::rollback_to(
        &host.agent.program,
        &state::new_id(),
        node.name.as_ref(),
        args.to,
        &actor,
    );
    let out = host.output(&cmd).await?;
    let _ = host.close().await;
    let Some(result) = agent::find_result(&out.stdout) else {
        out.check()?;
        anyhow::bail!("the berth agent on {} gave no result", node.name);
    };
    ctx.printer.event(agent::EVENT_RESULT, &result);
    ctx.printer
        .line(format!("{}: {}", node.name, result.message));
    Ok(match result.outcome {
        Outcome::Confirmed => Exit::SUCCESS,
        Outcome::RollbackFailed => Exit::ATTENTION,
        _ => Exit::FAILURE,
    })
}
