//! `berth agent …`: the host side of a deploy, run by the deployer over SSH
//! (and by the NixOS module at boot). Hidden from help; speaks NDJSON.

use std::path::PathBuf;

use anyhow::Context as _;
use std::time::Duration;

use crate::agent::call::Audit;
use crate::agent::peer;
use crate::agent::system::{Activation, Agent, Goal, DEFAULT_ACTIVATION_TIMEOUT};
use crate::agent::{
    AgentResult, Outcome, EVENT_DEPLOYMENT, EVENT_DRY_ACTIVATE, EVENT_RESULT, EVENT_STATUS,
};
use crate::app::manifest::{self, Manifest, Overrides, ServiceName};
use crate::app::transaction::{
    AppAgent, DeployRequest, RollbackRequest, ScaleRequest, SkipSnapshotGuard, EVENT_CHANGES,
    EVENT_UNBLOCKED,
};
use crate::command::app;
use crate::context::Context;
use crate::env;
use crate::error::Exit;
use crate::flake::Revision;
use crate::nix::signatures::SignedPath;
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
    /// Where app manifests are
    #[arg(long, value_name = "DIR", default_value = manifest::MANIFEST_DIR, global = true)]
    pub manifest_dir: PathBuf,
}

/// Who acts on an app, and how long to wait for its lock.
#[derive(Debug, clap::Args)]
pub struct AppAudit {
    #[arg(long, default_value = "unknown")]
    actor: String,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    ci_run_url: Option<String>,
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    lock_wait: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SnapshotAction {
    Create,
    List,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LockAction {
    Acquire,
    Release,
    Status,
}

#[derive(Debug, clap::Subcommand)]
pub enum Verb {
    /// Record, arm the watchdog, set the profile, switch
    Activate {
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
        #[arg(long, value_parser = crate::flake::parse_node_name)]
        node: String,
        #[arg(long, value_name = "STORE_PATH")]
        path: String,
        #[arg(long, value_enum, default_value = "switch")]
        goal: Goal,
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        confirm_timeout: u64,
        /// Seconds switch-to-configuration may run before it is stopped and rolled back
        #[arg(long, value_name = "SECS", default_value_t = DEFAULT_ACTIVATION_TIMEOUT.as_secs())]
        activation_timeout: u64,
        #[arg(long)]
        no_magic_rollback: bool,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        ci_run_url: Option<String>,
        /// The flake revision (full commit id) the system was built from
        #[arg(long, value_name = "SHA")]
        revision: Option<Revision>,
        /// Refuse (busy) unless the host still runs a system recorded with this revision
        #[arg(long, value_name = "SHA")]
        expect_revision: Option<Revision>,
        /// Add the signatures on stdin (a JSON list of signed paths, as the deployer has them)
        /// to the paths this host has, before the signature check
        #[arg(long)]
        signatures_on_stdin: bool,
    },
    /// The host already runs PATH: record that REVISION builds it (nothing is activated)
    Record {
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
        #[arg(long, value_parser = crate::flake::parse_node_name)]
        node: String,
        #[arg(long, value_name = "STORE_PATH")]
        path: String,
        #[arg(long, value_name = "SHA")]
        revision: Revision,
        #[arg(long)]
        actor: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        ci_run_url: Option<String>,
    },
    /// Roll back unless confirmed in time (started by activate)
    Watchdog {
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
    },
    /// Keep a pending deployment
    Confirm {
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
    },
    /// Roll back a deployment (--id), or go to another generation (--to)
    Rollback {
        /// The deployment to roll back
        #[arg(long, conflicts_with_all = ["to", "node"], value_parser = state::id::parse_id)]
        id: Option<String>,
        /// Why (recorded)
        #[arg(long, default_value = "rollback requested")]
        why: String,
        /// The id to record a manual rollback under
        #[arg(long, requires = "node", value_parser = state::id::parse_id)]
        new_id: Option<String>,
        #[arg(long, value_parser = crate::flake::parse_node_name)]
        node: Option<String>,
        /// The generation to go to (default: the one before the current)
        #[arg(long)]
        to: Option<u64>,
        #[arg(long, default_value = "unknown")]
        actor: String,
    },
    /// One deployment
    Show {
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
    },
    /// At boot: roll back a deployment that was never confirmed
    BootCheck,
    /// What the host runs and is doing
    Status {
        #[arg(long, value_parser = crate::flake::parse_node_name)]
        node: String,
    },
    /// Deploy an app: the whole transaction (docs/app.md)
    AppDeploy {
        #[arg(long)]
        service: ServiceName,
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
        #[command(flatten)]
        revision: app::RevisionArgs,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        skip_superseded: bool,
        #[arg(long)]
        skip_untouched: bool,
        /// Take no snapshot of the data (a failed deploy then cannot
        /// restore it)
        #[arg(long)]
        skip_snapshot: bool,
        /// The deployer runs in CI: `--skip-snapshot` is refused there
        /// unless allowed
        #[arg(long, requires = "skip_snapshot")]
        in_ci: bool,
        /// `--skip-snapshot` is fine in CI
        #[arg(long, requires = "skip_snapshot")]
        allow_skip_snapshot_in_ci: bool,
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the manifest declares this stage
        #[arg(long, value_parser = crate::stage::parse_stage)]
        stage: Option<crate::stage::Stage>,
        #[command(flatten)]
        audit: AppAudit,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Put an app back on a kept release
    AppRollback {
        #[arg(long)]
        service: ServiceName,
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        restore_data: bool,
        #[command(flatten)]
        audit: AppAudit,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Start or stop an app's instances until N run
    AppScale {
        #[arg(long)]
        service: ServiceName,
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
        #[arg(long, value_parser = manifest::parse_instances)]
        instances: u32,
        #[command(flatten)]
        audit: AppAudit,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// An app's state (recovers an interrupted deploy first)
    AppStatus {
        #[arg(long)]
        service: ServiceName,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Deploy a blocked revision of an app again without --force
    AppUnblock {
        #[arg(long)]
        service: ServiceName,
        /// The blocked revision, or the start of its hash
        #[arg(long, value_parser = crate::app::release::parse_rev)]
        rev: String,
        #[command(flatten)]
        audit: AppAudit,
    },
    /// What a range of commits changes for an app (its manifest's paths)
    AppChanged {
        #[arg(long)]
        service: ServiceName,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// An app's deploys, newest first
    AppHistory {
        #[arg(long)]
        service: ServiceName,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Snapshot an app's data now, or list its snapshots
    Snapshot {
        #[arg(value_enum)]
        action: SnapshotAction,
        #[arg(long)]
        service: ServiceName,
        #[command(flatten)]
        audit: AppAudit,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Put an app's data back from a snapshot
    Restore {
        #[arg(long)]
        service: ServiceName,
        #[arg(long, value_parser = state::id::parse_id)]
        snapshot: String,
        #[arg(long, value_parser = state::id::parse_id)]
        id: String,
        #[command(flatten)]
        audit: AppAudit,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Hold, release or show a service's or the host's lock
    Lock {
        #[arg(value_enum)]
        action: LockAction,
        /// The service (else the whole host)
        #[arg(long)]
        service: Option<ServiceName>,
        #[arg(long, default_value = "unknown")]
        owner: String,
        #[arg(long)]
        reason: Option<String>,
        /// Wait this long for a held lock
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// What switching to PATH would do, once it passes activate's signature check
    DryActivate {
        #[arg(long, value_name = "STORE_PATH")]
        path: String,
        /// As activate's
        #[arg(long)]
        signatures_on_stdin: bool,
    },
    /// Serve the signed paths of PATH's closure to peer hosts as a binary cache, until the SSH
    /// session that started it ends
    Serve {
        #[arg(long, value_name = "STORE_PATH")]
        path: String,
        /// The address to listen on (default: the one this SSH session reached)
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::IpAddr>,
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Stop after this long at the latest
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        lifetime: u64,
    },
    /// Take the store paths on stdin (one a line) from peer hosts' caches (`serve`), those the
    /// peers have, trusting only signed paths
    Fetch {
        /// A peer's cache URL, as `serve` printed it; tried in order
        #[arg(long = "from", value_name = "URL", required = true, value_parser = parse_peer_url)]
        from: Vec<String>,
        /// The deployer's public key, trusted when the host's agent.json names no keys
        #[arg(long, value_name = "KEY", value_parser = crate::nix::keys::PublicKey::parse)]
        trusted_key: Option<crate::nix::keys::PublicKey>,
    },
    /// Past deployments, newest first
    History {
        #[arg(long, value_parser = crate::flake::parse_node_name)]
        node: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

/// The user who ran the agent as root through sudo (or doas, or run0,
/// which set the same variables), if one did: sudo sets them itself, the
/// caller cannot.
fn escalated_by() -> Option<String> {
    [env::SUDO_USER, env::DOAS_USER]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .filter(|user| !user.is_empty() && user != "root")
}

/// What a user who is not root may have the agent do as root: the system
/// verbs a deploy, rollback, status and the host's lock need, on the
/// host's own state and system profile. A deploy user's sudo rule lets it
/// run `berth agent <verb> *`, so this is where the rest is refused: the
/// app verbs (they run commands from a manifest), and another state
/// directory, profile or manifest directory (whose contents that user could
/// write, and the agent would trust).
fn refuse_escalated(args: &Args, user: &str) -> Result<(), crate::error::UsageError> {
    let refuse = |what: String| {
        crate::error::UsageError::new(format!(
            "berth's agent, run as root by {user} through sudo, does not {what}"
        ))
        .hint("a deploy user runs only the system verbs, on the host's own state: run it as root itself for the rest")
    };
    let defaults = [
        ("--state-dir", &args.state_dir, state::DEFAULT_DIR),
        ("--profile", &args.profile, SYSTEM_PROFILE),
        ("--manifest-dir", &args.manifest_dir, manifest::MANIFEST_DIR),
    ];
    for (flag, value, default) in defaults {
        if value.as_path() != std::path::Path::new(default) {
            return Err(refuse(format!(
                "take {flag} {} (only {default})",
                value.display()
            )));
        }
    }
    let verb = match &args.verb {
        Verb::Activate { .. }
        | Verb::Record { .. }
        | Verb::Watchdog { .. }
        | Verb::Confirm { .. }
        | Verb::Rollback { .. }
        | Verb::Show { .. }
        | Verb::BootCheck
        | Verb::Status { .. }
        | Verb::History { .. }
        | Verb::DryActivate { .. }
        | Verb::Serve { .. }
        | Verb::Fetch { .. }
        | Verb::Lock { service: None, .. } => return Ok(()),
        Verb::Lock { .. } => "lock a service (only the host)",
        Verb::AppDeploy { .. } => "run app-deploy",
        Verb::AppRollback { .. } => "run app-rollback",
        Verb::AppStatus { .. } => "run app-status",
        Verb::AppUnblock { .. } => "run app-unblock",
        Verb::AppScale { .. } => "run app-scale",
        Verb::AppChanged { .. } => "run app-changed",
        Verb::AppHistory { .. } => "run app-history",
        Verb::Snapshot { .. } => "take or list snapshots",
        Verb::Restore { .. } => "restore snapshots",
    };
    Err(refuse(verb.into()))
}

pub async fn run(_ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    // A dropped SSH session must not stop an activation or a rollback
    // half way. (Rust already ignores SIGPIPE; writes then fail quietly.)
    // SAFETY: setting a signal to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    if let Some(user) = escalated_by() {
        refuse_escalated(&args, &user)?;
    }
    let printer = Printer::new(true, false);
    if let Some(exit) = run_app(&args, printer).await? {
        return Ok(exit);
    }
    if let Some(exit) = run_peer(&args.verb, printer).await? {
        return Ok(exit);
    }
    let mut agent = Agent::open(&args.state_dir, &args.profile)?;
    let result = match args.verb {
        Verb::Activate {
            id,
            node,
            path,
            goal,
            confirm_timeout,
            activation_timeout,
            no_magic_rollback,
            actor,
            reason,
            ci_run_url,
            revision,
            expect_revision,
            signatures_on_stdin,
        } => {
            let signatures = signatures_from_stdin(signatures_on_stdin)?;
            let activation = Activation {
                id,
                node,
                path: StorePath::new(path)?,
                goal,
                confirm_timeout: Duration::from_secs(confirm_timeout),
                activation_timeout: Duration::from_secs(activation_timeout),
                magic_rollback: !no_magic_rollback,
                actor,
                reason,
                ci_run_url,
                revision,
                expect_revision,
                signatures,
            };
            agent.activate(&activation).await?
        }
        Verb::Record {
            id,
            node,
            path,
            revision,
            actor,
            reason,
            ci_run_url,
        } => {
            let audit = Audit {
                actor,
                reason,
                ci_run_url,
            };
            agent.record(&id, &node, &StorePath::new(path)?, &revision, &audit)?
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
        Verb::DryActivate {
            path,
            signatures_on_stdin,
        } => {
            let signatures = signatures_from_stdin(signatures_on_stdin)?;
            let dry = agent
                .dry_activate(&StorePath::new(path)?, &signatures)
                .await?;
            printer.event(EVENT_DRY_ACTIVATE, &dry);
            return Ok(if dry.refused.is_some() {
                Exit::FAILURE
            } else {
                Exit::SUCCESS
            });
        }
        Verb::AppDeploy { .. }
        | Verb::AppRollback { .. }
        | Verb::AppStatus { .. }
        | Verb::AppUnblock { .. }
        | Verb::AppScale { .. }
        | Verb::AppChanged { .. }
        | Verb::AppHistory { .. }
        | Verb::Snapshot { .. }
        | Verb::Restore { .. }
        | Verb::Lock { .. } => unreachable!("run_app handles the app verbs"),
        Verb::Serve { .. } | Verb::Fetch { .. } => unreachable!("run_peer handles them"),
    };
    printer.event(EVENT_RESULT, &result);
    Ok(exit_of(&result))
}

/// The fan-out verbs, which need no state: `serve` runs as the user SSH
/// logged in as (reading the store needs no root), `fetch` as root.
async fn run_peer(verb: &Verb, printer: Printer) -> anyhow::Result<Option<Exit>> {
    let log = crate::process::JobLog::new();
    match verb {
        Verb::Serve {
            path,
            listen,
            port,
            lifetime,
        } => {
            let options = peer::ServeOptions {
                listen: *listen,
                port: *port,
                lifetime: Duration::from_secs(*lifetime),
            };
            peer::serve(&StorePath::new(path.as_str())?, &options, &log, |serving| {
                printer.event(peer::EVENT_SERVING, serving)
            })
            .await?;
            Ok(Some(Exit::SUCCESS))
        }
        Verb::Fetch { from, trusted_key } => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("read the store paths on stdin")?;
            let paths = text
                .lines()
                .map(StorePath::new)
                .collect::<Result<Vec<_>, _>>()?;
            let config = std::path::Path::new(crate::agent::config::AGENT_CONFIG);
            let (keys, extra) =
                peer::fetch_keys(config, trusted_key.clone(), escalated_by().is_some())?;
            let fetched = peer::fetch(&paths, from, &keys, extra, &log).await?;
            printer.event(peer::EVENT_FETCHED, &fetched);
            Ok(Some(Exit::SUCCESS))
        }
        _ => Ok(None),
    }
}

/// A peer cache's URL: `http://…`, one word (Nix splits its substituters
/// on whitespace).
fn parse_peer_url(text: &str) -> Result<String, String> {
    if text.starts_with("http://") && !text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{}` is not a peer cache URL (http://ADDR:PORT/TOKEN)",
            crate::error::printable(text)
        ))
    }
}

/// The app verbs; `None` for a system verb.
async fn run_app(args: &Args, printer: Printer) -> anyhow::Result<Option<Exit>> {
    let open = |service: &str, overrides: &Overrides| -> anyhow::Result<AppAgent> {
        let manifest = Manifest::load(&args.manifest_dir, service, overrides)?;
        Ok(AppAgent::open(manifest, &args.state_dir)?)
    };
    let wait = |a: &AppAudit| Duration::from_secs(a.lock_wait);
    if matches!(
        args.verb,
        Verb::AppDeploy { .. } | Verb::AppRollback { .. } | Verb::Restore { .. }
    ) {
        crate::app::transaction::lead_process_group();
    }
    let result = match &args.verb {
        Verb::AppDeploy {
            service,
            id,
            revision,
            force,
            skip_superseded,
            skip_untouched,
            skip_snapshot,
            in_ci,
            allow_skip_snapshot_in_ci,
            dry_run,
            stage,
            audit,
            overrides,
        } => {
            // The guard, before the service's directory or lock is touched.
            let manifest = Manifest::load(&args.manifest_dir, service, overrides)?;
            crate::stage::check(
                &format!("service `{service}`"),
                &format!("berth.services.{service}.stage"),
                manifest.stage.as_ref(),
                stage.as_ref(),
            )?;
            if *skip_snapshot {
                crate::app::transaction::check_skip_snapshot(
                    &manifest,
                    SkipSnapshotGuard {
                        in_ci: *in_ci,
                        allowed_in_ci: *allow_skip_snapshot_in_ci,
                    },
                )?;
            }
            let mut agent = AppAgent::open(manifest, &args.state_dir)?;
            let request = DeployRequest {
                id: id.clone(),
                wanted: revision.wanted(),
                actor: audit.actor.clone(),
                reason: audit.reason.clone(),
                ci_run_url: audit.ci_run_url.clone(),
                lock_wait: wait(audit),
                force: *force,
                skip_superseded: *skip_superseded,
                skip_untouched: *skip_untouched,
                skip_snapshot: *skip_snapshot,
                dry_run: *dry_run,
            };
            if *dry_run {
                printer.event("plan", &agent.plan(&request).await?);
                return Ok(Some(Exit::SUCCESS));
            }
            agent.deploy(&request).await?
        }
        Verb::AppRollback {
            service,
            id,
            to,
            restore_data,
            audit,
            overrides,
        } => {
            let mut agent = open(service, overrides)?;
            agent
                .rollback(&RollbackRequest {
                    id: id.clone(),
                    to: to.clone(),
                    restore_data: *restore_data,
                    actor: audit.actor.clone(),
                    reason: audit.reason.clone(),
                    ci_run_url: audit.ci_run_url.clone(),
                    lock_wait: wait(audit),
                })
                .await?
        }
        Verb::AppScale {
            service,
            id,
            instances,
            audit,
            overrides,
        } => {
            open(service, overrides)?
                .scale(&ScaleRequest {
                    id: id.clone(),
                    instances: *instances,
                    actor: audit.actor.clone(),
                    reason: audit.reason.clone(),
                    ci_run_url: audit.ci_run_url.clone(),
                    lock_wait: wait(audit),
                })
                .await?
        }
        Verb::AppStatus { service, overrides } => {
            let status = open(service, overrides)?.status("status").await?;
            printer.event(EVENT_STATUS, &status);
            return Ok(Some(Exit::SUCCESS));
        }
        Verb::AppUnblock {
            service,
            rev,
            audit,
        } => {
            let cleared = open(service, &Overrides::default())?.unblock(rev, &audit.actor)?;
            printer.event(EVENT_UNBLOCKED, &cleared);
            return Ok(Some(Exit::SUCCESS));
        }
        Verb::AppChanged {
            service,
            from,
            to,
            overrides,
        } => {
            let changes = open(service, overrides)?
                .changed(from.as_deref(), to.as_deref())
                .await?;
            printer.event(EVENT_CHANGES, &changes);
            return Ok(Some(Exit::SUCCESS));
        }
        Verb::AppHistory {
            service,
            limit,
            overrides,
        } => {
            for d in open(service, overrides)?.history(*limit)? {
                printer.event(EVENT_DEPLOYMENT, &d);
            }
            return Ok(Some(Exit::SUCCESS));
        }
        Verb::Snapshot {
            action,
            service,
            audit,
            overrides,
        } => {
            let mut agent = open(service, overrides)?;
            match action {
                SnapshotAction::List => {
                    for s in agent.snapshots()? {
                        printer.event("snapshot", &s);
                    }
                    return Ok(Some(Exit::SUCCESS));
                }
                SnapshotAction::Create => {
                    match agent
                        .snapshot_create(&state::new_id(), &audit.actor, wait(audit))
                        .await?
                    {
                        Ok(s) => {
                            printer.event("snapshot", &s);
                            return Ok(Some(Exit::SUCCESS));
                        }
                        Err(busy) => busy,
                    }
                }
            }
        }
        Verb::Restore {
            service,
            snapshot,
            id,
            audit,
            overrides,
        } => {
            open(service, overrides)?
                .restore(id, snapshot, &audit.actor, wait(audit))
                .await?
        }
        Verb::Lock {
            action,
            service,
            owner,
            reason,
            wait,
        } => {
            return lock(
                args,
                *action,
                service.as_deref(),
                owner,
                reason.as_deref(),
                *wait,
                printer,
            )
            .await
            .map(Some)
        }
        _ => return Ok(None),
    };
    printer.event(EVENT_RESULT, &result);
    Ok(Some(app::exit_of(result.outcome)))
}

/// `agent lock`: a service's lock lives in its own state, the host's in
/// the agent's.
async fn lock(
    args: &Args,
    action: LockAction,
    service: Option<&str>,
    owner: &str,
    reason: Option<&str>,
    wait: u64,
    printer: Printer,
) -> anyhow::Result<Exit> {
    let (mut store, scope) = match service {
        Some(service) => {
            let manifest = Manifest::load(&args.manifest_dir, service, &Overrides::default())?;
            (
                state::Store::open(&manifest.layout().state())?,
                state::service_scope(service),
            )
        }
        None => (
            state::Store::open(&args.state_dir)?,
            state::HOST_SCOPE.to_owned(),
        ),
    };
    let what = state::scope_name(&scope);
    let (outcome, message, exit) = match action {
        LockAction::Status => match store.lock_holder(&scope)? {
            Some(h) => ("held", format!("{what} is locked by {h}"), Exit::SUCCESS),
            None => ("free", format!("{what} is not locked"), Exit::SUCCESS),
        },
        LockAction::Acquire => {
            let deadline = std::time::Instant::now() + Duration::from_secs(wait);
            loop {
                match store.hold(&scope, owner, reason) {
                    Ok(state::Acquired::New) => {
                        break (
                            "acquired",
                            format!("{what} is locked by {owner}"),
                            Exit::SUCCESS,
                        )
                    }
                    Ok(state::Acquired::AlreadyHeld) => {
                        break (
                            "acquired",
                            format!("{what} was already locked by {owner}"),
                            Exit::SUCCESS,
                        )
                    }
                    Err(state::LockError::Held { holder }) => {
                        if std::time::Instant::now() >= deadline {
                            break if wait == 0 {
                                ("held", format!("{what} is locked by {holder}"), Exit::HELD)
                            } else {
                                (
                                    "timed_out",
                                    format!(
                                        "{what} is still locked by {holder} after waiting {wait}s"
                                    ),
                                    Exit::TIMED_OUT,
                                )
                            };
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        LockAction::Release => match store.release(&scope, owner) {
            Ok(state::Released::Released) => {
                ("released", format!("{what} is unlocked"), Exit::SUCCESS)
            }
            Ok(state::Released::NotHeld) => {
                ("free", format!("{what} was not locked"), Exit::SUCCESS)
            }
            Err(e @ state::LockError::NotHolder { .. }) => {
                ("refused", e.to_string(), Exit::ATTENTION)
            }
            Err(e) => return Err(e.into()),
        },
    };
    if scope == state::HOST_SCOPE && !matches!(action, LockAction::Status) {
        state::publish_host_lock(&args.state_dir, store.lock_holder(&scope)?.as_ref())
            .context("could not publish the host's lock")?;
    }
    printer.event(
        "lock",
        &serde_json::json!({
            "scope": scope,
            "outcome": outcome,
            "message": message,
            "holder": store.lock_holder(&scope)?,
        }),
    );
    Ok(exit)
}

/// The signed paths the deployer sent on stdin (`--signatures-on-stdin`),
/// none without it.
fn signatures_from_stdin(given: bool) -> anyhow::Result<Vec<SignedPath>> {
    if !given {
        return Ok(Vec::new());
    }
    let mut input = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
        .context("could not read the signatures on stdin")?;
    serde_json::from_slice(&input)
        .context("the signatures on stdin are not a JSON list of signed paths")
}

fn exit_of(result: &AgentResult) -> Exit {
    match result.outcome {
        Outcome::Pending | Outcome::Confirmed | Outcome::Unchanged => Exit::SUCCESS,
        Outcome::RolledBack | Outcome::Failed | Outcome::Busy | Outcome::TimedOut => Exit::FAILURE,
        Outcome::RollbackFailed => Exit::ATTENTION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: Args,
    }

    fn parse(words: &[&str]) -> Args {
        Wrap::try_parse_from(std::iter::once("agent").chain(words.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn through_sudo_only_the_system_verbs_on_the_hosts_own_state() {
        for ok in [
            &["status", "--node", "web1"][..],
            &[
                "activate",
                "--id",
                "20260101T000000Z-abcd",
                "--node",
                "w",
                "--path",
                "/nix/store/x",
                "--actor",
                "a",
            ],
            &["confirm", "--id", "20260101T000000Z-abcd"],
            &["lock", "acquire"],
            &["dry-activate", "--path", "/nix/store/x"],
        ] {
            let args = parse(ok);
            assert!(refuse_escalated(&args, "deploy").is_ok(), "{ok:?} refused");
        }
        for (bad, said) in [
            (
                &["status", "--node", "w", "--state-dir", "/tmp/mine"][..],
                "take --state-dir /tmp/mine",
            ),
            (
                &["status", "--node", "w", "--profile", "/home/deploy/p"],
                "take --profile",
            ),
            (
                &["history", "--manifest-dir", "/tmp/m"],
                "take --manifest-dir",
            ),
            (&["lock", "acquire", "--service", "notes"], "lock a service"),
            (&["app-status", "--service", "notes"], "run app-status"),
        ] {
            let err = refuse_escalated(&parse(bad), "deploy").unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("run as root by deploy through sudo"),
                "{text}"
            );
            assert!(text.contains(said), "{bad:?}: {text}");
        }
    }
}
