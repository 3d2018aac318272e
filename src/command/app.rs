//! `berth app deploy|rollback|status|history`: apps whose code lives in
//! git, deployed on their host by the agent as one transaction (see
//! docs/app.md). Also what `berth lock` and `berth snapshot` share: reaching
//! a service's host as its user and running an agent verb there.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::agent::{
    AgentResult, Outcome, EVENT_DEPLOYMENT, EVENT_PHASE, EVENT_RESULT, EVENT_STATUS, EVENT_WARNING,
};
use crate::app::changes::Changes;
use crate::app::manifest::{Overrides, ServiceName};
use crate::app::release::{self, Wanted};
use crate::app::transaction::{EVENT_CHANGES, EVENT_UNBLOCKED};
use crate::context::Context;
use crate::error::{Exit, RemoteError, UsageError};
use crate::host::{Destination, Host, SshHost};
use crate::output::Printer;
use crate::process::{Cmd, Stream};
use crate::state::{self, Deployment};

#[derive(Debug, clap::Subcommand)]
pub enum AppCommand {
    /// Deploy an exact revision: build it beside the running one, snapshot the data, swap,
    /// check health; on failure restore the data and the previous release
    Deploy(Box<DeployArgs>),
    /// Go back to the previous (or a named) kept release, without rebuilding
    Rollback(RollbackArgs),
    /// What the service runs, its unit, its releases, its last deploy and its blocked revisions
    Status(StatusArgs),
    /// Let a revision blocked after a failed deploy be deployed again without --force
    Unblock(UnblockArgs),
    /// Start or stop instances of a service (`berth.services.<name>.instances`) until COUNT
    /// run; the count holds until the service's next deploy or the host's next boot
    Scale(ScaleArgs),
    /// Past deploys of the service, newest first
    History(HistoryArgs),
    /// Whether a range of commits touches each service (its `paths`), and whether only its
    /// docs or tests
    Changed(ChangedArgs),
}

/// A service on a host: `SERVICE --host HOST [--user USER]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// The service, as `berth.services.<name>` declares it
    #[arg(value_name = "SERVICE")]
    pub service: ServiceName,
    #[command(flatten)]
    pub host: HostArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// The host, as an SSH destination ([user@]host)
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// Who to connect as [default: the service's own user, or root for the host]
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

/// Exactly one of `--rev`, `--ref`, `--tag`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct RevisionArgs {
    /// The exact commit to deploy (what CI tested)
    #[arg(long, value_name = "SHA", value_parser = release::parse_rev)]
    pub rev: Option<String>,
    /// A branch: its tip when the host fetches
    #[arg(long = "ref", value_name = "BRANCH", value_parser = release::parse_name)]
    pub branch: Option<String>,
    /// A tag
    #[arg(long, value_name = "TAG", value_parser = release::parse_name)]
    pub tag: Option<String>,
}

impl RevisionArgs {
    pub fn wanted(&self) -> Wanted {
        match (&self.rev, &self.branch, &self.tag) {
            (Some(r), _, _) => Wanted::Rev(r.clone()),
            (_, Some(b), _) => Wanted::Ref(b.clone()),
            (_, _, Some(t)) => Wanted::Tag(t.clone()),
            // clap's group makes one of them required.
            (None, None, None) => Wanted::Ref("main".into()),
        }
    }

    pub fn to_args(&self) -> Vec<String> {
        match self.wanted() {
            Wanted::Rev(r) => vec!["--rev".into(), r],
            Wanted::Ref(b) => vec!["--ref".into(), b],
            Wanted::Tag(t) => vec!["--tag".into(), t],
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    #[command(flatten)]
    pub revision: RevisionArgs,
    /// Wait this long for the service's lock before giving up
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub lock_wait: u64,
    /// Deploy a revision that was rolled back before, or one not on the service's branch
    #[arg(long)]
    pub force: bool,
    /// Do nothing (and exit 0) when the service already runs a revision that contains this one
    #[arg(long)]
    pub skip_superseded: bool,
    /// Do nothing (and exit 0) when no file of the service's `paths` changed between the
    /// revision it runs and this one
    #[arg(long)]
    pub skip_untouched: bool,
    /// Take no snapshot of the data before the service is touched: a failed deploy then puts
    /// the previous release back but NOT the data. Warns, naming the data; recorded in the
    /// history; refused in CI (`CI` set) unless allowed
    #[arg(long)]
    pub skip_snapshot: bool,
    /// Let --skip-snapshot run in CI (else the service's `allowSkipSnapshot` must allow it)
    #[arg(long, requires = "skip_snapshot")]
    pub allow_skip_snapshot_in_ci: bool,
    /// Resolve the revision and show what would happen; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// First wait for the GitHub checks of `--rev` (a full SHA) in this repository to pass, as
    /// `berth ci-gate` does; deploy nothing if they fail
    #[arg(long, value_name = "OWNER/NAME")]
    pub ci_gate: Option<String>,
    /// Why (recorded in the history)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Tell this webhook how the deploy went (Discord, Slack or generic JSON); repeatable
    #[arg(long, value_name = "URL")]
    pub notify: Vec<String>,
    /// Deploy only if the service's manifest declares this stage (`berth.services.<name>.stage`);
    /// refuse, before anything changes, a service that declares another stage or none
    #[arg(long, value_name = "STAGE", env = crate::env::BERTH_STAGE, value_parser = crate::stage::parse_stage)]
    pub stage: Option<crate::stage::Stage>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// The release to go to [default: the one the current release replaced]
    #[arg(long, value_name = "SHA")]
    pub to: Option<String>,
    /// Also restore the data snapshot taken before the current release was deployed
    #[arg(long)]
    pub restore_data: bool,
    /// Wait this long for the service's lock before giving up
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub lock_wait: u64,
}

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// How many instances to run: 1 to the service's maxInstances (at most 32)
    #[arg(value_name = "COUNT", value_parser = crate::app::manifest::parse_instances)]
    pub instances: u32,
    /// Wait this long for the service's lock before giving up
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub lock_wait: u64,
    /// Why (recorded in the history)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// Wait for a deploy in progress to end (re-attach after a dropped connection), then show
    /// how it ended
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, clap::Args)]
pub struct UnblockArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// The blocked revision (as `berth app status` lists it, or the start of its hash)
    #[arg(long, value_name = "SHA", value_parser = release::parse_rev)]
    pub rev: String,
}

#[derive(Debug, clap::Args)]
pub struct ChangedArgs {
    /// The services, as `berth.services.<name>` declares them
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<ServiceName>,
    #[command(flatten)]
    pub host: HostArgs,
    /// Compare from this commit [default: the revision each service runs]
    #[arg(long, value_name = "SHA", value_parser = release::parse_rev)]
    pub from: Option<String>,
    /// Compare to this commit [default: the head of each service's branch]
    #[arg(long, value_name = "SHA", value_parser = release::parse_rev)]
    pub to: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// How many deploys
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub async fn run(ctx: &Context, command: AppCommand) -> anyhow::Result<Exit> {
    match command {
        AppCommand::Deploy(args) => deploy(ctx, *args).await,
        AppCommand::Rollback(args) => rollback(ctx, args).await,
        AppCommand::Status(args) => status(ctx, args).await,
        AppCommand::Unblock(args) => unblock(ctx, args).await,
        AppCommand::Scale(args) => scale(ctx, args).await,
        AppCommand::History(args) => history(ctx, args).await,
        AppCommand::Changed(args) => changed(ctx, args).await,
    }
}

/// The agent program for app commands: `--agent`, else `berth` on the
/// host's PATH (the NixOS module installs it). A service's user cannot add
/// to the host's Nix store, so nothing is copied.
pub fn program(ctx: &Context) -> String {
    match ctx.agent.closure {
        Some(_) => "berth".into(),
        None => ctx.agent.program.clone(),
    }
}

/// `<agent> agent VERB --service SERVICE`.
pub fn agent(ctx: &Context, verb: &str, service: Option<&str>) -> Cmd {
    let cmd = Cmd::new(program(ctx)).args(["agent", verb]);
    match service {
        Some(s) => cmd.args(["--service", s]),
        None => cmd,
    }
}

/// Connects to `host` as `user` (unless the host names one).
pub async fn connect(
    ctx: &Context,
    host: &HostArgs,
    default_user: &str,
) -> anyhow::Result<SshHost> {
    let text = if host.host.contains('@') {
        host.host.clone()
    } else {
        format!(
            "{}@{}",
            host.user.as_deref().unwrap_or(default_user),
            host.host
        )
    };
    let destination = Destination::parse(&text).map_err(|e| UsageError::new(e.to_string()))?;
    Ok(SshHost::connect(&destination, &ctx.ssh).await?)
}

/// What an agent verb left: its result (if it got that far) and events.
pub struct AgentRun {
    pub result: Option<AgentResult>,
    pub stdout: Vec<u8>,
}

/// Runs an agent verb, showing its phases as they come (and passing its
/// events on with `--json`). An agent that fails before a result becomes
/// the error it printed.
pub async fn run_agent(ctx: &Context, host: &SshHost, cmd: &Cmd) -> anyhow::Result<AgentRun> {
    let printer = ctx.printer;
    let name = host.name().to_owned();
    host.log().watch(move |stream, line| {
        if stream == Stream::Stdout {
            show_event(printer, &name, line);
        }
    });
    let out = host
        .output(cmd)
        .await
        .with_context(|| format!("could not run the berth agent on {}", host.name()))?;
    let result = crate::agent::find_result(&out.stdout);
    if result.is_none() && !out.status.success() {
        return Err(RemoteError::from_agent(host.name(), &out.stderr, out.status.code()).into());
    }
    Ok(AgentRun {
        result,
        stdout: out.stdout,
    })
}

/// Renders one line of the agent's stdout.
fn show_event(printer: Printer, host: &str, line: &str) {
    let Ok(serde_json::Value::Object(mut event)) = serde_json::from_str(line) else {
        return;
    };
    let Some(serde_json::Value::String(name)) = event.remove("event") else {
        return;
    };
    if name == EVENT_PHASE {
        let field = |k: &str| event.get(k).and_then(|v| v.as_str()).unwrap_or("");
        printer.line(format!("{host}: {}: {}", field("phase"), field("message")));
    }
    if name == EVENT_WARNING {
        let message = event.get("message").and_then(|v| v.as_str()).unwrap_or("");
        printer.warn(format!("{host}: {message}"));
    }
    if name == crate::app::transaction::EVENT_RECOVERED {
        let message = event.get("message").and_then(|v| v.as_str()).unwrap_or("");
        printer.line(format!(
            "{host}: recovered an interrupted deploy: {message}"
        ));
    }
    // The result is shown by the command, once.
    if name != EVENT_RESULT {
        printer.event(&name, &event);
    }
}

/// The exit code of an agent's result (docs/cli.md).
pub fn exit_of(outcome: Outcome) -> Exit {
    match outcome {
        Outcome::Pending | Outcome::Confirmed | Outcome::Unchanged => Exit::SUCCESS,
        Outcome::RolledBack | Outcome::Failed => Exit::FAILURE,
        Outcome::Busy => Exit::HELD,
        Outcome::RollbackFailed => Exit::ATTENTION,
        Outcome::TimedOut => Exit::TIMED_OUT,
    }
}

/// Shows a result and returns its exit code.
fn report(ctx: &Context, what: &str, result: &AgentResult, started: Instant) -> Exit {
    ctx.printer.event(EVENT_RESULT, result);
    let seconds = started.elapsed().as_secs_f64();
    let text = match result.outcome {
        Outcome::Confirmed | Outcome::Pending => format!("{what}: done: {}", result.message),
        Outcome::Unchanged => format!("{what}: unchanged: {}", result.message),
        Outcome::RolledBack => format!("{what}: FAILED, rolled back: {}", result.message),
        Outcome::Failed => format!("{what}: FAILED: {}", result.message),
        Outcome::RollbackFailed => format!("{what}: NEEDS ATTENTION: {}", result.message),
        Outcome::Busy | Outcome::TimedOut => format!("{what}: not started: {}", result.message),
    };
    ctx.printer.line(format!("{text} [{seconds:.1}s]"));
    exit_of(result.outcome)
}

fn audit_args(cmd: Cmd, reason: Option<String>) -> Cmd {
    let audit = super::deploy::audit(reason);
    let mut cmd = cmd.args(["--actor", &audit.actor]);
    if let Some(reason) = &audit.reason {
        cmd = cmd.args(["--reason", reason]);
    }
    if let Some(url) = &audit.ci_run_url {
        cmd = cmd.args(["--ci-run-url", url]);
    }
    cmd
}

async fn deploy(ctx: &Context, args: DeployArgs) -> anyhow::Result<Exit> {
    if let Some(repo) = &args.ci_gate {
        let sha = super::ci_gate::app_sha(args.revision.rev.as_deref())?;
        if let Some(exit) = super::ci_gate::before_deploy(ctx, repo, &sha).await? {
            return Ok(exit);
        }
    }
    let started = Instant::now();
    let service = &args.target.service;
    let host = connect(ctx, &args.target.host, service).await?;
    let id = state::new_id();
    let mut cmd = agent(ctx, "app-deploy", Some(service))
        .args(["--id", &id])
        .args(args.revision.to_args())
        .args(["--lock-wait", &args.lock_wait.to_string()])
        .args(args.overrides.to_args());
    if args.force {
        cmd = cmd.arg("--force");
    }
    if args.skip_superseded {
        cmd = cmd.arg("--skip-superseded");
    }
    if args.skip_untouched {
        cmd = cmd.arg("--skip-untouched");
    }
    if args.skip_snapshot {
        cmd = cmd.arg("--skip-snapshot");
        if crate::env::is_ci(std::env::var(crate::env::CI).ok().as_deref()) {
            cmd = cmd.arg("--in-ci");
        }
        if args.allow_skip_snapshot_in_ci {
            cmd = cmd.arg("--allow-skip-snapshot-in-ci");
        }
    }
    if args.dry_run {
        cmd = cmd.arg("--dry-run");
    }
    if let Some(stage) = &args.stage {
        cmd = cmd.args(["--stage", stage.as_str()]);
    }
    let cmd = audit_args(cmd, args.reason.clone());
    let what = format!("{service} on {}", host.name());
    ctx.printer.line(format!(
        "{what}: deploying {} (deploy {id})",
        args.revision.wanted()
    ));
    let run = run_agent(ctx, &host, &cmd).await;
    let _ = host.close().await;
    let run = run?;
    if args.dry_run {
        for plan in crate::agent::find_events(&run.stdout, "plan") {
            ctx.printer.event("plan", &plan);
            ctx.printer.line(describe_plan(&plan));
        }
        return Ok(Exit::SUCCESS);
    }
    let result = run
        .result
        .context("the agent ended without saying how the deploy went")?;
    let exit = report(ctx, &what, &result, started);
    let urls = crate::notify::merge(&args.notify, &[]);
    if !urls.is_empty() {
        let note = crate::notify::of_app(
            service,
            &args.target.host.host,
            &result,
            &run.stdout,
            started.elapsed(),
            super::deploy::audit(None).ci_run_url,
        );
        let results = crate::notify::send(&urls, &note).await;
        crate::notify::show(ctx.printer, &what, &results);
    }
    Ok(exit)
}

fn describe_plan(plan: &serde_json::Value) -> String {
    let s = |k: &str| plan[k].as_str().unwrap_or("nothing").to_owned();
    if plan["unchanged"] == true {
        return format!(
            "{} already runs {}: a deploy would change nothing",
            s("service"),
            s("to")
        );
    }
    let mut text = format!("would deploy {} → {}", s("from"), s("to"));
    if plan["build"] == true {
        text.push_str(", building the release");
    }
    let count = |key: &str| plan[key].as_array().map_or(0, Vec::len);
    let mut dbs = format!("{} SQLite database(s)", count("databases"));
    if count("postgres") > 0 {
        dbs.push_str(&format!(
            " and {} PostgreSQL database(s)",
            count("postgres")
        ));
    }
    if plan["skip_snapshot"] == true {
        text.push_str(&format!(", NOT snapshotting its {dbs} (--skip-snapshot)"));
    } else {
        text.push_str(&format!(", snapshotting {dbs}"));
    }
    if let Some(m) = plan["migrate"].as_str() {
        text.push_str(&format!(", migrating with `{m}`"));
    }
    if let Ok(c) = serde_json::from_value::<Changes>(plan["changes"].clone()) {
        text.push_str(&format!("; {}", c.describe()));
    }
    if plan["lock"].is_object() {
        text.push_str(&format!(
            "; but the lock is held by {}",
            plan["lock"]["owner"].as_str().unwrap_or("someone")
        ));
    }
    text
}

async fn rollback(ctx: &Context, args: RollbackArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let service = &args.target.service;
    let host = connect(ctx, &args.target.host, service).await?;
    let id = state::new_id();
    let mut cmd = agent(ctx, "app-rollback", Some(service))
        .args(["--id", &id])
        .args(["--lock-wait", &args.lock_wait.to_string()]);
    if let Some(to) = &args.to {
        cmd = cmd.args(["--to", to]);
    }
    if args.restore_data {
        cmd = cmd.arg("--restore-data");
    }
    let cmd = audit_args(cmd, None);
    let what = format!("{service} on {}", host.name());
    let run = run_agent(ctx, &host, &cmd).await;
    let _ = host.close().await;
    let result = run?
        .result
        .context("the agent ended without saying how the rollback went")?;
    Ok(report(ctx, &what, &result, started))
}

async fn scale(ctx: &Context, args: ScaleArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let service = &args.target.service;
    let host = connect(ctx, &args.target.host, service).await?;
    let id = state::new_id();
    let cmd = agent(ctx, "app-scale", Some(service))
        .args(["--id", &id])
        .args(["--instances", &args.instances.to_string()])
        .args(["--lock-wait", &args.lock_wait.to_string()]);
    let cmd = audit_args(cmd, args.reason.clone());
    let what = format!("{service} on {}", host.name());
    ctx.printer.line(format!(
        "{what}: scaling to {} instance(s) (scale {id})",
        args.instances
    ));
    let run = run_agent(ctx, &host, &cmd).await;
    let _ = host.close().await;
    let result = run?
        .result
        .context("the agent ended without saying how the scale went")?;
    Ok(report(ctx, &what, &result, started))
}

async fn status(ctx: &Context, args: StatusArgs) -> anyhow::Result<Exit> {
    let service = &args.target.service;
    let cmd = agent(ctx, "app-status", Some(service));
    let mut announced = None;
    loop {
        // A fresh connection each time: following means outliving a
        // dropped one.
        let status = match status_once(ctx, &args.target, &cmd).await {
            Ok(s) => s,
            Err(err) if args.follow => {
                tracing::info!("{err:#}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        if let Some(r) = status.get("recovered").filter(|r| r.is_object()) {
            ctx.printer.line(format!(
                "{service}: recovered an interrupted deploy: {}",
                r["message"].as_str().unwrap_or("")
            ));
        }
        let active: Option<Deployment> = serde_json::from_value(status["active"].clone()).ok();
        match active {
            Some(d) if args.follow => {
                if announced.as_ref() != Some(&d.id) {
                    ctx.printer.line(format!(
                        "{service}: deploy {} ({} → {}) is in progress; waiting",
                        d.id,
                        d.from_path.as_deref().unwrap_or("nothing"),
                        d.to_path
                    ));
                    announced = Some(d.id.clone());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => {
                ctx.printer.event(EVENT_STATUS, &status);
                show_status(ctx.printer, service, &status);
                let last: Option<Deployment> = serde_json::from_value(status["last"].clone()).ok();
                return Ok(match (&announced, last) {
                    // Following a deploy: its outcome is the exit code.
                    (Some(_), Some(d)) => exit_of(d.status.into()),
                    _ => Exit::SUCCESS,
                });
            }
        }
    }
}

async fn status_once(
    ctx: &Context,
    target: &ServiceArgs,
    cmd: &Cmd,
) -> anyhow::Result<serde_json::Value> {
    query(ctx, target, cmd, EVENT_STATUS)
        .await?
        .into_iter()
        .next()
        .context("the agent did not report a status")
}

/// Runs an agent verb that only reads, over a connection of its own as the
/// service's user, and returns its events named `event`. An agent that
/// fails becomes the error it printed.
async fn query(
    ctx: &Context,
    target: &ServiceArgs,
    cmd: &Cmd,
    event: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let host = connect(ctx, &target.host, &target.service).await?;
    let out = host.output(cmd).await;
    let _ = host.close().await;
    let out = out.context("could not run the berth agent")?;
    if !out.status.success() {
        return Err(
            RemoteError::from_agent(&target.host.host, &out.stderr, out.status.code()).into(),
        );
    }
    Ok(crate::agent::find_events(&out.stdout, event))
}

fn show_status(printer: Printer, service: &str, s: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    printer.line(format!("{service}: runs {}", text(&s["current"])));
    let instances = s["instances"].as_array().cloned().unwrap_or_default();
    if s["unit"].as_str().is_some_and(|u| u.ends_with("@.service")) {
        printer.line(format!(
            "  {} of at most {} instance(s) should run",
            s["running_instances"], s["max_instances"]
        ));
    }
    for i in &instances {
        printer.line(format!(
            "  unit {}: {} ({}), restarts {}",
            text(&i["unit"]),
            text(&i["state"]["active_state"]),
            text(&i["state"]["sub_state"]),
            i["state"]["n_restarts"]
        ));
    }
    let releases: Vec<String> = s["releases"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    printer.line(format!("  releases kept: {}", releases.join(", ")));
    if let Ok(d) = serde_json::from_value::<Deployment>(s["last"].clone()) {
        printer.line(format!("  last deploy: {}", line(&d)));
    }
    if s["lock"].is_object() {
        printer.line(format!(
            "  locked by {}: {}",
            text(&s["lock"]["owner"]),
            text(&s["lock"]["reason"])
        ));
    }
    if let Some(hold) = s["hold"].as_str() {
        printer.line(format!(
            "  held: berth keeps the unit from starting, and connections wait in its socket, \
             until berth starts it (to start it by hand: rm {hold})"
        ));
    }
    if s["latest_snapshot"].is_object() {
        printer.line(format!(
            "  last snapshot: {}",
            super::snapshot::snapshot_line(&s["latest_snapshot"])
        ));
    }
    let blocked: Vec<state::Blocked> =
        serde_json::from_value(s["blocked"].clone()).unwrap_or_default();
    if !blocked.is_empty() {
        printer.line("  blocked (deployed again only with --force, or after `berth app unblock`):");
    }
    for b in &blocked {
        printer.line(format!("    {}", blocked_line(b)));
    }
}

/// One blocked revision: which, since when, the deployment that failed, why
/// (the first line of it: `--json` has all of it).
fn blocked_line(b: &state::Blocked) -> String {
    let reason = b.reason.as_deref().unwrap_or("-");
    let why = match reason.split_once('\n') {
        Some((first, _)) => format!("{first} …"),
        None => reason.to_owned(),
    };
    format!(
        "{}  since {}  deploy {}: {why}",
        b.revision,
        b.at.map_or("-".into(), state::utc_time),
        b.deployment_id.as_deref().unwrap_or("-"),
    )
}

async fn unblock(ctx: &Context, args: UnblockArgs) -> anyhow::Result<Exit> {
    let service = &args.target.service;
    let cmd = agent(ctx, "app-unblock", Some(service)).args(["--rev", &args.rev]);
    let cmd = audit_args(cmd, None);
    for event in query(ctx, &args.target, &cmd, EVENT_UNBLOCKED).await? {
        ctx.printer.event(EVENT_UNBLOCKED, &event);
        if let Ok(b) = serde_json::from_value::<state::Blocked>(event) {
            ctx.printer
                .line(format!("{service}: unblocked {}", blocked_line(&b)));
        }
    }
    Ok(Exit::SUCCESS)
}

async fn changed(ctx: &Context, args: ChangedArgs) -> anyhow::Result<Exit> {
    for service in &args.services {
        let mut cmd = agent(ctx, "app-changed", Some(service));
        for (flag, value) in [("--from", &args.from), ("--to", &args.to)] {
            if let Some(rev) = value {
                cmd = cmd.args([flag, rev]);
            }
        }
        let target = ServiceArgs {
            service: service.clone(),
            host: args.host.clone(),
        };
        for event in query(ctx, &target, &cmd, EVENT_CHANGES).await? {
            ctx.printer.event(EVENT_CHANGES, &event);
            if let Ok(c) = serde_json::from_value::<Changes>(event) {
                ctx.printer.line(c.describe());
            }
        }
    }
    Ok(Exit::SUCCESS)
}

async fn history(ctx: &Context, args: HistoryArgs) -> anyhow::Result<Exit> {
    let service = &args.target.service;
    let cmd = agent(ctx, "app-history", Some(service)).args(["--limit", &args.limit.to_string()]);
    let events = query(ctx, &args.target, &cmd, EVENT_DEPLOYMENT).await?;
    if events.is_empty() {
        ctx.printer.line(format!("{service} has no deploys yet"));
    }
    for event in events {
        ctx.printer.event(EVENT_DEPLOYMENT, &event);
        let skipped = event["snapshot_skipped"] == true;
        if let Ok(d) = serde_json::from_value::<Deployment>(event) {
            let mut text = line(&d);
            if skipped {
                text.push_str("  snapshot skipped");
            }
            ctx.printer.line(text);
        }
    }
    Ok(Exit::SUCCESS)
}

/// One app deploy in a line: when, from → to, how it ended, who, the CI run.
pub fn line(d: &Deployment) -> String {
    let short = crate::output::short_commit;
    let mut text = format!(
        "{}  {:<15} {} -> {}  {:<12} by {}  ({})",
        state::utc_time(d.started),
        d.status.as_str(),
        d.from_path.as_deref().map_or("-", short),
        short(&d.to_path),
        d.goal,
        d.actor,
        d.id
    );
    if let Some(ended) = d.ended {
        text.push_str(&format!(" {}s", ended - d.started));
    }
    if let Some(phase) = &d.failure_phase {
        text.push_str(&format!("  failed at {phase}"));
    }
    if let Some(reason) = &d.reason {
        text.push_str(&format!("  \"{reason}\""));
    }
    if let Some(url) = &d.ci_run_url {
        text.push_str(&format!("  {url}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        app: AppCommand,
    }

    #[test]
    fn deploy_needs_exactly_one_revision() {
        let parse =
            |a: &[&str]| T::try_parse_from([&["t", "deploy", "notes", "--host", "h"], a].concat());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--rev", "abc1234", "--tag", "v1"]).is_err());
        let T {
            app: AppCommand::Deploy(d),
        } = parse(&["--rev", "abc1234", "--db", "data/a.db"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.revision.to_args(), ["--rev", "abc1234"]);
        assert_eq!(d.overrides.to_args(), ["--db", "data/a.db"]);
    }
}
