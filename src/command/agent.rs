//! `berth agent …`: the host side of a deploy, run by the deployer over SSH
//! (and by the NixOS module at boot). Hidden from help; speaks NDJSON.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent::system::{Activation, Agent, Goal};
use crate::agent::{AgentResult, Outcome, EVENT_DEPLOYMENT, EVENT_RESULT, EVENT_STATUS};
use crate::cli::Context;
use crate::diagnostics::Exit;
use crate::env;
use crate::nix::{StorePath, SYSTEM_PROFILE};
use crate::output::Printer;
use crate::state;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub verb: Verb,
    /// The agent's state directory
    #[arg(long, value_name = "DIR", env = env::BERTH_STATE_DIR, default_value = state::DEFAULT_DIR, global = true)]
    pub state_dir: PathBuf,
    /// The system profile
    #[arg(long, value_name = "PATH", default_value = SYSTEM_PROFILE, global = true)]
    pub profile: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    /// Record, arm the watchdog, set the profile, switch
    Activate {
        #[arg(long)]
        id: String,
        #[arg(long)]
        node: String,
        #[arg(long, value_name = "STORE_PATH")]
        path: String,
        #[arg(long, value_enum, default_value = "switch")]
        goal: Goal,
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        confirm_timeout: u64,
        #[arg(long)]
        no_magic_rollback: bool,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        ci_run_url: Option<String>,
    },
    /// Roll back unless confirmed in time (started by activate)
    Watchdog {
        #[arg(long)]
        id: String,
    },
    /// Keep a pending deployment
    Confirm {
        #[arg(long)]
        id: String,
    },
    /// Roll back a deployment (--id), or go to another generation (--to)
    Rollback {
        /// The deployment to roll back
        #[arg(long, conflicts_with_all = ["to", "node"])]
        id: Option<String>,
        /// Why (recorded)
        #[arg(long, default_value = "rollback requested")]
        why: String,
        /// The id to record a manual rollback under
        #[arg(long, requires = "node")]
        new_id: Option<String>,
        #[arg(long)]
        node: Option<String>,
        /// The generation to go to (default: the one before the current)
        #[arg(long)]
        to: Option<u64>,
        #[arg(long, default_value = "unknown")]
        actor: String,
    },
    /// One deployment
    Show {
        #[arg(long)]
        id: String,
    },
    /// At boot: roll back a deployment that was never confirmed
    BootCheck,
    /// What the host runs and is doing
    Status {
        #[arg(long)]
        node: String,
    },
    /// Past deployments, newest first
    History {
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub async fn run(_ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    // A dropped SSH session must not stop an activation or a rollback
    // half way. (Rust already ignores SIGPIPE; writes then fail quietly.)
    // SAFETY: setting a signal to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let printer = Printer::new(true, false);
    let mut agent = Agent::open(&args.state_dir, &args.profile)?;
    let result = match args.verb {
        Verb::Activate {
            id,
            node,
            path,
            goal,
            confirm_timeout,
            no_magic_rollback,
            actor,
            reason,
            ci_run_url,
        } => {
            let activation = Activation {
                id,
                node,
                path: StorePath::new(path)?,
                goal,
                confirm_timeout: Duration::from_secs(confirm_timeout),
                magic_rollback: !no_magic_rollback,
                actor,
                reason,
                ci_run_url,
            };
            agent.activate(&activation).await?
        }
        Verb::Watchdog { id } => agent.watchdog(&id).await?,
        Verb::Confirm { id } => agent.confirm(&id)?,
        Verb::Rollback {
            id: Some(id), why, ..
        } => agent.rollback(&id, &why).await?,
        Verb::Rollback {
            id: None,
            new_id,
            node,
            to,
            actor,
            ..
        } => {
            let node = node.unwrap_or_else(|| "this host".into());
            let new_id = new_id.unwrap_or_else(state::new_id);
            agent.rollback_to(&new_id, &node, to, &actor).await?
        }
        Verb::BootCheck => {
            let results = agent.boot_check().await?;
            let mut exit = Exit::SUCCESS;
            for result in &results {
                printer.event(EVENT_RESULT, result);
                exit = exit.max(exit_of(result));
            }
            return Ok(exit);
        }
        Verb::Show { id } => {
            printer.event(EVENT_DEPLOYMENT, &agent.show(&id)?);
            return Ok(Exit::SUCCESS);
        }
        Verb::Status { node } => {
            printer.event(EVENT_STATUS, &agent.status(&node)?);
            return Ok(Exit::SUCCESS);
        }
        Verb::History { node, limit } => {
            for d in agent.history(node.as_deref(), limit)? {
                printer.event(EVENT_DEPLOYMENT, &d);
            }
            return Ok(Exit::SUCCESS);
        }
    };
    printer.event(EVENT_RESULT, &result);
    Ok(exit_of(&result))
}

fn exit_of(result: &AgentResult) -> Exit {
    match result.outcome {
        Outcome::Pending | Outcome::Confirmed | Outcome::Unchanged => Exit::SUCCESS,
        Outcome::RolledBack | Outcome::Failed | Outcome::Busy => Exit::FAILURE,
        Outcome::RollbackFailed => Exit::ATTENTION,
    }
}
