//! `berth history FLAKE#NODE`: the node's deployments, newest first, as its
//! host recorded them.

use crate::agent::{call, EVENT_DEPLOYMENT};
use crate::context::Context;
use crate::error::Exit;
use crate::output::short_commit;
use crate::state::Deployment;

use super::nodes;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node, as FLAKE#NODE
    #[arg(value_name = "FLAKE#NODE")]
    pub node: String,
    /// How many deployments
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let node = nodes::one(ctx, &args.node).await?;
    let host = nodes::connect(ctx, &node).await?;
    let events = nodes::agent_events(
        &host,
        &call::history(&host.agent.program, node.name.as_ref(), args.limit),
        EVENT_DEPLOYMENT,
    )
    .await?;
    let _ = host.close().await;
    if events.is_empty() {
        ctx.printer
            .line(format!("{} has no deployments yet", node.name));
    }
    for event in events {
        ctx.printer.event(EVENT_DEPLOYMENT, &event);
        if let Ok(d) = serde_json::from_value::<Deployment>(event) {
            ctx.printer.line(line(&d));
        }
    }
    Ok(Exit::SUCCESS)
}

/// One deployment in a line: when, what, by whom, how it ended.
pub fn line(d: &Deployment) -> String {
    let generation = |g: Option<u64>| g.map_or("-".to_owned(), |g| g.to_string());
    let mut text = format!(
        "{}  {:<15} {} -> {}  {:<8} by {}  ({})",
        crate::state::utc_time(d.started),
        d.status.as_str(),
        generation(d.from_generation),
        generation(d.to_generation),
        d.goal,
        d.actor,
        d.id
    );
    if let Some(revision) = &d.revision {
        text.push_str(&format!("  at {}", short_commit(revision)));
    }
    if let Some(phase) = &d.failure_phase {
        text.push_str(&format!("  failed at {phase}"));
    }
    if let Some(reason) = &d.reason {
        text.push_str(&format!("  \"{reason}\""));
    }
    text
}
