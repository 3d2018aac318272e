//! System deploys on the host: activate a NixOS generation with magic
//! rollback, confirm it, roll it back, and roll back at boot what was never
//! confirmed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::call::Audit;
use super::config::{self, Signatures};
use super::{AgentResult, Outcome, EVENT_PHASE};
use crate::flake::Revision;
use crate::nix::keys;
use crate::nix::profile::{self, Generation};
use crate::nix::{self, StorePath};
use crate::output::Printer;
use crate::process::{self, Cmd, CommandError, JobLog, Via};
use crate::state::{
    self, Deployment, Kind, NewDeployment, StateError, Status, Store, SystemActivity,
};

/// How many refused paths a refusal names.
const REFUSED_SHOWN: usize = 5;
/// How often the watchdog looks at the deployment.
const WATCHDOG_POLL: Duration = Duration::from_millis(200);
/// The goal of a deployment that found the host already running its
/// system and only recorded its revision.
pub const GOAL_UNCHANGED: &str = "unchanged";
/// How long `switch-to-configuration` may run unless the node says otherwise.
pub const DEFAULT_ACTIVATION_TIMEOUT: Duration = Duration::from_secs(600);
/// `switch-to-configuration` exits 4 when units failed: that is a failure.
const FAILED_UNITS: i32 = 4;

/// What `switch-to-configuration` is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    /// Make it the boot default and activate it now
    Switch,
    /// Make it the boot default only
    Boot,
    /// Activate it now, without making it the boot default
    Test,
    /// Show what activating would do, change nothing
    DryActivate,
}

impl Goal {
    pub fn as_str(self) -> &'static str {
        match self {
            Goal::Switch => "switch",
            Goal::Boot => "boot",
            Goal::Test => "test",
            Goal::DryActivate => "dry-activate",
        }
    }

    /// Whether the profile gets a new generation.
    fn sets_profile(self) -> bool {
        matches!(self, Goal::Switch | Goal::Boot)
    }

    /// Whether the running system changes, so magic rollback applies.
    pub fn activates(self) -> bool {
        matches!(self, Goal::Switch | Goal::Test)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("deployment {id} is {status}, not pending: it can no longer be confirmed")]
    NotPending { id: String, status: &'static str },
    #[error(
        "no previous generation was recorded for deployment {0}: there is nothing to roll back to"
    )]
    NothingToRollBackTo(String),
    #[error("{profile} has no generation {number} (it has {known})")]
    UnknownGeneration {
        profile: String,
        number: u64,
        known: String,
    },
}

/// What the deployer asks `agent activate` to do.
#[derive(Clone, Debug)]
pub struct Activation {
    pub id: String,
    pub node: String,
    pub path: StorePath,
    pub goal: Goal,
    pub confirm_timeout: Duration,
    /// How long `switch-to-configuration` may run: past it the agent stops
    /// it and rolls back to the recorded generation.
    pub activation_timeout: Duration,
    pub magic_rollback: bool,
    pub actor: String,
    pub reason: Option<String>,
    pub ci_run_url: Option<String>,
    /// The flake revision the system was built from, recorded with it.
    pub revision: Option<Revision>,
    /// Activate only if the host still runs a system recorded with this
    /// revision: what `--skip-superseded` saw, so that a newer system
    /// deployed since is not replaced.
    pub expect_revision: Option<Revision>,
    /// The signatures of the system's closure, as the deployer has them:
    /// added to the paths this host has before the signature check, since
    /// `nix copy` skips a path the host had, signatures and all.
    pub signatures: Vec<crate::nix::signatures::SignedPath>,
}

/// What a host runs and what it is doing, for `berth status`.
#[derive(Clone, Debug, Serialize)]
pub struct HostStatus {
    pub profile: Option<Generation>,
    /// `/run/current-system`, when the host has one.
    pub running: Option<PathBuf>,
    /// The flake revision of the system the host runs, as recorded when it
    /// was deployed as this node; none when it was not recorded (an older
    /// berth, a flake without a commit, a system deployed without berth).
    pub revision: Option<Revision>,
    pub active: Option<Deployment>,
    pub last: Option<Deployment>,
    pub generations: Vec<Generation>,
}

/// The agent of one host: its state store and system profile.
pub struct Agent {
    store: Store,
    state_dir: PathBuf,
    profile: PathBuf,
    /// The host's agent.json: which keys a system must be signed with.
    config: PathBuf,
    printer: Printer,
    pub(super) log: JobLog,
    /// Whether this activation has changed the profile or the running
    /// system yet (an error before that needs no rollback).
    touched: bool,
    /// How long a `switch-to-configuration` may run, the activation's or
    /// a rollback's.
    activation_timeout: Duration,
}

impl Agent {
    pub fn open(state_dir: &Path, profile: &Path) -> Result<Agent, AgentError> {
        Ok(Agent {
            store: Store::open(state_dir)?,
            state_dir: state_dir.to_owned(),
            profile: profile.to_owned(),
            config: PathBuf::from(config::AGENT_CONFIG),
            printer: Printer::new(true, false),
            log: JobLog::new(),
            touched: false,
            activation_timeout: DEFAULT_ACTIVATION_TIMEOUT,
        })
    }

    fn phase(&self, id: &str, phase: &str, message: &str) {
        let _ = self.store.add_event(id, phase, message);
        self.printer.event(
            EVENT_PHASE,
            &serde_json::json!({ "id": id, "phase": phase, "message": message }),
        );
    }

    pub(super) async fn run(&self, cmd: &Cmd) -> Result<process::Output, CommandError> {
        process::output(cmd, Via::Local, &self.log).await?.check()
    }

    fn current(&self) -> Result<Option<Generation>, AgentError> {
        profile::current(&self.profile).map_err(|source| AgentError::Io {
            what: format!("read {}", self.profile.display()),
            source,
        })
    }

    /// Records the deployment, arms the watchdog, sets the profile and runs
    /// `switch-to-configuration`. A failed activation is rolled back here;
    /// a good one is left pending until `confirm` (or the watchdog).
    pub async fn activate(&mut self, a: &Activation) -> Result<AgentResult, AgentError> {
        let result = self.activate_unpublished(a).await;
        self.publish_settled();
        result
    }

    async fn activate_unpublished(&mut self, a: &Activation) -> Result<AgentResult, AgentError> {
        let before = self.current()?;
        let new = NewDeployment {
            id: a.id.clone(),
            kind: Kind::System,
            target: a.node.clone(),
            from_path: before
                .as_ref()
                .map(|g| g.path.to_string_lossy().into_owned()),
            from_generation: before.as_ref().map(|g| g.number),
            to_path: a.path.to_string(),
            goal: a.goal.as_str().to_owned(),
            actor: a.actor.clone(),
            reason: a.reason.clone(),
            ci_run_url: a.ci_run_url.clone(),
            revision: a.revision.as_ref().map(Revision::to_string),
        };
        self.recover().await?;
        // A host runs one system: an unfinished deployment of any node name
        // holds it (begin checks the same name in one transaction).
        let other = self
            .store
            .all_active()?
            .into_iter()
            .find(|d| d.kind == Kind::System && d.target != new.target);
        // `berth lock acquire --host` holds the host against everyone else.
        if let Some(lock) = self
            .store
            .lock_holder(state::HOST_SCOPE)?
            .filter(|h| h.owner != a.actor)
        {
            return Ok(AgentResult {
                outcome: Outcome::Busy,
                message: format!("the host is locked by {lock}"),
                deployment: None,
            });
        }
        // Checked just before `begin`: for a deploy to slip in between, it
        // would have to begin, activate and be confirmed in that instant.
        if let Some(expected) = &a.expect_revision {
            let now = self.running_revision(&a.node)?;
            if now.as_ref() != Some(expected) {
                return Ok(AgentResult {
                    outcome: Outcome::Busy,
                    message: format!(
                        "the host's system changed since berth checked it: it ran {}, now {}; \
                         deploy again to check again",
                        expected.short(),
                        now.as_ref()
                            .map_or("a system with no recorded revision", Revision::short)
                    ),
                    deployment: None,
                });
            }
        }
        let begun = match other {
            Some(holder) => Err(StateError::Busy {
                holder: Box::new(holder),
            }),
            None => self.store.begin(&new),
        };
        let deployment = match begun {
            Ok(d) => d,
            Err(StateError::Busy { holder }) => {
                return Ok(AgentResult {
                    outcome: Outcome::Busy,
                    message: StateError::Busy {
                        holder: holder.clone(),
                    }
                    .to_string(),
                    deployment: serde_json::to_value(&*holder).ok(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let id = deployment.id.clone();
        self.publish_working(&deployment, "activating");
        // Once recorded, an error must not leave the deployment unfinished
        // (it would hold the host): undo what was done and record why.
        self.touched = false;
        match self.activate_recorded(&id, a, before.as_ref()).await {
            Ok(result) => Ok(result),
            Err(err) if self.touched => self.fail(&id, "agent", &err.to_string()).await,
            Err(err) => {
                let why = err.to_string();
                self.phase(&id, "agent", &why);
                let d = self.store.set_status(&id, Status::Failed, Some("agent"))?;
                Ok(AgentResult::of(&d, format!("{why}; nothing was changed")))
            }
        }
    }

    async fn activate_recorded(
        &mut self,
        id: &str,
        a: &Activation,
        before: Option<&Generation>,
    ) -> Result<AgentResult, AgentError> {
        let id = id.to_owned();
        self.store.set_agent_pid(&id, std::process::id())?;
        let rollback_point = match before {
            Some(g) => format!("generation {} ({})", g.number, g.path.display()),
            None => "none (first deploy)".to_owned(),
        };
        self.phase(
            &id,
            "recorded",
            &format!("rollback point: {rollback_point}"),
        );
        // Before anything changes: a refused system leaves the host as it
        // was, recorded as failed in phase `verify`.
        if !a.signatures.is_empty() {
            let offered = self.add_signatures(&a.signatures).await?;
            self.phase(
                &id,
                "verify",
                &format!("added the signatures the deployer has to {offered} paths here"),
            );
        }
        if let Some(why) = self.verify(&id, &a.path).await? {
            self.phase(&id, "verify", &why);
            let d = self.store.set_status(&id, Status::Failed, Some("verify"))?;
            return Ok(AgentResult::of(&d, format!("{why}; nothing was changed")));
        }

        let magic = a.magic_rollback && a.goal.activates();
        if magic {
            self.start_watchdog(&id).await?;
            self.phase(
                &id,
                "watchdog",
                "armed: rolls back unless confirmed in time",
            );
        }
        self.touched = true;
        if a.goal.sets_profile() {
            if let Err(err) = self
                .run(&nix::set_profile(&self.profile_str(), &a.path))
                .await
            {
                return self.fail(&id, "profile", &err.to_string()).await;
            }
            if let Some(g) = self.current()? {
                self.store.set_to_generation(&id, g.number)?;
                self.phase(&id, "profile", &format!("generation {}", g.number));
            }
        }
        // Units that had failed before this deploy (a backup whose disk is
        // away) are not this deploy's failure.
        let checks_units = a.goal.activates() && Path::new("/run/systemd/system").is_dir();
        let failed_before = if checks_units {
            self.failed_units().await?
        } else {
            Vec::new()
        };
        let switch = profile::switch_to_configuration(a.path.as_ref(), a.goal.as_str())
            .timeout(a.activation_timeout);
        self.activation_timeout = a.activation_timeout;
        let out = match process::output(&switch, Via::Local, &self.log).await {
            Ok(out) => out,
            Err(err @ CommandError::TimedOut { .. }) => {
                return self.fail(&id, "activate", &err.to_string()).await
            }
            Err(err) => return Err(err.into()),
        };
        if !out.status.success() {
            let why = if out.status.code() == Some(FAILED_UNITS) {
                "switch-to-configuration reported failed units (exit 4)".to_owned()
            } else {
                out.check().unwrap_err().to_string()
            };
            return self.fail(&id, "activate", &why).await;
        }
        self.phase(
            &id,
            "activate",
            &format!("switch-to-configuration {} succeeded", a.goal.as_str()),
        );
        // Where systemd runs, no unit may have failed since the switch
        // began (checked here, on the host, so the deployer needs no round
        // trip for it).
        if checks_units {
            let failed: Vec<String> = self
                .failed_units()
                .await?
                .into_iter()
                .filter(|u| !failed_before.contains(u))
                .collect();
            if !failed.is_empty() {
                let why = format!("failed units after the switch: {}", failed.join(", "));
                return self.fail(&id, "activate", &why).await;
            }
        }

        if magic {
            let deadline = now() + a.confirm_timeout.as_secs() as i64;
            self.store.set_confirm_deadline(&id, deadline)?;
            return match self
                .store
                .transition(&id, &[Status::Activating], Status::Pending, None)?
            {
                Some(d) => Ok(AgentResult::of(
                    &d,
                    format!(
                        "activated; rolls back unless confirmed within {}s",
                        a.confirm_timeout.as_secs()
                    ),
                )),
                None => {
                    let d = self.store.get(&id)?;
                    Ok(AgentResult::of(
                        &d,
                        "the watchdog rolled it back before it was confirmed",
                    ))
                }
            };
        }
        let d = self
            .store
            .transition(&id, &[Status::Activating], Status::Confirmed, None)?
            .unwrap_or(self.store.get(&id)?);
        Ok(AgentResult::of(&d, format!("{} done", a.goal.as_str())))
    }

    /// Checks `path` against the host's agent.json: `None` when it may be
    /// activated, else why not. With trusted keys, the system itself must
    /// be signed by one of them (built on the host is not enough: anyone
    /// who can start a build could make one), and every path of its
    /// closure must be intact and signed by one of them or a key the
    /// host's Nix trusts, or have been built on the host. A config that is
    /// there but unusable refuses everything.
    pub(super) async fn verify(
        &self,
        id: &str,
        path: &StorePath,
    ) -> Result<Option<String>, AgentError> {
        let trust = match config::load(&self.config) {
            Ok(Signatures::NotRequired) => return Ok(None),
            Ok(Signatures::Required(trust)) => trust,
            Err(err) => {
                let cause = crate::error::causes(&err);
                let cause = if cause.is_empty() {
                    String::new()
                } else {
                    format!(": {cause}")
                };
                return Ok(Some(format!(
                    "refusing to activate: {err}{cause}; it says which keys a system must be \
                     signed with, and the agent will not guess (hint: rebuild the host's \
                     configuration with berth's NixOS module, which writes it)"
                )));
            }
        };
        let names = keys::names(&trust.keys);
        self.phase(
            id,
            "verify",
            &format!("checking the signatures of {path} (trusted keys: {names})"),
        );
        let hint = format!(
            "hint: sign it with `berth deploy --sign-key FILE`, FILE the secret key of {}",
            if trust.keys.len() == 1 {
                names.clone()
            } else {
                format!("one of {names}")
            }
        );
        let out = process::output(
            &nix::verify_signed(path, &trust.keys),
            Via::Local,
            &self.log,
        )
        .await?;
        if !out.status.success() {
            // An untrusted toplevel says no more than this; anything else
            // (a path that is not valid here) is shown.
            let untrusted = keys::refused_paths(&String::from_utf8_lossy(&out.stderr))
                .iter()
                .any(|r| r.why == "untrusted");
            let more = if untrusted {
                String::new()
            } else {
                unexplained(&out)
            };
            return Ok(Some(format!(
                "refusing {path}: it is not signed by a key this host trusts ({names}){more} ({hint})"
            )));
        }
        let closure_keys = trust.closure_keys();
        let out = process::output(
            &nix::verify_closure(path, &closure_keys),
            Via::Local,
            &self.log,
        )
        .await?;
        if !out.status.success() {
            let refused = keys::refused_paths(&String::from_utf8_lossy(&out.stderr));
            let mut shown: Vec<String> = refused
                .iter()
                .take(REFUSED_SHOWN)
                .map(|r| format!("{} ({})", r.path, r.why))
                .collect();
            if refused.len() > REFUSED_SHOWN {
                shown.push(format!("and {} more", refused.len() - REFUSED_SHOWN));
            }
            let what = if shown.is_empty() {
                unexplained(&out)
            } else {
                format!(": {}", shown.join(", "))
            };
            // A changed path is repaired, not signed again.
            let hint = if refused.iter().any(|r| r.why == "modified") {
                "hint: a modified path was changed in this host's store after it was built or \
                 copied; repair it (`nix-store --repair-path PATH`, or delete it and deploy \
                 again) and find out who changed it"
                    .to_owned()
            } else {
                hint
            };
            return Ok(Some(format!(
                "refusing {path}: paths of its closure lack a valid signature of a key this \
                 host trusts ({}) or were changed after they were signed{what} ({hint})",
                keys::names(&closure_keys)
            )));
        }
        self.phase(id, "verify", &format!("signed by a trusted key ({names})"));
        Ok(None)
    }

    /// The host already runs `path`, the system `revision` builds (the
    /// deployer found nothing to activate): records that as a confirmed
    /// deployment with goal `unchanged`, so the host's revision stays true
    /// — `--skip-superseded` must not take a host whose newer commit
    /// changed nothing for an older one. Refused (busy) while another
    /// deployment is unfinished, and when the host runs something else.
    pub fn record(
        &mut self,
        id: &str,
        node: &str,
        path: &StorePath,
        revision: &Revision,
        audit: &Audit,
    ) -> Result<AgentResult, AgentError> {
        let running = self.running_system()?;
        if running.as_deref() != Some(Path::new(path.as_str())) {
            return Ok(AgentResult {
                outcome: Outcome::Busy,
                message: format!("the host does not run {path}: nothing recorded"),
                deployment: None,
            });
        }
        // A host runs one system: while any deployment is unfinished, what
        // it runs is about to change.
        if let Some(holder) = self
            .store
            .all_active()?
            .into_iter()
            .find(|d| d.kind == Kind::System)
        {
            return Ok(AgentResult {
                outcome: Outcome::Busy,
                message: StateError::Busy {
                    holder: Box::new(holder),
                }
                .to_string(),
                deployment: None,
            });
        }
        let current = self.current()?;
        let new = NewDeployment {
            id: id.to_owned(),
            kind: Kind::System,
            target: node.to_owned(),
            from_path: Some(path.to_string()),
            from_generation: current.as_ref().map(|g| g.number),
            to_path: path.to_string(),
            goal: GOAL_UNCHANGED.to_owned(),
            actor: audit.actor.clone(),
            reason: audit.reason.clone(),
            ci_run_url: audit.ci_run_url.clone(),
            revision: Some(revision.to_string()),
        };
        self.store.begin(&new)?;
        if let Some(g) = &current {
            self.store.set_to_generation(id, g.number)?;
        }
        let d = self.store.set_status(id, Status::Confirmed, None)?;
        let message = format!(
            "already running this system; recorded revision {}",
            revision.short()
        );
        self.phase(id, "recorded", &message);
        Ok(AgentResult::of(&d, message))
    }

    /// Finishes a rollback whose process died before it was done (killed;
    /// a host that lost power has the boot check do it): the next
    /// activation does it first, so it starts from the recorded generation.
    async fn recover(&mut self) -> Result<(), AgentError> {
        for d in self.store.all_active()? {
            let roller_gone = !d.agent_pid.is_some_and(process::alive);
            if d.kind == Kind::System && d.is_rolling_back() && roller_gone {
                let why = "its rollback was cut short";
                self.phase(&d.id, "recover", &format!("{why}; finishing it"));
                self.roll_back(d, why).await?;
            }
        }
        Ok(())
    }

    /// Publishes that this process works on system deployment `d` now
    /// (`status`: what it does), so app deploys on the host wait for it
    /// ([`SystemActivity`]).
    fn publish_working(&self, d: &Deployment, status: &str) {
        let pid = std::process::id();
        self.publish(Some(&SystemActivity {
            id: d.id.clone(),
            node: d.target.clone(),
            actor: d.actor.clone(),
            started: d.started,
            status: status.to_owned(),
            pid: Some(pid),
            pid_start: process::start_time(pid),
            until: None,
        }));
    }

    /// Publishes what is still in flight once this process is done with
    /// it: a pending deployment (until its confirmation deadline), one
    /// that another live agent activates, or nothing.
    fn publish_settled(&self) {
        let me = std::process::id();
        let active = match self.store.all_active() {
            Ok(all) => all.into_iter().find(|d| d.kind == Kind::System),
            Err(e) => {
                tracing::warn!("could not read the host's deployments: {e}");
                return;
            }
        };
        let activity = active.and_then(|d| {
            let (pid, until) = match d.status {
                Status::Pending => (None, Some(d.confirm_deadline.unwrap_or_else(now))),
                _ => (d.agent_pid.filter(|&p| p != me && process::alive(p)), None),
            };
            (pid.is_some() || until.is_some()).then(|| SystemActivity {
                id: d.id.clone(),
                node: d.target.clone(),
                actor: d.actor.clone(),
                started: d.started,
                status: d.status.as_str().to_owned(),
                pid,
                pid_start: pid.and_then(process::start_time),
                until,
            })
        });
        self.publish(activity.as_ref());
    }

    fn publish(&self, activity: Option<&SystemActivity>) {
        if let Err(e) = state::publish_system_activity(&self.state_dir, activity) {
            tracing::warn!(
                "could not publish the host's system deployment in {}: {e}",
                state::system_activity_file(&self.state_dir).display()
            );
        }
    }

    fn profile_str(&self) -> String {
        self.profile.to_string_lossy().into_owned()
    }

    /// A failed activation: claim the deployment for rollback, then roll back.
    async fn fail(&mut self, id: &str, phase: &str, why: &str) -> Result<AgentResult, AgentError> {
        self.phase(id, phase, why);
        match self.store.transition(
            id,
            &[Status::Activating, Status::Pending],
            Status::RolledBack,
            Some(phase),
        )? {
            Some(d) => {
                self.publish_working(&d, "rolling back");
                self.roll_back(d, why).await
            }
            None => Ok(AgentResult::of(&self.store.get(id)?, why)),
        }
    }

    /// Puts the host back on the deployment's recorded generation, deletes the
    /// failed one, and records how that went. The deployment was already
    /// moved to `RolledBack` by whoever claimed it.
    async fn roll_back(&mut self, d: Deployment, why: &str) -> Result<AgentResult, AgentError> {
        let id = d.id.clone();
        // Whoever rolls back is who recovery waits for (see `recover`).
        self.store.set_agent_pid(&id, std::process::id())?;
        match self.restore(&d).await {
            Ok(message) => {
                self.phase(&id, "rollback", &message);
                let d = self.store.set_status(&id, Status::RolledBack, None)?;
                Ok(AgentResult::of(&d, format!("{why}; {message}")))
            }
            Err(err) => {
                let message = format!("rollback failed: {err}");
                self.phase(&id, "rollback", &message);
                let d = self
                    .store
                    .set_status(&id, Status::RollbackFailed, Some("rollback"))?;
                Ok(AgentResult::of(&d, format!("{why}; {message}")))
            }
        }
    }

    async fn restore(&self, d: &Deployment) -> Result<String, AgentError> {
        let (Some(generation), Some(path)) = (d.from_generation, d.from_path.as_deref()) else {
            return Err(AgentError::NothingToRollBackTo(d.id.clone()));
        };
        self.run(&profile::switch_generation(&self.profile, generation))
            .await?;
        // The generation it goes back to may hang too: not forever.
        self.run(
            &profile::switch_to_configuration(Path::new(path), "switch")
                .timeout(self.activation_timeout),
        )
        .await?;
        let mut message = format!("back on generation {generation}");
        // The failed generation: the one recorded, or — when the agent died
        // between setting the profile and recording it — every newer one
        // that points at this deployment's system.
        let list = profile::list(&self.profile).map_err(|source| AgentError::Io {
            what: format!("list the generations of {}", self.profile.display()),
            source,
        })?;
        let failed: Vec<u64> = list
            .iter()
            .filter(|g| {
                g.number > generation
                    && (Some(g.number) == d.to_generation || g.path == Path::new(&d.to_path))
            })
            .map(|g| g.number)
            .collect();
        for number in &failed {
            self.run(&profile::delete_generation(&self.profile, *number))
                .await?;
        }
        if !failed.is_empty() {
            let numbers: Vec<String> = failed.iter().map(u64::to_string).collect();
            message.push_str(&format!("; deleted generation {}", numbers.join(", ")));
        }
        Ok(message)
    }

    /// Starts the watchdog so that it outlives this SSH session and a
    /// restart of sshd: a transient systemd unit where systemd runs, else a
    /// detached process.
    async fn start_watchdog(&self, id: &str) -> Result<(), AgentError> {
        let exe = std::env::current_exe().map_err(|source| AgentError::Io {
            what: "find the berth executable".into(),
            source,
        })?;
        let watchdog = Cmd::new(&exe)
            .args(["agent", "watchdog", "--id", id, "--state-dir"])
            .arg(&self.state_dir)
            .arg("--profile")
            .arg(&self.profile);
        if Path::new("/run/systemd/system").is_dir() {
            let unit = format!("berth-watchdog-{id}");
            // A transient unit gets systemd's PATH, not ours: the rollback
            // it may run needs the programs this agent finds (nix-env, the
            // activation's own).
            let mut cmd = Cmd::new("systemd-run").args(["--quiet", "--collect", "--unit", &unit]);
            if let Some(path) = std::env::var_os("PATH") {
                let mut setenv = std::ffi::OsString::from("--setenv=PATH=");
                setenv.push(path);
                cmd = cmd.arg(setenv);
            }
            let cmd = cmd.arg("--").args(watchdog.argv());
            self.run(&cmd).await?;
        } else {
            let log = self.state_dir.join(format!("watchdog-{id}.log"));
            process::spawn_detached(&watchdog, &log)?;
        }
        Ok(())
    }

    /// Waits until the deployment is confirmed or its time is up, and rolls
    /// it back in the second case (also when the activating agent died).
    pub async fn watchdog(&mut self, id: &str) -> Result<AgentResult, AgentError> {
        let result = self.watch(id).await;
        self.publish_settled();
        result
    }

    async fn watch(&mut self, id: &str) -> Result<AgentResult, AgentError> {
        loop {
            let d = self.store.get(id)?;
            let expired = match d.status {
                status if status.is_terminal() => {
                    return Ok(AgentResult::of(&d, "nothing to watch"));
                }
                Status::Pending => d.confirm_deadline.is_some_and(|t| now() >= t),
                _ => d.agent_pid.is_some_and(|pid| !process::alive(pid)),
            };
            if expired {
                let why = match d.status {
                    Status::Pending => "not confirmed in time",
                    _ => "the activating agent died",
                };
                if let Some(d) = self.store.transition(
                    id,
                    &[Status::Activating, Status::Pending],
                    Status::RolledBack,
                    Some("confirm"),
                )? {
                    self.phase(id, "watchdog", why);
                    self.publish_working(&d, "rolling back");
                    return self.roll_back(d, why).await;
                }
            }
            tokio::time::sleep(WATCHDOG_POLL).await;
        }
    }

    /// The deployer's health checks passed: keep this generation.
    pub fn confirm(&mut self, id: &str) -> Result<AgentResult, AgentError> {
        let result = self.confirm_unpublished(id);
        self.publish_settled();
        result
    }

    fn confirm_unpublished(&mut self, id: &str) -> Result<AgentResult, AgentError> {
        match self
            .store
            .transition(id, &[Status::Pending], Status::Confirmed, None)?
        {
            Some(d) => {
                self.phase(id, "confirm", "confirmed");
                Ok(AgentResult::of(&d, "confirmed"))
            }
            None => Err(AgentError::NotPending {
                id: id.to_owned(),
                status: self.store.get(id)?.status.as_str(),
            }),
        }
    }

    /// The deployer's health checks failed: roll back now.
    pub async fn rollback(&mut self, id: &str, why: &str) -> Result<AgentResult, AgentError> {
        let result = self.rollback_unpublished(id, why).await;
        self.publish_settled();
        result
    }

    async fn rollback_unpublished(
        &mut self,
        id: &str,
        why: &str,
    ) -> Result<AgentResult, AgentError> {
        match self.store.transition(
            id,
            &[Status::Activating, Status::Pending],
            Status::RolledBack,
            Some("health"),
        )? {
            Some(d) => {
                self.phase(id, "health", why);
                self.publish_working(&d, "rolling back");
                self.roll_back(d, why).await
            }
            None => Ok(AgentResult::of(&self.store.get(id)?, "already finished")),
        }
    }

    /// `berth rollback NODE [--to N]`: back to generation N, or the one
    /// before the current, recorded as a deployment of its own.
    pub async fn rollback_to(
        &mut self,
        id: &str,
        node: &str,
        to: Option<u64>,
        actor: &str,
    ) -> Result<AgentResult, AgentError> {
        let generations = profile::list(&self.profile).map_err(|source| AgentError::Io {
            what: format!("list the generations of {}", self.profile.display()),
            source,
        })?;
        let current = self.current()?;
        let current_number = current.as_ref().map(|g| g.number);
        let target = match to {
            Some(n) => generations.iter().find(|g| g.number == n),
            None => generations
                .iter()
                .rev()
                .find(|g| current_number.is_some_and(|c| g.number < c)),
        };
        let Some(target) = target.cloned() else {
            return Err(AgentError::UnknownGeneration {
                profile: self.profile_str(),
                number: to.unwrap_or(0),
                known: generations
                    .iter()
                    .map(|g| g.number.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let new = NewDeployment {
            id: id.to_owned(),
            kind: Kind::System,
            target: node.to_owned(),
            from_path: current
                .as_ref()
                .map(|g| g.path.to_string_lossy().into_owned()),
            from_generation: current_number,
            to_path: target.path.to_string_lossy().into_owned(),
            goal: "rollback".to_owned(),
            actor: actor.to_owned(),
            reason: Some(format!("rollback to generation {}", target.number)),
            ci_run_url: None,
            revision: self
                .store
                .revision_of(Kind::System, node, &target.path.to_string_lossy())?,
        };
        let d = self.store.begin(&new)?;
        self.store.set_to_generation(id, target.number)?;
        self.publish_working(&d, "rolling back");
        let switched = async {
            self.run(&profile::switch_generation(&self.profile, target.number))
                .await?;
            self.run(&profile::switch_to_configuration(&target.path, "switch"))
                .await
        }
        .await;
        let d = match switched {
            Ok(_) => {
                self.phase(id, "rollback", &format!("on generation {}", target.number));
                self.store.set_status(id, Status::Confirmed, None)?
            }
            Err(err) => {
                self.phase(id, "rollback", &err.to_string());
                self.store
                    .set_status(id, Status::Failed, Some("rollback"))?
            }
        };
        self.publish_settled();
        Ok(AgentResult::of(
            &d,
            format!("rollback to generation {}", target.number),
        ))
    }

    /// The units systemd lists as failed.
    async fn failed_units(&self) -> Result<Vec<String>, AgentError> {
        let listed = self
            .run(&Cmd::new("systemctl").args([
                "list-units",
                "--state=failed",
                "--no-legend",
                "--plain",
            ]))
            .await?
            .stdout_str();
        Ok(listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect())
    }

    /// At boot: a system deployment still activating or pending was never
    /// confirmed, so the host goes back to its recorded generation. (The
    /// NixOS module runs it only while the system is starting.)
    pub async fn boot_check(&mut self) -> Result<Vec<AgentResult>, AgentError> {
        let mut results = Vec::new();
        for d in self.store.all_active()? {
            if d.kind != Kind::System {
                continue;
            }
            if d.is_rolling_back() {
                let why = "its rollback was cut short; finished at boot";
                self.phase(&d.id, "boot-check", why);
                results.push(self.roll_back(d, why).await?);
                continue;
            }
            if let Some(d) = self.store.transition(
                &d.id,
                &[Status::Activating, Status::Pending],
                Status::RolledBack,
                Some("boot"),
            )? {
                let why = "found unconfirmed at boot";
                self.phase(&d.id, "boot-check", why);
                self.publish_working(&d, "rolling back");
                let rolled_back = self.roll_back(d, why).await;
                self.publish_settled();
                results.push(rolled_back?);
            }
        }
        self.publish_settled();
        Ok(results)
    }

    /// The system the host runs: `/run/current-system` where it exists (a
    /// `boot` deploy changes only the profile), else the profile's (the
    /// lab's plain hosts have no `/run/current-system`).
    fn running_system(&self) -> Result<Option<PathBuf>, AgentError> {
        match std::fs::canonicalize("/run/current-system") {
            Ok(path) => Ok(Some(path)),
            Err(_) => Ok(self.current()?.map(|g| g.path)),
        }
    }

    /// The revision recorded for the system the host runs, as `node`.
    fn running_revision(&self, node: &str) -> Result<Option<Revision>, AgentError> {
        let Some(path) = self.running_system()? else {
            return Ok(None);
        };
        let recorded = self
            .store
            .revision_of(Kind::System, node, &path.to_string_lossy())?;
        // The agent checked it before recording it; anything else is not
        // a revision berth can compare.
        Ok(recorded.and_then(|r| Revision::new(r).ok()))
    }

    pub fn status(&self, node: &str) -> Result<HostStatus, AgentError> {
        let generations = profile::list(&self.profile).unwrap_or_default();
        Ok(HostStatus {
            profile: self.current()?,
            running: std::fs::canonicalize("/run/current-system").ok(),
            revision: self.running_revision(node)?,
            active: self.store.active(Kind::System, node)?,
            last: self
                .store
                .history(Kind::System, Some(node), 1)?
                .into_iter()
                .next(),
            generations,
        })
    }

    pub fn show(&self, id: &str) -> Result<Deployment, AgentError> {
        Ok(self.store.get(id)?)
    }

    pub fn history(&self, node: Option<&str>, limit: usize) -> Result<Vec<Deployment>, AgentError> {
        Ok(self.store.history(Kind::System, node, limit)?)
    }
}

/// The end of a failed verify's stderr, when it named no path.
fn unexplained(out: &process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with("checking "));
    match last {
        Some(line) => format!(": {}", line.trim()),
        None => String::new(),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A new deployment id (the deployer makes it, so it can confirm later).
pub fn new_id() -> String {
    state::new_id()
}
