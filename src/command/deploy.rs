//! `berth deploy [FLAKE[#NODE]]`: evaluate, build, copy, activate with
//! magic rollback, check health, confirm — one host or a fleet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::call::Audit;
use crate::agent::system::Goal;
use crate::context::Context;
use crate::deploy::{self, Job, Options, Outcome, Report};
use crate::env;
use crate::error::{Exit, UsageError};
use crate::flake::{self, FlakeRef, NodeMeta, NodeName, Revision, Selector};

use super::nodes;
use crate::host::{tailscale, Destination, Host, SshHost};
use crate::output::Printer;
use crate::process::{JobLog, Via};
use crate::stage::{Stage, StageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub nodes: nodes::NodesArgs,
    /// What switch-to-configuration does
    #[arg(long, value_enum, default_value = "switch")]
    pub goal: Goal,
    /// Build each system on its host instead of here
    #[arg(long)]
    pub build_on_target: bool,
    /// Build every system on this host (`[user@]host`) and copy it from there to each target
    #[arg(long, value_name = "HOST", conflicts_with = "build_on_target")]
    pub build_host: Option<String>,
    /// How many hosts at once
    #[arg(short = 'p', long, value_name = "N", default_value_t = 10)]
    pub parallel: usize,
    /// Deploy N hosts first and stop if one of them fails
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: usize,
    /// Seconds a host waits for confirmation before rolling back (default: the node's confirmTimeout)
    #[arg(long, value_name = "SECS")]
    pub confirm_timeout: Option<u64>,
    /// Seconds switch-to-configuration may run before the host stops it and rolls back
    /// (default: the node's activationTimeout)
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub activation_timeout: Option<u64>,
    /// Do not arm the watchdog: a bad activation stays
    #[arg(long)]
    pub no_magic_rollback: bool,
    /// Evaluate and build, show what would be deployed where, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// First wait for the GitHub checks of the flake's commit in this repository to pass, as
    /// `berth ci-gate` does; deploy nothing if they fail
    #[arg(long, value_name = "OWNER/NAME")]
    pub ci_gate: Option<String>,
    /// The commit `--ci-gate` waits for [default: the flake's commit, else GITHUB_SHA]
    #[arg(long, value_name = "SHA", requires = "ci_gate")]
    pub ci_sha: Option<String>,
    /// Leave a node alone (exit 0) when its host already runs this flake revision or a newer
    /// one that contains it (needs a clean git checkout of the flake)
    #[arg(long)]
    pub skip_superseded: bool,
    /// Why, recorded in each host's history
    #[arg(long)]
    pub reason: Option<String>,
    /// Sign each system and its closure with this secret key (from `berth keys generate`) before
    /// it is deployed; hosts with `berth.agent.trustedPublicKeys` refuse systems not signed by
    /// one of their keys
    #[arg(long, value_name = "FILE", env = env::BERTH_SIGN_KEY)]
    pub sign_key: Option<PathBuf>,
    /// Copy every system from here: no host takes a signed system from another
    /// (fan-out, on by default with --sign-key and two hosts or more)
    #[arg(long)]
    pub no_fan_out: bool,
    /// Tell this webhook how each host's deploy went (Discord, Slack or generic JSON); repeatable,
    /// added to each node's `notify` setting
    #[arg(long, value_name = "URL")]
    pub notify: Vec<String>,
    /// Deploy only nodes that declare this stage (`berth.deployment.stage`); refuse the deploy,
    /// before anything is built, if a selected node declares another stage or none
    #[arg(long, value_name = "STAGE", env = env::BERTH_STAGE, value_parser = crate::stage::parse_stage)]
    pub stage: Option<Stage>,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let printer = ctx.printer;
    let mut target = FlakeRef::parse(&args.nodes.target)?;
    let selector = args.nodes.on.as_deref().map(Selector::parse).transpose()?;
    if let Some(key) = &args.sign_key {
        check_sign_key(key)?;
    }
    let source = flake::resolve(&target.flake).await?;
    // Before anything is evaluated or built.
    if let Some(repo) = &args.ci_gate {
        let sha = super::ci_gate::system_sha(
            args.ci_sha.as_deref(),
            source.revision.as_ref().map(|r| r.as_str()),
            std::env::var(crate::env::GITHUB_SHA).ok(),
        )?;
        if let Some(exit) = super::ci_gate::before_deploy(ctx, repo, &sha).await? {
            return Ok(exit);
        }
    }
    // Before evaluating: a deploy that cannot be compared stops here.
    let superseding = if args.skip_superseded {
        Some(source.local_commit()?)
    } else {
        None
    };
    match &source.revision {
        Some(revision) => printer.line(format!("evaluating {} at {revision}", target.flake)),
        None => printer.line(format!("evaluating {} (no commit)", target.flake)),
    }
    // Evaluate and build exactly the revision that is recorded.
    target.flake = source.locked.clone();
    let mut nodes = nodes::select_in(&target, selector.as_ref()).await?;
    nodes::ask_sudo_password(ctx, &nodes)?;
    // Before building: a node of another stage is refused.
    check_stages(&nodes, args.stage.as_ref(), printer)?;
    // Before building: an offline or unknown Tailscale peer fails fast.
    tailscale::resolve_nodes(&mut nodes, printer).await?;
    // Who to tell about each node, whether it is deployed or not.
    let notify_urls: HashMap<String, Vec<String>> = nodes
        .iter()
        .map(|n| {
            let urls = crate::notify::merge(&args.notify, &n.settings.notify);
            (n.name.to_string(), urls)
        })
        .collect();
    let options = Arc::new(Options {
        goal: args.goal,
        confirm_timeout: args.confirm_timeout.map(Duration::from_secs),
        activation_timeout: args.activation_timeout.map(Duration::from_secs),
        magic_rollback: !args.no_magic_rollback,
        agent: ctx.agent.clone(),
        audit: audit(args.reason.clone()),
        ssh: ctx.ssh.clone(),
        revision: source.revision.clone(),
        sign_key: args.sign_key.clone().filter(|_| !args.dry_run),
        fan_out: !args.no_fan_out,
    });

    // --skip-superseded: ask the hosts first, and build only for the rest.
    let mut checked = Vec::new();
    let mut expected = HashMap::new();
    if let Some((this, repository)) = superseding {
        let all = std::mem::take(&mut nodes);
        let found =
            deploy::check_superseded(all, this, repository, &options, args.parallel, printer).await;
        checked = found.reports;
        for (node, expect) in found.deploy {
            expected.insert(node.name.clone(), expect);
            nodes.push(node);
        }
    }
    let names_text = nodes
        .iter()
        .map(|n| n.name.to_string())
        .collect::<Vec<_>>()
        .join(", ");

    // The first wave's hosts are reached while their systems build.
    let ahead = if args.dry_run {
        deploy::Ahead::default()
    } else {
        let mut first: Vec<_> = nodes.iter().map(|n| (&n.name, &n.settings)).collect();
        first.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        let wave = if args.canary > 0 {
            args.canary
        } else {
            args.parallel.max(1)
        };
        deploy::Ahead::start(first, wave, &options)
    };

    let jobs = match jobs(ctx, &args, &target.flake, nodes, &options, expected).await {
        Ok(jobs) => jobs,
        Err(err) => {
            ahead.close().await;
            return Err(err);
        }
    };

    if args.dry_run {
        for job in &jobs {
            let host = job.settings.target_host(&job.node);
            let how = if job.drv.is_some() {
                "build on the host"
            } else {
                "copy"
            };
            printer.event(
                "plan",
                &serde_json::json!({ "node": job.node.as_ref(), "host": host, "toplevel": job.toplevel, "build_on_target": job.drv.is_some() }),
            );
            printer.line(format!(
                "{}: would {how} {} to {host} and {} it",
                job.node,
                job.toplevel,
                args.goal.as_str()
            ));
        }
        let mut exit = Exit::SUCCESS;
        for report in &checked {
            printer.line(format!("{}: {}", report.node, report.outcome.describe()));
            exit = exit.max(exit_of(&report.outcome));
        }
        printer.line("dry run: nothing was changed");
        return Ok(exit);
    }

    // What each node was given, before the jobs are spent.
    let toplevels: HashMap<String, String> = jobs
        .iter()
        .map(|job| (job.node.to_string(), job.toplevel.to_string()))
        .collect();
    if let Some(key) = &options.sign_key {
        if let Err(err) = sign_here(&jobs, key, printer).await {
            ahead.close().await;
            return Err(err);
        }
    }
    let ci_run_url = options.audit.ci_run_url.clone();
    let mut reports = checked;
    if !jobs.is_empty() {
        printer.line(format!("deploying {names_text}"));
        let fleet = deploy::deploy_all(jobs, options, args.parallel, args.canary, ahead, printer);
        tokio::select! {
            deployed = fleet => reports.extend(deployed),
            _ = tokio::signal::ctrl_c() => {
                printer.warn(
                    "interrupted: a host that was activating rolls back by itself unless it was confirmed",
                );
                return Ok(Exit::INTERRUPTED);
            }
        }
    }
    let exit = summarize(&reports, printer);
    notify_hosts(&reports, &notify_urls, &toplevels, ci_run_url, printer).await;
    Ok(exit)
}

/// The environment guard over every selected node: with `--stage`, each
/// must declare that stage. Every refused node is shown; the first is the
/// error.
/// The jobs of `nodes`: their systems built here (or on `--build-host`),
/// or evaluated to be built on their hosts; sorted by node.
async fn jobs(
    ctx: &Context,
    args: &Args,
    flake: &str,
    nodes: Vec<NodeMeta>,
    options: &Options,
    mut expected: HashMap<NodeName, Option<Revision>>,
) -> anyhow::Result<Vec<Job>> {
    let printer = ctx.printer;
    let mut jobs = Vec::new();
    let nodes = match &args.build_host {
        Some(build_host) if !nodes.is_empty() => {
            jobs = build_on(ctx, build_host, flake, nodes, options.sign_key.as_deref()).await?;
            Vec::new()
        }
        _ => nodes,
    };
    let (on_target, here): (Vec<_>, Vec<_>) = nodes
        .into_iter()
        .partition(|n| args.build_on_target || n.settings.build_on_target);
    if !here.is_empty() {
        let here_names: Vec<_> = here.iter().map(|n| n.name.clone()).collect();
        printer.line(format!(
            "building {}",
            here_names
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let built = flake::build(flake, &here_names).await?;
        for (node, built) in here.into_iter().zip(built) {
            jobs.push(Job {
                node: node.name,
                settings: node.settings,
                toplevel: built.out,
                drv: None,
                built_on: None,
                expect_revision: None,
            });
        }
    }
    if !on_target.is_empty() {
        let target_names: Vec<_> = on_target.iter().map(|n| n.name.clone()).collect();
        let drvs = flake::drv_paths(flake, &target_names).await?;
        for (node, drv) in on_target.into_iter().zip(drvs) {
            jobs.push(Job {
                node: node.name,
                settings: node.settings,
                toplevel: drv.out,
                drv: Some(drv.drv),
                built_on: None,
                expect_revision: None,
            });
        }
    }
    for job in &mut jobs {
        job.expect_revision = expected.remove(&job.node).flatten();
    }
    jobs.sort_by(|a, b| a.node.as_ref().cmp(b.node.as_ref()));
    Ok(jobs)
}

/// Signs the systems built here in one nix call, before any is copied.
async fn sign_here(jobs: &[Job], key: &Path, printer: Printer) -> anyhow::Result<()> {
    let here: Vec<_> = jobs
        .iter()
        .filter(|job| job.drv.is_none() && job.built_on.is_none())
        .map(|job| job.toplevel.clone())
        .collect();
    if !here.is_empty() {
        printer.line(format!(
            "signing {} with {}",
            plural(here.len()),
            key.display()
        ));
        let cmd = crate::nix::sign(key, &here, None);
        crate::process::output(&cmd, Via::Local, &JobLog::new())
            .await?
            .check()?;
    }
    Ok(())
}

fn check_stages(
    nodes: &[NodeMeta],
    asked: Option<&Stage>,
    printer: Printer,
) -> Result<(), StageError> {
    let mut refused: Vec<StageError> = nodes
        .iter()
        .filter_map(|n| {
            crate::stage::check(
                &format!("node {}", n.name),
                "berth.deployment.stage",
                n.settings.stage.as_ref(),
                asked,
            )
            .err()
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    for err in refused.iter().skip(1) {
        printer.warn(err.to_string());
    }
    Err(refused.swap_remove(0))
}

/// One notification per host whose deploy is worth telling, to the
/// `--notify` URLs and the node's own; a failed one is only reported.
async fn notify_hosts(
    reports: &[Report],
    urls: &HashMap<String, Vec<String>>,
    toplevels: &HashMap<String, String>,
    ci_run_url: Option<String>,
    printer: Printer,
) {
    for report in reports {
        let Some(urls) = urls.get(&report.node).filter(|urls| !urls.is_empty()) else {
            continue;
        };
        let to = toplevels.get(&report.node).cloned();
        let note = crate::notify::of_system(report, to, ci_run_url.clone());
        let results = crate::notify::send(urls, &note).await;
        crate::notify::show(printer, &report.node, &results);
    }
}

/// `--build-host`: evaluate here, build every system on that host in one
/// `nix-store --realise`, and have each target copy from there.
async fn build_on(
    ctx: &Context,
    build_host: &str,
    flake: &str,
    nodes: Vec<NodeMeta>,
    sign_key: Option<&Path>,
) -> anyhow::Result<Vec<Job>> {
    let destination = Destination::parse(build_host)?;
    let names: Vec<_> = nodes.iter().map(|n| n.name.clone()).collect();
    let toplevels = flake::drv_paths(flake, &names).await?;
    ctx.printer.line(format!("building on {destination}"));
    let host = SshHost::connect(&destination, &ctx.ssh).await?;
    host.copy_derivations(&flake::unique_drvs(&toplevels))
        .await?;
    let built = flake::realise_on(&host, toplevels).await?;
    if let Some(key) = sign_key {
        let paths: Vec<_> = built.iter().map(|b| b.out.clone()).collect();
        ctx.printer.line(format!(
            "signing {} on {destination} with {}",
            plural(paths.len()),
            key.display()
        ));
        host.sign_closure(key, &paths).await?;
    }
    let store = host.store_uri();
    let _ = host.close().await;
    Ok(nodes
        .into_iter()
        .zip(built)
        .map(|(node, built)| Job {
            node: node.name,
            settings: node.settings,
            toplevel: built.out,
            drv: None,
            built_on: Some(store.clone()),
            expect_revision: None,
        })
        .collect())
}

/// "1 system", "3 systems".
fn plural(n: usize) -> String {
    if n == 1 {
        "1 system".into()
    } else {
        format!("{n} systems")
    }
}

/// `--sign-key` must name a readable Nix secret key, checked before
/// anything is evaluated or built.
pub fn check_sign_key(key: &Path) -> Result<(), UsageError> {
    crate::nix::keys::check_secret_key_file(key)
        .map(|_| ())
        .map_err(|err| {
            let cause = crate::error::causes(&err);
            let message = if cause.is_empty() {
                format!("--sign-key: {err}")
            } else {
                format!("--sign-key: {err}: {cause}")
            };
            UsageError::new(message).hint(format!(
                "make a key pair with `berth keys generate --name NAME`, and pass its secret key \
             file with --sign-key or {}",
                env::BERTH_SIGN_KEY
            ))
        })
}

/// Who deploys, from where, and the CI run when there is one.
pub fn audit(reason: Option<String>) -> Audit {
    let user = std::env::var(env::USER).unwrap_or_else(|_| {
        // SAFETY: getuid has no preconditions.
        match unsafe { libc::getuid() } {
            0 => "root".into(),
            uid => format!("uid{uid}"),
        }
    });
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let ci_run_url = match (
        std::env::var(env::GITHUB_REPOSITORY),
        std::env::var(env::GITHUB_RUN_ID),
    ) {
        (Ok(repo), Ok(run)) => {
            let server = std::env::var(env::GITHUB_SERVER_URL)
                .unwrap_or_else(|_| "https://github.com".into());
            Some(format!("{server}/{repo}/actions/runs/{run}"))
        }
        _ => None,
    };
    Audit {
        actor: format!("{user}@{machine}"),
        reason,
        ci_run_url,
    }
}

/// Prints one line per host (and the log tail of each failure) and picks
/// the exit code: 3 if a host needs attention, 1 if one failed, else 0.
fn summarize(reports: &[Report], printer: Printer) -> Exit {
    let ok = reports.iter().filter(|r| r.outcome.ok()).count();
    printer.line(String::new());
    printer.line(format!("{ok} of {} host(s) deployed", reports.len()));
    let mut exit = Exit::SUCCESS;
    for report in reports {
        printer.line(format!(
            "  {} ({}): {} [{:.1}s]",
            printer.bold(&report.node),
            report.host,
            report.outcome.describe(),
            report.seconds
        ));
        for line in &report.log {
            printer.line(format!("      | {line}"));
        }
        exit = exit.max(exit_of(&report.outcome));
    }
    printer.event(
        "summary",
        &serde_json::json!({ "hosts": reports.len(), "ok": ok, "failed": reports.len() - ok }),
    );
    exit
}

/// 0 deployed or unchanged, 3 needs attention, else 1.
fn exit_of(outcome: &Outcome) -> Exit {
    match outcome {
        Outcome::Deployed { .. } | Outcome::Unchanged { .. } => Exit::SUCCESS,
        Outcome::NeedsAttention { .. } => Exit::ATTENTION,
        _ => Exit::FAILURE,
    }
}
