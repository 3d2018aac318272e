//! `berth converge`: pull mode, run on the host itself by the `berth.agent`
//! timer. Resolves the flake ref to a revision, honours the pause sentinel,
//! skips blocked revisions (and, optionally, ones whose CI is not green),
//! builds the node here and deploys it through the agent with the same
//! activation, health checks and rollback as a push deploy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::agent::call::Audit;
use crate::agent::system::Goal;
use crate::context::Context;
use crate::deploy::{self, Job, Options, Outcome};
use crate::env;
use crate::error::{Exit, UsageError};
use crate::flake::{self, NodeName};
use crate::host::{Host, LocalHost};
use crate::nix::StorePath;
use crate::process::{Cmd, CommandError, JobLog, Output};
use crate::progress::Progress;
use crate::state;

/// How long a pause file that says nothing readable holds.
const FORGOTTEN_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The flake the host follows (`git+file://…`, `path:…`, `github:…`)
    #[arg(long, value_name = "FLAKE_REF", required_unless_present_any = ["pause", "resume"])]
    pub flake: Option<String>,
    /// This host's node in the flake
    #[arg(long, value_name = "NODE", required_unless_present_any = ["pause", "resume"])]
    pub node: Option<String>,
    /// The agent's state directory
    #[arg(long, value_name = "DIR", env = env::BERTH_STATE_DIR, default_value = state::DEFAULT_DIR)]
    pub state_dir: PathBuf,
    /// The pause sentinel [default: STATE_DIR/converge-paused]
    #[arg(long, value_name = "PATH")]
    pub pause_file: Option<PathBuf>,
    /// Only deploy a revision whose GitHub checks in this repository passed
    #[arg(long, value_name = "OWNER/NAME")]
    pub require_ci: Option<String>,
    /// How long `--require-ci` waits for pending checks before skipping this run
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        requires = "require_ci"
    )]
    pub ci_timeout: u64,
    /// Seconds the host waits for confirmation before rolling back (default: the node's confirmTimeout)
    #[arg(long, value_name = "SECS")]
    pub confirm_timeout: Option<u64>,
    /// Seconds switch-to-configuration may run before the host stops it and rolls back
    /// (default: the node's activationTimeout)
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub activation_timeout: Option<u64>,
    /// Sign the system built here with this secret key before activating it: needed when the
    /// host requires signatures (`berth.agent.trustedPublicKeys`), since a system built on the
    /// host is not signed
    #[arg(long, value_name = "FILE", env = env::BERTH_SIGN_KEY)]
    pub sign_key: Option<PathBuf>,
    /// Pause converging (write the pause sentinel) and exit
    #[arg(long, conflicts_with = "resume")]
    pub pause: bool,
    /// With `--pause`: for how many seconds
    #[arg(
        long = "for",
        value_name = "SECS",
        default_value_t = 86400,
        requires = "pause"
    )]
    pub pause_for: u64,
    /// With `--pause`: why, shown by every skipped run
    #[arg(long, requires = "pause")]
    pub reason: Option<String>,
    /// Resume converging (remove the pause sentinel) and exit
    #[arg(long)]
    pub resume: bool,
}

/// What the pause sentinel holds.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pause {
    /// Unix seconds.
    pub until: i64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub by: Option<String>,
}

/// Reads the pause sentinel: `None` when there is none. A file that is
/// empty or unreadable as JSON holds for [`FORGOTTEN_PAUSE`] from its
/// mtime, so a forgotten `touch` expires.
fn read_pause(path: &Path) -> anyhow::Result<Option<Pause>> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("could not read {}", path.display())),
    };
    Ok(Some(match serde_json::from_slice::<Pause>(&text) {
        Ok(pause) => pause,
        Err(_) => {
            let mtime = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .map(unix)
                .unwrap_or_else(|_| unix(SystemTime::now()));
            Pause {
                until: mtime + FORGOTTEN_PAUSE.as_secs() as i64,
                reason: None,
                by: None,
            }
        }
    }))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// This machine, with the agent's state directory passed to every command.
struct Here {
    inner: LocalHost,
    name: String,
    state_dir: PathBuf,
}

#[async_trait]
impl Host for Here {
    fn name(&self) -> &str {
        &self.name
    }

    fn log(&self) -> &JobLog {
        self.inner.log()
    }

    async fn output(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        let cmd = cmd.clone().env(env::BERTH_STATE_DIR, &self.state_dir);
        self.inner.output(&cmd).await
    }

    async fn copy_closure(&self, _paths: &[StorePath]) -> Result<(), CommandError> {
        Ok(())
    }

    async fn copy_derivations(&self, _drvs: &[StorePath]) -> Result<(), CommandError> {
        Ok(())
    }
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let printer = ctx.printer;
    let pause_file = args
        .pause_file
        .clone()
        .unwrap_or_else(|| args.state_dir.join("converge-paused"));
    let now = unix(SystemTime::now());
    if args.pause {
        let pause = Pause {
            until: now + args.pause_for as i64,
            reason: args.reason.clone(),
            by: Some(deploy_actor()),
        };
        if let Some(dir) = pause_file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        std::fs::write(&pause_file, serde_json::to_vec(&pause)?)
            .with_context(|| format!("could not write {}", pause_file.display()))?;
        printer.line(format!(
            "converge paused until {}",
            state::utc_time(pause.until)
        ));
        printer.event("pause", &pause);
        return Ok(Exit::SUCCESS);
    }
    if args.resume {
        match std::fs::remove_file(&pause_file) {
            Ok(()) => printer.line("converge resumed"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                printer.line("converge was not paused")
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("could not remove {}", pause_file.display()))
            }
        }
        return Ok(Exit::SUCCESS);
    }
    let (Some(flake_ref), Some(node)) = (args.flake.as_deref(), args.node.as_deref()) else {
        return Err(UsageError::new("converge needs --flake and --node").into());
    };
    let node = NodeName::new(node).map_err(|e| UsageError::new(e.to_string()))?;
    if let Some(key) = &args.sign_key {
        super::deploy::check_sign_key(key)?;
    }
    let report = |outcome: &str, revision: Option<&str>, message: &str| {
        printer.line(message);
        printer.event(
            "converge",
            &serde_json::json!({
                "outcome": outcome,
                "node": node.as_ref(),
                "revision": revision,
                "message": message,
            }),
        );
    };

    // Paused?
    if let Some(pause) = read_pause(&pause_file)? {
        if pause.until > now {
            let mut message = format!("paused until {}", state::utc_time(pause.until));
            if let Some(by) = &pause.by {
                message.push_str(&format!(", by {by}"));
            }
            message.push_str(&format!(
                ": {}",
                pause.reason.as_deref().unwrap_or("no reason given")
            ));
            report("paused", None, &message);
            return Ok(Exit::SUCCESS);
        }
        std::fs::remove_file(&pause_file)
            .with_context(|| format!("could not remove {}", pause_file.display()))?;
        printer.line(format!(
            "the pause ended at {}; removed {}",
            state::utc_time(pause.until),
            pause_file.display()
        ));
    }

    // Which revision?
    printer.line(format!("fetching {flake_ref}"));
    let source = flake::resolve(flake_ref).await?;
    let revision = source.version();

    // Blocked?
    let service = format!("system:{node}");
    let store = state::Store::open(&args.state_dir)?;
    if let Some(blocked) = store.blocked(&service, revision)? {
        report(
            "blocked",
            Some(revision),
            &format!(
                "revision {revision} is blocked: deployment {} failed ({}); skipping",
                blocked.deployment_id.as_deref().unwrap_or("?"),
                blocked.reason.as_deref().unwrap_or("no reason recorded")
            ),
        );
        return Ok(Exit::SUCCESS);
    }

    // Already there? Then there is no CI to ask and nothing to build: the
    // host runs the system a deploy of this commit recorded.
    if let Some(commit) = &source.revision {
        let agent = crate::agent::system::Agent::open(
            &args.state_dir,
            Path::new(crate::nix::SYSTEM_PROFILE),
        )?;
        if agent.status(node.as_ref())?.revision.as_ref() == Some(commit) {
            report(
                "unchanged",
                Some(revision),
                &format!("{node} already runs {revision}"),
            );
            return Ok(Exit::SUCCESS);
        }
    }

    // Green CI?
    if let Some(repo) = &args.require_ci {
        if source.revision.is_none() {
            return Err(UsageError::new(format!(
                "--require-ci needs a commit, but {flake_ref} has none (it is {revision})"
            ))
            .hint("follow a git flake (`git+file://…`, `github:…`) with a clean tree")
            .into());
        }
        let repo = crate::github::Repo::parse(repo)?;
        let sha = crate::github::Sha::parse(revision)?;
        let opts = crate::github::GateOptions {
            require: Vec::new(),
            timeout: Duration::from_secs(args.ci_timeout),
            interval: Duration::from_secs(5),
        };
        let gate = crate::github::gate(&repo, &sha, &opts, printer).await?;
        match gate.outcome {
            crate::github::Outcome::Passed => {}
            crate::github::Outcome::Failed => {
                report("skipped", Some(revision), &gate.reason());
                return Ok(Exit::FAILURE);
            }
            crate::github::Outcome::TimedOut => {
                report(
                    "skipped",
                    Some(revision),
                    &format!("{}; the next run tries again", gate.reason()),
                );
                return Ok(Exit::SUCCESS);
            }
        }
    }

    // Build here.
    let locked = source.locked.as_str();
    printer.line(format!("evaluating {flake_ref} at {revision}"));
    let nodes = flake::evaluate(locked, Some(&node)).await?;
    let mut selected = flake::select(&nodes, Some(&node), None)?;
    let meta = selected.remove(0);
    printer.line(format!("building {node}"));
    let built = flake::build(locked, std::slice::from_ref(&meta.name))
        .await?
        .remove(0);
    if let Some(key) = &args.sign_key {
        printer.line(format!("signing {node} with {}", key.display()));
        let cmd = crate::nix::sign(key, std::slice::from_ref(&built.out), None);
        crate::process::output(
            &cmd,
            crate::process::Via::Local,
            &crate::process::JobLog::new(),
        )
        .await?
        .check()?;
    }

    // Deploy through the agent, as a push deploy does.
    let options = Options {
        goal: Goal::Switch,
        confirm_timeout: args.confirm_timeout.map(Duration::from_secs),
        activation_timeout: args.activation_timeout.map(Duration::from_secs),
        magic_rollback: true,
        agent: ctx.agent.clone(),
        audit: Audit {
            actor: format!("converge@{}", hostname()),
            reason: Some(format!("converge {revision}")),
            ci_run_url: None,
        },
        ssh: ctx.ssh.clone(),
        revision: source.revision.clone(),
        sign_key: None,
        fan_out: false,
    };
    let job = Job {
        node: meta.name,
        settings: meta.settings,
        toplevel: built.out,
        drv: None,
        built_on: None,
        expect_revision: None,
    };
    let here = Here {
        inner: LocalHost::new(),
        name: hostname(),
        state_dir: args.state_dir.clone(),
    };
    let progress = Progress::new(printer);
    let line = progress.host(node.as_ref());
    let result = deploy::deploy_here(&job, &Arc::new(options), &here, printer, &line).await;
    for log in &result.log {
        printer.line(format!("  | {log}"));
    }
    let deployment = result.deployment.clone().unwrap_or_default();
    let (outcome, exit) = match &result.outcome {
        Outcome::Deployed { .. } => ("deployed", Exit::SUCCESS),
        Outcome::Unchanged { .. } => ("unchanged", Exit::SUCCESS),
        Outcome::RolledBack { why } => {
            store.block(&service, revision, &deployment, why)?;
            ("failed", Exit::FAILURE)
        }
        Outcome::NeedsAttention { why } => {
            store.block(&service, revision, &deployment, why)?;
            ("failed", Exit::ATTENTION)
        }
        Outcome::Failed { .. } | Outcome::Skipped { .. } => ("failed", Exit::FAILURE),
    };
    let mut message = format!("{node} at {revision}: {}", result.outcome.describe());
    if matches!(
        result.outcome,
        Outcome::RolledBack { .. } | Outcome::NeedsAttention { .. }
    ) {
        message.push_str("; the revision is blocked");
    }
    report(outcome, Some(revision), &message);
    Ok(exit)
}

/// Who pauses: `$USER@<hostname>`.
fn deploy_actor() -> String {
    super::deploy::audit(None).actor
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paused");
        assert_eq!(read_pause(&path).unwrap(), None);
        std::fs::write(&path, r#"{"until":5,"reason":"x","by":"me"}"#).unwrap();
        assert_eq!(read_pause(&path).unwrap().unwrap().until, 5);
        // A bare file holds for a day from its mtime.
        std::fs::write(&path, "").unwrap();
        let until = read_pause(&path).unwrap().unwrap().until;
        let now = unix(SystemTime::now());
        assert!((until - now - 86400).abs() < 5, "{until} vs {now}");
    }
}
