//! System deploys from the deployer's side: for each node, reach its host,
//! copy (or build there), have the agent activate with magic rollback,
//! check health, then confirm over a fresh connection or roll back. Many
//! hosts run with bounded parallelism, canaries first.

mod fanout;
pub mod health;
mod supersede;

pub use supersede::{check_superseded, Checked};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent::call::{self, Audit};
use crate::agent::system::{Activation, Goal};
use crate::agent::{self, Outcome as AgentOutcome};
use crate::flake::{DeploymentSettings, NodeName, Revision};
use crate::host::{Destination, Host, SshHost, SshSettings};
use crate::nix::signatures::SignedPath;
use crate::nix::{self, StorePath};
use crate::output::Printer;
use crate::process::CommandError;
use crate::progress::{HostProgress, Progress};
use crate::state::{self, Deployment, Status};

/// Why a host that already runs the system is left alone.
const ALREADY_RUNNING: &str = "already running this system";
/// How many log lines a failed host shows.
const LOG_TAIL: usize = 12;
/// How long past the confirm timeout the deployer waits for a host that
/// lost its connection to report that it rolled itself back.
const WATCHDOG_GRACE: Duration = Duration::from_secs(30);

/// One node to deploy: where it goes and what it becomes.
#[derive(Clone, Debug)]
pub struct Job {
    pub node: NodeName,
    pub settings: DeploymentSettings,
    pub toplevel: StorePath,
    /// With `--build-on-target`: the derivation, built on the host.
    pub drv: Option<StorePath>,
    /// With `--build-host`: the store (`ssh-ng://…`) the system was built
    /// in, copied from there straight to the host.
    pub built_on: Option<String>,
    /// With `--skip-superseded`: the revision the host ran when it was
    /// checked; its agent refuses to activate if that changed since.
    pub expect_revision: Option<Revision>,
}

impl Job {
    pub fn destination(&self) -> Result<Destination, String> {
        destination(&self.node, &self.settings)
    }
}

/// `targetUser@targetHost` of a node.
pub fn destination(node: &NodeName, settings: &DeploymentSettings) -> Result<Destination, String> {
    let text = format!("{}@{}", settings.target_user, settings.target_host(node));
    Destination::parse(&text).map_err(|e| format!("node {node}: {e}"))
}

/// How to deploy, the same for every host.
#[derive(Clone, Debug)]
pub struct Options {
    pub goal: Goal,
    /// Overrides each node's `confirmTimeout`.
    pub confirm_timeout: Option<Duration>,
    /// Overrides each node's `activationTimeout`.
    pub activation_timeout: Option<Duration>,
    pub magic_rollback: bool,
    /// The agent on the hosts (`--agent`).
    pub agent: agent::Program,
    pub audit: Audit,
    pub ssh: SshSettings,
    /// The flake revision the systems were built from, recorded on each
    /// host; none for a flake without a commit.
    pub revision: Option<Revision>,
    /// The secret key systems are signed with (`--sign-key`). Systems built
    /// here or on a build host are signed before they are deployed; one
    /// built on its target is signed there, after the build.
    pub sign_key: Option<std::path::PathBuf>,
    /// Let hosts take a signed system from each other (`--no-fan-out`
    /// turns it off); only with `sign_key`, and only where two or more
    /// hosts copy from here.
    pub fan_out: bool,
}

/// How one host's deploy ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Deployed {
        generation: Option<u64>,
    },
    /// Nothing was copied or activated: the host already runs this system,
    /// or (`--skip-superseded`) a revision that contains this one.
    Unchanged {
        why: String,
    },
    /// It failed and the host is back where it was.
    RolledBack {
        why: String,
    },
    /// It failed before anything on the host changed.
    Failed {
        why: String,
    },
    /// It failed and the host may not be where it was.
    NeedsAttention {
        why: String,
    },
    /// Not tried: an earlier wave failed.
    Skipped {
        why: String,
    },
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Deployed { .. } | Outcome::Unchanged { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Deployed {
                generation: Some(g),
            } => format!("deployed (generation {g})"),
            Outcome::Deployed { generation: None } => "deployed".into(),
            Outcome::Unchanged { why } => format!("unchanged: {why}"),
            Outcome::RolledBack { why } => format!("rolled back: {why}"),
            Outcome::Failed { why } => format!("failed, nothing changed: {why}"),
            Outcome::NeedsAttention { why } => format!("NEEDS ATTENTION: {why}"),
            Outcome::Skipped { why } => format!("skipped: {why}"),
        }
    }
}

/// One host's result, for the summary and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub node: String,
    pub host: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub deployment: Option<String>,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

/// Deploys every job: `canary` hosts first, halting on their failure, then
/// the rest in waves of `parallel`, halting after a failed wave; without
/// canaries, all hosts with at most `parallel` at once. Every host gets a
/// report, also the ones not tried.
pub async fn deploy_all(
    jobs: Vec<Job>,
    options: Arc<Options>,
    parallel: usize,
    canary: usize,
    mut ahead: Ahead,
    printer: Printer,
) -> Vec<Report> {
    let parallel = parallel.max(1);
    let mut reports = Vec::new();
    let mut rest = jobs;
    let waves: Vec<Vec<Job>> = if canary == 0 {
        vec![std::mem::take(&mut rest)]
    } else {
        let tail = rest.split_off(canary.min(rest.len()));
        let mut waves = vec![std::mem::take(&mut rest)];
        let mut tail = tail.into_iter().peekable();
        while tail.peek().is_some() {
            waves.push(tail.by_ref().take(parallel).collect());
        }
        waves
    };
    let progress = Progress::new(printer);
    let mut tickets = fan_out_tickets(&waves, &options);
    let mut halted: Option<String> = None;
    for (i, wave) in waves.into_iter().enumerate() {
        let wave_tickets: Vec<Option<fanout::Ticket>> = wave
            .iter()
            .map(|job| take_ticket(&mut tickets, job))
            .collect();
        if let Some(why) = &halted {
            drop(wave_tickets);
            for job in wave {
                let report = Report {
                    host: job.settings.target_host(&job.node).to_owned(),
                    node: job.node.to_string(),
                    outcome: Outcome::Skipped { why: why.clone() },
                    deployment: None,
                    seconds: 0.0,
                    log: Vec::new(),
                };
                printer.event("host_result", &report);
                reports.push(report);
            }
            continue;
        }
        let wave_reports = run_wave(
            wave,
            wave_tickets,
            &options,
            parallel,
            &mut ahead,
            printer,
            &progress,
        )
        .await;
        if canary > 0 && wave_reports.iter().any(|r| !r.outcome.ok()) {
            halted = Some(if i == 0 {
                "a canary host failed".into()
            } else {
                "a host of an earlier wave failed".into()
            });
        }
        reports.extend(wave_reports);
    }
    reports
}

/// Whether `job` copies its system from this machine, which fan-out
/// replaces (a build on the target or a build host copies nothing here).
fn copies_from_here(job: &Job) -> bool {
    job.drv.is_none() && job.built_on.is_none()
}

/// One fan-out ticket per host that copies from here, when fan-out can
/// help: systems signed (hosts check what peers give them by signature)
/// and two hosts or more.
fn fan_out_tickets(waves: &[Vec<Job>], options: &Options) -> Vec<fanout::Ticket> {
    let hosts = waves
        .iter()
        .flatten()
        .filter(|j| copies_from_here(j))
        .count();
    let key = match &options.sign_key {
        Some(file) if options.fan_out && hosts >= 2 => nix::keys::public_key_of(file),
        _ => return Vec::new(),
    };
    match key {
        Ok(key) => fanout::FanOut::tickets(key, hosts),
        Err(err) => {
            tracing::warn!("no fan-out: {err}");
            Vec::new()
        }
    }
}

fn take_ticket(tickets: &mut Vec<fanout::Ticket>, job: &Job) -> Option<fanout::Ticket> {
    if copies_from_here(job) {
        tickets.pop()
    } else {
        None
    }
}

async fn run_wave(
    jobs: Vec<Job>,
    tickets: Vec<Option<fanout::Ticket>>,
    options: &Arc<Options>,
    parallel: usize,
    ahead: &mut Ahead,
    printer: Printer,
    progress: &Progress,
) -> Vec<Report> {
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (job, ticket)) in jobs.into_iter().zip(tickets).enumerate() {
        let limit = limit.clone();
        let options = options.clone();
        let line = progress.host(job.node.as_ref());
        let early = ahead.0.remove(&job.node);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (
                index,
                deploy_host(&job, &options, early, ticket, printer, &line).await,
            )
        });
    }
    let mut reports = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(report) => reports.push(report),
            Err(err) => tracing::error!("a host's deploy task died: {err}"),
        }
    }
    reports.sort_by_key(|(index, _)| *index);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// Deploys one host and reports how it went; never panics on a host's
/// failure, so the others' reports are not lost.
async fn deploy_host(
    job: &Job,
    options: &Options,
    early: Option<Early>,
    ticket: Option<fanout::Ticket>,
    printer: Printer,
    line: &HostProgress,
) -> Report {
    let started = Instant::now();
    let host_name = job.settings.target_host(&job.node).to_owned();
    let mut run = HostRun {
        job,
        options,
        printer,
        deployment: None,
        log: Vec::new(),
        ssh: options.ssh.clone(),
        agent: options.agent.for_node(&job.settings),
        line,
        ticket,
    };
    let outcome = run.run(early).await;
    let log = if outcome.ok() {
        Vec::new()
    } else {
        readable(&run.log)
    };
    let report = Report {
        node: job.node.to_string(),
        host: host_name,
        outcome,
        deployment: run.deployment,
        seconds: started.elapsed().as_secs_f64(),
        log,
    };
    printer.event("host_result", &report);
    line.finish(&report.outcome.describe());
    report
}

/// Deploys `job` on this machine (`berth converge`): the steps of a push
/// deploy — the agent's status, activation with magic rollback, health,
/// confirm or roll back — through `host` (a [`crate::host::LocalHost`],
/// perhaps wrapped) instead of SSH. The system is already in this store.
pub async fn deploy_here(
    job: &Job,
    options: &Options,
    host: &dyn Host,
    printer: Printer,
    line: &HostProgress,
) -> Report {
    let started = Instant::now();
    let mut run = HostRun {
        job,
        options,
        printer,
        deployment: None,
        log: Vec::new(),
        ssh: options.ssh.clone(),
        agent: options.agent.for_node(&job.settings),
        line,
        ticket: None,
    };
    let outcome = match contact(host, &run.agent, job.node.as_ref()).await {
        Ok(status) => run.on_host(host, None, "auto", status).await,
        Err(why) => Outcome::Failed { why },
    };
    let log = if outcome.ok() {
        Vec::new()
    } else {
        readable(&host.log().tail(LOG_TAIL * 4))
    };
    let report = Report {
        node: job.node.to_string(),
        host: host.name().to_owned(),
        outcome,
        deployment: run.deployment,
        seconds: started.elapsed().as_secs_f64(),
        log,
    };
    printer.event("host_result", &report);
    line.finish(&report.outcome.describe());
    report
}

/// A node's host, reached over SSH.
struct Reached {
    host: SshHost,
    /// The deployer's SSH settings plus the node's `sshOptions`: for fresh
    /// connections and `nix copy`.
    ssh: SshSettings,
    /// Holds the node's ssh_config, if it has sshOptions, while it is used.
    _scratch: tempfile::TempDir,
}

/// The hosts of a deploy's first wave, reached while their systems are
/// built: by the time a system exists, its host is connected and its
/// agent's status is known, so the build and the SSH handshake overlap.
/// Hosts not in it are reached in their turn.
#[derive(Default)]
pub struct Ahead(HashMap<NodeName, Early>);

/// One host being reached ahead: its connection and its agent's status.
type Early = tokio::task::JoinHandle<Result<(Reached, Option<serde_json::Value>), String>>;

impl Ahead {
    /// Starts reaching the hosts of `nodes` (at most `count` of them, in
    /// order): connect, install the agent, ask its status. A host that
    /// cannot be reached fails its deploy when its turn comes, with the
    /// same message as if it were reached then. Dropped, the connections
    /// close.
    pub fn start<'a>(
        nodes: impl IntoIterator<Item = (&'a NodeName, &'a DeploymentSettings)>,
        count: usize,
        options: &Arc<Options>,
    ) -> Ahead {
        let mut ahead = HashMap::new();
        for (node, settings) in nodes.into_iter().take(count) {
            let (name, settings, options) = (node.clone(), settings.clone(), options.clone());
            let task = tokio::spawn(async move {
                let destination = destination(&name, &settings)?;
                let reached = reach(&destination, name.as_ref(), &settings, &options.ssh).await?;
                let agent = options.agent.for_node(&settings);
                let status = contact(&reached.host, &agent, name.as_ref()).await?;
                Ok((reached, status))
            });
            ahead.insert(node.clone(), task);
        }
        Ahead(ahead)
    }

    /// Closes the connections of a deploy that stopped before it used
    /// them, once each is made.
    pub async fn close(self) {
        for (_, task) in self.0 {
            if let Ok(Ok((reached, _))) = task.await {
                let _ = reached.host.close().await;
            }
        }
    }
}

/// Installs the agent on `host` if it has to be copied, and asks its
/// status of `node`.
async fn contact(
    host: &dyn Host,
    agent: &agent::Program,
    node: &str,
) -> Result<Option<serde_json::Value>, String> {
    if let Err(err) = agent.install(host).await {
        return Err(format!("could not copy the berth agent to the host: {err}"));
    }
    agent_status(host, &agent.program, node).await
}

/// Connects to `destination` with the node's `sshOptions`; the error says
/// why, with a hint when there is one.
async fn reach(
    destination: &Destination,
    node: &str,
    settings: &DeploymentSettings,
    ssh: &SshSettings,
) -> Result<Reached, String> {
    let scratch = tempfile::tempdir()
        .map_err(|err| format!("could not make a temporary directory: {err}"))?;
    let ssh = ssh
        .with_options(&settings.ssh_options, scratch.path())
        .map_err(|err| format!("node {node}: {err}"))?
        .escalating(&settings.privilege_escalation_command);
    let host = SshHost::connect(destination, &ssh).await.map_err(|err| {
        let mut why = format!("{err}: {}", crate::error::causes(&err));
        if let Some(hint) = err.hint() {
            why.push_str(&format!(" (hint: {hint})"));
        }
        why
    })?;
    Ok(Reached {
        host,
        ssh,
        _scratch: scratch,
    })
}

/// The agent's `status` of `node` on `host` (none if it printed none).
async fn agent_status(
    host: &dyn Host,
    agent: &str,
    node: &str,
) -> Result<Option<serde_json::Value>, String> {
    match host.run(&call::status(agent, node)).await {
        Ok(out) => Ok(agent::find_events(&out.stdout, agent::EVENT_STATUS)
            .into_iter()
            .next()),
        Err(CommandError::Escalation(err)) => Err(with_hint(&err)),
        Err(err) => Err(format!(
            "the berth agent on the host did not answer: {err} (hint: import berth's \
             NixOS module on the host, run berth from the Nix store so it copies \
             itself, or pass --agent PATH)"
        )),
    }
}

/// The signatures of `toplevel`'s closure, for the agent to add to the
/// paths its host had before (which `nix copy` skips, signatures and all):
/// a path an earlier unsigned deploy left there must not stay unsigned.
/// Read in this machine's store, or in `from` (a build host's store, with
/// its `NIX_SSHOPTS`).
pub async fn closure_signatures(
    toplevel: &StorePath,
    from: Option<(&str, String)>,
    log: &crate::process::JobLog,
) -> Result<Vec<SignedPath>, String> {
    let mut read = nix::signatures::closure_cmd(toplevel);
    if let Some((store, ssh_opts)) = from {
        read = read
            .args(["--store", store])
            .env(crate::env::NIX_SSHOPTS, ssh_opts);
    }
    let out = crate::process::output(&read, crate::process::Via::Local, log)
        .await
        .and_then(|out| out.check())
        .map_err(|err| format!("could not read the system's signatures: {err}"))?;
    nix::signatures::parse(&out.stdout)
        .map_err(|err| format!("could not read the system's signatures: {err}"))
}

/// Why a copy failed, in berth's words where the host's Nix refused a path
/// for want of a signature it trusts.
pub fn copy_refused(err: &CommandError, user: &str) -> String {
    let unsigned = matches!(err, CommandError::Failed { stderr_tail, .. }
        if stderr_tail.contains("lacks a signature by a trusted key")
            || stderr_tail.contains("lacks a valid signature"));
    if !unsigned {
        return err.to_string();
    }
    format!(
        "the host's Nix refused the system: it takes paths from {user} only when a key it \
         trusts signed them ({err}) (hint: deploy with --sign-key FILE, whose public key is in \
         the host's berth.agent.trustedPublicKeys; or add {user} to the host's \
         nix.settings.trusted-users, which makes it as good as root)"
    )
}

/// `error (hint: …)`, for a host's one-line failure.
fn with_hint(err: &dyn crate::error::Diagnose) -> String {
    match err.diagnosis().hint {
        Some(hint) => format!("{err} (hint: {hint})"),
        None => err.to_string(),
    }
}

/// The state of one host's deploy while it runs.
struct HostRun<'a> {
    job: &'a Job,
    options: &'a Options,
    printer: Printer,
    deployment: Option<String>,
    log: Vec<String>,
    /// The deployer's SSH settings plus the node's `sshOptions`.
    ssh: SshSettings,
    /// The agent this node's host runs.
    agent: agent::Program,
    line: &'a HostProgress,
    /// Its place in the deploy's fan-out, until it is past its copy.
    ticket: Option<fanout::Ticket>,
}

impl HostRun<'_> {
    fn phase(&self, phase: &str, message: &str) {
        self.printer.event(
            "phase",
            &serde_json::json!({ "node": self.job.node.as_ref(), "phase": phase, "message": message }),
        );
        self.line.phase(message);
    }

    fn confirm_timeout(&self) -> Duration {
        self.options
            .confirm_timeout
            .unwrap_or(Duration::from_secs(self.job.settings.confirm_timeout))
    }

    fn activation_timeout(&self) -> Duration {
        self.options
            .activation_timeout
            .unwrap_or(Duration::from_secs(self.job.settings.activation_timeout))
    }

    /// Reaches the host (or takes it from `early`, reached while the
    /// system was built) and deploys there.
    async fn run(&mut self, early: Option<Early>) -> Outcome {
        let destination = match self.job.destination() {
            Ok(d) => d,
            Err(why) => return Outcome::Failed { why },
        };
        self.phase("connect", &format!("connecting to {destination}"));
        let contacted = match early {
            Some(task) => task
                .await
                .unwrap_or_else(|err| Err(format!("reaching the host failed: {err}"))),
            None => self.contact_now(&destination).await,
        };
        let (reached, status) = match contacted {
            Ok(contacted) => contacted,
            Err(why) => return Outcome::Failed { why },
        };
        self.ssh = reached.ssh.clone();
        let host = &reached.host;
        let store_uri = host.store_uri();
        let outcome = self
            .on_host(host, Some(&destination), &store_uri, status)
            .await;
        self.log = host.log().tail(LOG_TAIL * 4);
        let _ = reached.host.close().await;
        outcome
    }

    async fn contact_now(
        &self,
        destination: &Destination,
    ) -> Result<(Reached, Option<serde_json::Value>), String> {
        let node = self.job.node.as_ref();
        let reached = reach(destination, node, &self.job.settings, &self.options.ssh).await?;
        let status = contact(&reached.host, &self.agent, node).await?;
        Ok((reached, status))
    }

    /// The deploy once `host` is reached and its agent gave `status`: over
    /// SSH (`destination` is where fresh connections go), or this machine
    /// itself (`None`).
    async fn on_host(
        &mut self,
        host: &dyn Host,
        destination: Option<&Destination>,
        store_uri: &str,
        status: Option<serde_json::Value>,
    ) -> Outcome {
        let job = self.job;
        let agent = &self.agent.program;
        let node = job.node.as_ref();

        // The cheap check: is this already what the host runs?
        if let Some(status) =
            status.filter(|s| already_running(s, &job.toplevel, self.options.goal))
        {
            self.phase("check", "already running this system: nothing to do");
            self.record_revision(host, &status).await;
            return Outcome::Unchanged {
                why: ALREADY_RUNNING.into(),
            };
        }

        // Read before the copy: a fan-out fetch asks peers for these paths
        // (only signed ones can come from a peer).
        let signatures = if self.options.sign_key.is_some() && job.drv.is_none() {
            let from = job.built_on.as_deref().map(|f| (f, self.ssh.nix_sshopts()));
            match closure_signatures(&job.toplevel, from, host.log()).await {
                Ok(signatures) => signatures,
                Err(why) => return Outcome::Failed { why },
            }
        } else {
            Vec::new()
        };

        if let Some(drv) = &job.drv {
            self.phase("copy", "copying the derivation to build it on the host");
            if let Err(err) = host.copy_derivations(std::slice::from_ref(drv)).await {
                return Outcome::Failed {
                    why: err.to_string(),
                };
            }
            self.phase("build", "building on the host");
            if let Err(err) = host.run(&nix::realise(std::slice::from_ref(drv))).await {
                return Outcome::Failed {
                    why: err.to_string(),
                };
            }
            if let Some(key) = &self.options.sign_key {
                self.phase("sign", "signing the system on the host");
                if let Err(err) = host
                    .sign_closure(key, std::slice::from_ref(&job.toplevel))
                    .await
                {
                    let user = &job.settings.target_user;
                    let hint = if err.to_string().contains("not privileged to add signatures") {
                        format!(
                            " (hint: the host's Nix lets only its trusted-users add signatures, \
                             and {user} is not one: build here or on a --build-host instead of on \
                             the target, or add {user} to nix.settings.trusted-users, which makes \
                             it as good as root)"
                        )
                    } else {
                        String::new()
                    };
                    return Outcome::Failed {
                        why: format!("could not sign the system on the host: {err}{hint}"),
                    };
                }
            }
        } else if let Some(from) = &job.built_on {
            self.phase("copy", &format!("copying {} from {from}", job.toplevel));
            let cmd = nix::copy_between(
                from,
                store_uri,
                std::slice::from_ref(&job.toplevel),
                &self.ssh.nix_sshopts(),
            );
            if let Err(err) = crate::process::output(&cmd, crate::process::Via::Local, host.log())
                .await
                .and_then(|out| out.check())
            {
                return Outcome::Failed {
                    why: err.to_string(),
                };
            }
        } else {
            let copied = match &self.ticket {
                Some(ticket) => {
                    let phase = |message: &str| self.phase("copy", message);
                    ticket
                        .copy(host, agent, node, &job.toplevel, &signatures, &phase)
                        .await
                }
                None => {
                    self.phase("copy", &format!("copying {}", job.toplevel));
                    host.copy_closure(std::slice::from_ref(&job.toplevel)).await
                }
            };
            self.ticket = None;
            if let Err(err) = copied {
                return Outcome::Failed {
                    why: copy_refused(&err, &job.settings.target_user),
                };
            }
        }
        let id = state::new_id();
        self.deployment = Some(id.clone());
        let timeout = self.confirm_timeout();
        let magic = self.options.magic_rollback && job.settings.magic_rollback;
        self.phase(
            "activate",
            &format!(
                "activating ({}), deployment {id}",
                self.options.goal.as_str()
            ),
        );
        let audit = &self.options.audit;
        let activate = call::activate(
            agent,
            &Activation {
                id: id.clone(),
                node: node.to_owned(),
                path: job.toplevel.clone(),
                goal: self.options.goal,
                confirm_timeout: timeout,
                activation_timeout: self.activation_timeout(),
                magic_rollback: magic,
                actor: audit.actor.clone(),
                reason: audit.reason.clone(),
                ci_run_url: audit.ci_run_url.clone(),
                revision: self.options.revision.clone(),
                expect_revision: job.expect_revision.clone(),
                signatures,
            },
        );
        let result = match host.output(&activate).await {
            Ok(out) => match agent::find_result(&out.stdout) {
                Some(result) => result,
                None => {
                    return Outcome::NeedsAttention {
                        why: format!(
                            "the agent gave no result: {}",
                            out.check().err().map_or(String::new(), |e| e.to_string())
                        ),
                    }
                }
            },
            Err(CommandError::Ssh { .. }) if destination.is_some() => {
                self.phase(
                    "activate",
                    "the activation cut the SSH connection; waiting for the host",
                );
                // The switch may still run until its own deadline, and
                // the watchdog waits out the confirmation after it.
                let limit = self.activation_timeout() + timeout + WATCHDOG_GRACE;
                return self.await_host(destination, host, &id, limit).await;
            }
            Err(err) => {
                return Outcome::Failed {
                    why: err.to_string(),
                }
            }
        };
        let generation = result
            .deployment
            .as_ref()
            .and_then(|d| d.get("to_generation"))
            .and_then(|g| g.as_u64());
        match result.outcome {
            AgentOutcome::Pending | AgentOutcome::Confirmed => {}
            AgentOutcome::Busy | AgentOutcome::TimedOut => {
                return Outcome::Failed {
                    why: result.message,
                }
            }
            // The agent fails a deployment only before it changed anything
            // (a refused signature, a watchdog that would not start).
            AgentOutcome::Failed => {
                return Outcome::Failed {
                    why: result.message,
                }
            }
            AgentOutcome::RolledBack => {
                return Outcome::RolledBack {
                    why: result.message,
                }
            }
            AgentOutcome::RollbackFailed => {
                return Outcome::NeedsAttention {
                    why: result.message,
                }
            }
            AgentOutcome::Unchanged => {
                return Outcome::Unchanged {
                    why: result.message,
                }
            }
        }
        if !self.options.goal.activates() {
            return Outcome::Deployed { generation };
        }

        self.phase("health", "checking health");
        let checks = health::check(host, &job.settings.health_checks);
        if result.outcome == AgentOutcome::Confirmed {
            // Magic rollback was off: report, but there is nothing to undo.
            return match checks.await {
                Ok(()) => Outcome::Deployed { generation },
                Err(why) => Outcome::NeedsAttention {
                    why: format!("{why} (magic rollback was off, so it stays)"),
                },
            };
        }
        // The fresh connection that confirms opens while the checks run:
        // the activation has finished, so it still proves that the new
        // system accepts new connections.
        let (healthy, fresh) = tokio::join!(checks, self.fresh(destination));
        match healthy {
            Ok(()) => {
                self.phase("confirm", "healthy; confirming over a fresh connection");
                match self.confirm(destination, fresh, host, &id).await {
                    Ok(()) => Outcome::Deployed { generation },
                    Err(why) => {
                        self.phase(
                            "confirm",
                            &format!("could not confirm ({why}); waiting for the host"),
                        );
                        self.await_host(destination, host, &id, timeout + WATCHDOG_GRACE)
                            .await
                    }
                }
            }
            Err(why) => {
                self.phase("rollback", &format!("unhealthy: {why}; rolling back"));
                match host.output(&call::rollback(agent, &id, &why)).await {
                    Ok(out) => match agent::find_result(&out.stdout) {
                        Some(r) if r.outcome == AgentOutcome::RolledBack => {
                            Outcome::RolledBack { why: r.message }
                        }
                        Some(r) => Outcome::NeedsAttention { why: r.message },
                        None => Outcome::NeedsAttention {
                            why: format!("{why}; the rollback gave no result"),
                        },
                    },
                    Err(_) => {
                        self.await_host(destination, host, &id, timeout + WATCHDOG_GRACE)
                            .await
                    }
                }
            }
        }
    }

    /// The host already runs this system: records this deploy's revision
    /// with it when the host has another one recorded (a newer commit that
    /// changed nothing for this node), so that `--skip-superseded` later
    /// knows the host is at that commit. Only for a running system (not
    /// `boot`). A failure is only reported: the host is as it should be.
    async fn record_revision(&self, host: &dyn Host, status: &serde_json::Value) {
        let Some(revision) = &self.options.revision else {
            return;
        };
        if !self.options.goal.activates() || status["revision"].as_str() == Some(revision.as_str())
        {
            return;
        }
        let job = self.job;
        let cmd = call::record(
            &self.agent.program,
            &state::new_id(),
            job.node.as_ref(),
            &job.toplevel,
            revision,
            &self.options.audit,
        );
        let recorded = match host.output(&cmd).await {
            Ok(out) => match agent::find_result(&out.stdout) {
                Some(r) if r.outcome == AgentOutcome::Confirmed => Ok(r.message),
                Some(r) => Err(r.message),
                None => Err(out
                    .check()
                    .err()
                    .map_or("the agent gave no result".into(), |e| e.to_string())),
            },
            Err(err) => Err(err.to_string()),
        };
        match recorded {
            Ok(message) => self.phase("check", &message),
            Err(why) => self.phase(
                "check",
                &format!("could not record revision {}: {why}", revision.short()),
            ),
        }
    }

    /// A NEW connection to `destination`, opened after the activation (none
    /// for this machine).
    async fn fresh(&self, destination: Option<&Destination>) -> Option<Result<SshHost, String>> {
        let destination = destination?;
        Some(self.connect(destination).await)
    }

    async fn connect(&self, destination: &Destination) -> Result<SshHost, String> {
        SshHost::connect(destination, &self.ssh)
            .await
            .map_err(|e| format!("{e}: {}", crate::error::causes(&e)))
    }

    /// Confirms over a NEW connection (`fresh`, opened while the health
    /// checks ran; opened once more now if that failed, as sshd may have
    /// needed the time): a host whose sshd broke cannot be confirmed
    /// through a session that was open before. This machine (no
    /// `destination`) confirms directly.
    async fn confirm(
        &self,
        destination: Option<&Destination>,
        fresh: Option<Result<SshHost, String>>,
        local: &dyn Host,
        id: &str,
    ) -> Result<(), String> {
        let fresh = match (destination, fresh) {
            (None, _) => {
                return local
                    .run(&call::confirm(&self.agent.program, id))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
            (Some(_), Some(Ok(fresh))) => fresh,
            (Some(destination), _) => self.connect(destination).await?,
        };
        let confirmed = fresh.run(&call::confirm(&self.agent.program, id)).await;
        let _ = fresh.close().await;
        confirmed.map(|_| ()).map_err(|e| e.to_string())
    }

    /// After the connection was lost: polls the host over fresh connections
    /// until its deployment is settled (the watchdog rolled it back) or
    /// `limit` passes.
    async fn await_host(
        &self,
        destination: Option<&Destination>,
        local: &dyn Host,
        id: &str,
        limit: Duration,
    ) -> Outcome {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), self.show(destination, local, id));
            if let Ok(Some(d)) = attempt.await {
                if d.is_settled() {
                    return match d.status {
                        Status::Confirmed => Outcome::Deployed {
                            generation: d.to_generation,
                        },
                        Status::RolledBack => Outcome::RolledBack {
                            why: format!(
                                "the host rolled itself back to generation {} ({})",
                                d.from_generation.map_or("?".into(), |g| g.to_string()),
                                d.failure_phase.as_deref().unwrap_or("unconfirmed")
                            ),
                        },
                        _ => Outcome::NeedsAttention {
                            why: format!("deployment {id} ended as {}", d.status.as_str()),
                        },
                    };
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Outcome::NeedsAttention {
            why: format!(
                "lost the host during deployment {id} and it did not come back within {}s; \
                 its watchdog rolls it back unless it was confirmed",
                limit.as_secs()
            ),
        }
    }

    async fn show(
        &self,
        destination: Option<&Destination>,
        local: &dyn Host,
        id: &str,
    ) -> Option<Deployment> {
        let Some(destination) = destination else {
            let out = local.run(&call::show(&self.agent.program, id)).await.ok()?;
            let event = agent::find_events(&out.stdout, agent::EVENT_DEPLOYMENT).pop()?;
            return serde_json::from_value(event).ok();
        };
        let settings = SshSettings {
            connect_timeout: Duration::from_secs(3),
            ..self.ssh.clone()
        };
        let host = SshHost::connect(destination, &settings).await.ok()?;
        let out = host.run(&call::show(&self.agent.program, id)).await.ok();
        let _ = host.close().await;
        let event = agent::find_events(&out?.stdout, agent::EVENT_DEPLOYMENT).pop()?;
        serde_json::from_value(event).ok()
    }
}

/// A host's log as a person reads it: the agent's phase events as words,
/// its other events left out (the outcome already says them), the last
/// [`LOG_TAIL`] lines.
fn readable(log: &[String]) -> Vec<String> {
    let lines: Vec<String> = log
        .iter()
        .filter_map(|line| {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                return Some(line.clone());
            };
            (event["event"] == agent::EVENT_PHASE).then(|| {
                format!(
                    "{}: {}",
                    event["phase"].as_str().unwrap_or("?"),
                    event["message"].as_str().unwrap_or("")
                )
            })
        })
        .collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].to_vec()
}

/// Whether the agent's status says the host already runs `toplevel` with
/// nothing in flight.
fn already_running(status: &serde_json::Value, toplevel: &StorePath, goal: Goal) -> bool {
    if !status["active"].is_null() {
        return false;
    }
    let profile = status["profile"]["path"].as_str();
    let running = status["running"].as_str();
    let target = Some(toplevel.as_str());
    match goal {
        Goal::Boot => profile == target,
        Goal::DryActivate => false,
        // Where /run/current-system exists it is the truth; the lab's plain
        // hosts have only the profile.
        Goal::Switch => profile == target && (running.is_none() || running == target),
        Goal::Test => running == target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-nixos-system-web1";

    #[test]
    fn no_op_only_when_profile_and_running_match_and_nothing_is_in_flight() {
        let p = StorePath::new(P).unwrap();
        let status = |profile: &str, running: Option<&str>, active: bool| {
            serde_json::json!({
                "profile": { "number": 3, "path": profile },
                "running": running,
                "active": if active { serde_json::json!({"id": "x"}) } else { serde_json::Value::Null },
            })
        };
        assert!(already_running(&status(P, None, false), &p, Goal::Switch));
        assert!(already_running(
            &status(P, Some(P), false),
            &p,
            Goal::Switch
        ));
        assert!(!already_running(
            &status(P, Some("/nix/store/other"), false),
            &p,
            Goal::Switch
        ));
        assert!(!already_running(
            &status("/nix/store/other", None, false),
            &p,
            Goal::Switch
        ));
        assert!(!already_running(&status(P, None, true), &p, Goal::Switch));
        assert!(already_running(
            &status(P, Some("/x"), false),
            &p,
            Goal::Boot
        ));
    }

    #[test]
    fn outcomes_read_as_words() {
        assert_eq!(
            Outcome::Deployed {
                generation: Some(3)
            }
            .describe(),
            "deployed (generation 3)"
        );
        assert!(Outcome::NeedsAttention { why: "x".into() }
            .describe()
            .starts_with("NEEDS ATTENTION"));
        assert!(Outcome::Unchanged { why: "x".into() }.ok());
        assert!(!Outcome::Skipped { why: "x".into() }.ok());
    }
}
