//! `berth status [FLAKE] [--on SELECTOR]`: per node, what its host runs, what
//! is in flight, and how the last deploy went.

use crate::agent::{call, EVENT_STATUS};
use crate::context::Context;
use crate::error::Exit;
use crate::state::Deployment;

use super::{history, nodes};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub nodes: nodes::NodesArgs,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let (_, selected) = nodes::select(ctx, &args.nodes).await?;
    let mut exit = Exit::SUCCESS;
    for node in selected {
        let name = node.name.to_string();
        let status = match nodes::connect(ctx, &node).await {
            Ok(host) => {
                let events = nodes::agent_events(
                    &host,
                    &call::status(&host.agent.program, &name),
                    EVENT_STATUS,
                )
                .await;
                let _ = host.close().await;
                events.map(|mut e| e.pop())
            }
            Err(err) => Err(err),
        };
        match status {
            Ok(Some(status)) => {
                ctx.printer.event(
                    "node_status",
                    &serde_json::json!({ "node": name, "status": status }),
                );
                let generation = status["profile"]["number"]
                    .as_u64()
                    .map_or("none".into(), |g| g.to_string());
                let path = status["profile"]["path"].as_str().unwrap_or("-");
                let revision = status["revision"].as_str().map_or(String::new(), |r| {
                    format!(" at {}", crate::output::short_commit(r))
                });
                ctx.printer.line(format!(
                    "{}: generation {generation} {path}{revision}",
                    ctx.printer.bold(&name)
                ));
                if let Ok(d) = serde_json::from_value::<Deployment>(status["active"].clone()) {
                    ctx.printer
                        .line(format!("  in flight: {}", history::line(&d)));
                }
                if let Ok(d) = serde_json::from_value::<Deployment>(status["last"].clone()) {
                    ctx.printer
                        .line(format!("  last:      {}", history::line(&d)));
                }
            }
            Ok(None) => {
                exit = Exit::FAILURE;
                ctx.printer.line(format!(
                    "{}: the agent gave no status",
                    ctx.printer.bold(&name)
                ));
            }
            Err(err) => {
                exit = Exit::FAILURE;
                ctx.printer.event(
                    "node_status",
                    &serde_json::json!({ "node": name, "error": format!("{err:#}") }),
                );
                ctx.printer
                    .line(format!("{}: unreachable: {err:#}", ctx.printer.bold(&name)));
            }
        }
    }
    Ok(exit)
}
