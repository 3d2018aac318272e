//! `berth plan [FLAKE[#NODE]]`: per node, what a deploy would change — the
//! closure diff against what the host runs now, and the units
//! `switch-to-configuration dry-activate` would touch.

use anyhow::Context as _;

use crate::agent::{call, EVENT_DRY_ACTIVATE, EVENT_STATUS};
use crate::context::Context;
use crate::deploy;
use crate::error::Exit;
use crate::flake;
use crate::host::Host;
use crate::nix::{diff, dry_activate, StorePath};
use crate::process::{self, JobLog, Via};

use super::nodes;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub nodes: nodes::NodesArgs,
    /// Sign each system and its closure with this secret key before it is copied, as `berth
    /// deploy --sign-key` does: a host that requires signatures dry-activates only a signed
    /// system, and a deploy user's copies must be signed
    #[arg(long, value_name = "FILE", env = crate::env::BERTH_SIGN_KEY)]
    pub sign_key: Option<std::path::PathBuf>,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let (target, selected) = nodes::select(ctx, &args.nodes).await?;
    let names: Vec<_> = selected.iter().map(|n| n.name.clone()).collect();
    ctx.printer
        .line(format!("building {} node(s)", names.len()));
    if let Some(key) = &args.sign_key {
        super::deploy::check_sign_key(key)?;
    }
    let built = flake::build(&target.flake, &names).await?;
    if let Some(key) = &args.sign_key {
        let outs: Vec<StorePath> = built.iter().map(|b| b.out.clone()).collect();
        process::output(
            &crate::nix::sign(key, &outs, None),
            Via::Local,
            &JobLog::new(),
        )
        .await?
        .check()?;
    }
    for (node, built) in selected.iter().zip(built) {
        let name = node.name.to_string();
        let host = nodes::connect(ctx, node).await?;
        let status = nodes::agent_events(
            &host,
            &call::status(&host.agent.program, &name),
            EVENT_STATUS,
        )
        .await?
        .pop()
        .unwrap_or_default();
        let current = status["profile"]["path"]
            .as_str()
            .map(StorePath::new)
            .transpose()
            .context("the agent reported a current system that is not a store path")?;

        let after_info =
            process::output(&diff::path_info_cmd(&built.out), Via::Local, &JobLog::new())
                .await?
                .check()?;
        let after = diff::parse_path_info(&after_info.stdout)?;
        let before = match &current {
            Some(path) => {
                diff::parse_path_info(&host.run(&diff::path_info_cmd(path)).await?.stdout)?
            }
            None => Vec::new(),
        };
        let changes = diff::diff(&before, &after);

        host.copy_closure(std::slice::from_ref(&built.out))
            .await
            .map_err(|err| {
                anyhow::anyhow!(deploy::copy_refused(&err, &node.settings.target_user))
            })?;
        // The agent runs the new system's script as root, once the system
        // passes the signature check an activation would make.
        // A refused system exits 1 with its reason in the event.
        let signatures = match &args.sign_key {
            Some(_) => deploy::closure_signatures(&built.out, None, host.log())
                .await
                .map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        let out = host
            .output(&call::dry_activate(
                &host.agent.program,
                &built.out,
                &signatures,
            ))
            .await?;
        let Some(dry) = crate::agent::find_events(&out.stdout, EVENT_DRY_ACTIVATE).pop() else {
            return Err(match out.check() {
                Err(err) => anyhow::Error::new(err).context("the agent's dry-activate failed"),
                Ok(_) => anyhow::anyhow!("the agent's dry-activate gave no result"),
            });
        };
        let refused = dry["refused"].as_str().map(str::to_owned);
        let succeeded = dry["succeeded"].as_bool().unwrap_or(false);
        let units = dry_activate::parse(dry["output"].as_str().unwrap_or(""));
        let _ = host.close().await;

        ctx.printer.event(
            "plan",
            &serde_json::json!({
                "node": name,
                "current": current,
                "new": built.out,
                "closure": changes,
                "units": units,
                "dry_activate_succeeded": succeeded,
                "dry_activate_refused": refused,
            }),
        );
        ctx.printer.line(format!("{}:", ctx.printer.bold(&name)));
        ctx.printer.line(format!(
            "  {} -> {}",
            current
                .as_ref()
                .map_or("(nothing)".to_owned(), |c| c.to_string()),
            built.out
        ));
        if current.as_ref() == Some(&built.out) {
            ctx.printer.line("  already running this system");
            continue;
        }
        for line in changes.to_string().lines().chain(units.to_string().lines()) {
            ctx.printer.line(format!("  {line}"));
        }
        if let Some(why) = &refused {
            ctx.printer
                .warn(format!("{name}: the host would not dry-activate it: {why}"));
        } else if !succeeded {
            ctx.printer.warn(format!("{name}: dry-activate failed"));
        }
    }
    Ok(Exit::SUCCESS)
}
