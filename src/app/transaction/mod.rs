//! The app deploy transaction, run on the host by the agent as the
//! service's own user (docs/app.md has the steps):
//! lock → fetch the exact revision → build `releases/<sha>` while the old
//! release serves → snapshot the databases → stop → migrate → swap
//! `current` → start → health. A failure after the stop restores the
//! snapshot and the previous release, checks health again and blocks the
//! revision.
//!
//! Each phase is recorded in the service's state database as it passes, so
//! when the agent is killed the next `app deploy`, `app status` or
//! `app rollback` of the service finishes or rolls back what it left.
//!
//! This file holds the requests, the agent and the deploy's steps;
//! `data.rs` the steps on the service's data (snapshot, undo, restore),
//! `units.rs` stopping and starting the units, `rollback.rs` rollback and
//! status, `scale.rs` `app scale`, `error.rs` the errors.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::changes::{Changes, Filter};
use super::manifest::{Layout, Manifest};
use super::release::{self, ReleaseError, Repo, Wanted};
use super::snapshot::{self, Snapshot, SnapshotError};
use super::unit::{self, HealthCheck, UnitState};
use crate::agent::{AgentResult, Outcome, EVENT_PHASE, EVENT_WARNING};
use crate::output::Printer;
use crate::process::{self, CommandError, JobLog};
use crate::state::{
    self, service_scope, Blocked, Deployment, Kind, LockError, LockHolder, NewDeployment,
    StateError, Status, Store,
};

/// The goal recorded for each kind of app deployment.
pub const GOAL_DEPLOY: &str = "app";
pub const GOAL_ROLLBACK: &str = "app-rollback";
pub const GOAL_RESTORE: &str = "restore";
/// `berth app scale`: the same release, another count of instances.
pub const GOAL_SCALE: &str = "app-scale";

/// The event `app scale` reports the counts in.
pub const EVENT_SCALE: &str = "scale";

/// The event that reports a dead agent's deployment, settled before this
/// command's own work.
pub const EVENT_RECOVERED: &str = "recovered";

/// The event that names the blocked revision `app unblock` cleared.
pub const EVENT_UNBLOCKED: &str = "unblocked";

/// The event that says what a deploy changes for the service
/// ([`Changes`]).
pub const EVENT_CHANGES: &str = "changes";

/// The phase recorded when a deploy skips its snapshot
/// (`--skip-snapshot`), naming the data left unprotected; history reads it.
pub const SNAPSHOT_SKIPPED: &str = "snapshot-skipped";

/// The phase recorded right before the service is first touched: an
/// interrupted deployment that reached it must be rolled back.
const TOUCHED: &str = "stop";
/// The phase recorded once the new release passed its health check: an
/// interrupted deployment that reached it is finished, not rolled back.
const HEALTHY: &str = "healthy";
/// The phase recorded when an undo begins.
const ROLLBACK: &str = "rollback";
/// Why recovery undoes a deployment.
const AGENT_DIED: &str = "its agent died mid-deploy";

mod data;
mod error;
mod rollback;
mod scale;
mod units;

use data::{describe, replaced_tag};
use error::kept_list;
pub use error::AppError;
use units::kill_leftovers;
pub use units::lead_process_group;

/// What `app deploy` asks for.
#[derive(Clone, Debug)]
pub struct DeployRequest {
    pub id: String,
    pub wanted: Wanted,
    pub actor: String,
    pub reason: Option<String>,
    pub ci_run_url: Option<String>,
    pub lock_wait: Duration,
    /// Deploy a blocked revision, or one off the branch.
    pub force: bool,
    /// Do nothing when the service already runs a descendant of the
    /// revision (a newer deploy got there first).
    pub skip_superseded: bool,
    /// Do nothing when the revision changes none of the manifest's `paths`
    /// since the one the service runs.
    pub skip_untouched: bool,
    /// Take no snapshot of the data before the service is touched: a
    /// failed deploy then puts the release back but not the data.
    pub skip_snapshot: bool,
    pub dry_run: bool,
}

/// `app deploy --skip-snapshot`: the deployer runs in CI (`CI` is set
/// there), and whether it was told that skipping is fine there.
#[derive(Clone, Copy, Debug, Default)]
pub struct SkipSnapshotGuard {
    pub in_ci: bool,
    pub allowed_in_ci: bool,
}

/// Refuses `--skip-snapshot` in CI unless the flag or the manifest's
/// `allowSkipSnapshot` allows it, or the service declares no data (there
/// is nothing to lose); checked before anything is touched.
pub fn check_skip_snapshot(manifest: &Manifest, guard: SkipSnapshotGuard) -> Result<(), AppError> {
    let data = manifest.data.names();
    if guard.in_ci && !guard.allowed_in_ci && !manifest.allow_skip_snapshot && !data.is_empty() {
        return Err(AppError::SkipSnapshotInCi {
            service: manifest.service.clone(),
            data,
        });
    }
    Ok(())
}

/// What `app rollback` asks for.
#[derive(Clone, Debug)]
pub struct RollbackRequest {
    pub id: String,
    /// A kept release (full or abbreviated name); default the previous one.
    pub to: Option<String>,
    /// Also put back the data as it was before the release being left was
    /// deployed.
    pub restore_data: bool,
    pub actor: String,
    pub reason: Option<String>,
    pub ci_run_url: Option<String>,
    pub lock_wait: Duration,
}

/// `app deploy --dry-run`: what a deploy would do.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub service: String,
    pub from: Option<String>,
    pub to: String,
    pub unchanged: bool,
    pub build: bool,
    pub databases: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    /// PostgreSQL databases, by name.
    pub postgres: Vec<String>,
    pub migrate: Option<String>,
    pub lock: Option<LockHolder>,
    /// What the revision changes for the service (when it runs one).
    pub changes: Option<Changes>,
    /// `--skip-snapshot`: the data would not be snapshotted.
    pub skip_snapshot: bool,
}

/// What `app scale` asks for.
#[derive(Clone, Debug)]
pub struct ScaleRequest {
    pub id: String,
    /// The count of instances to run.
    pub instances: u32,
    pub actor: String,
    pub reason: Option<String>,
    pub ci_run_url: Option<String>,
    pub lock_wait: Duration,
}

/// One instance in `app status`.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub instance: u32,
    pub unit: String,
    pub state: Option<UnitState>,
}

/// `app status`.
#[derive(Clone, Debug, Serialize)]
pub struct AppStatus {
    pub service: String,
    pub unit: String,
    /// The first instance's state (the unit's, without instances).
    pub state: Option<UnitState>,
    /// How many instances should run now (the manifest's count, or what
    /// `app scale` left), and each one's state.
    pub running_instances: u32,
    pub max_instances: u32,
    pub instances: Vec<InstanceStatus>,
    pub current: Option<String>,
    pub releases: Vec<String>,
    pub active: Option<Deployment>,
    pub last: Option<Deployment>,
    pub lock: Option<LockHolder>,
    /// Revisions refused without `--force`, each with the deployment that
    /// failed, why and when (oldest first).
    pub blocked: Vec<Blocked>,
    /// What this call recovered first, if an agent had died mid-deploy.
    pub recovered: Option<AgentResult>,
    /// A socket-activated service's hold ([`Layout::hold`]), while berth
    /// keeps the unit from starting: during a deploy, or after one whose
    /// agent died or whose first release failed.
    pub hold: Option<PathBuf>,
    /// The newest complete snapshot of the service's data.
    pub latest_snapshot: Option<Snapshot>,
}

/// One deploy of `app history`.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub deployment: Deployment,
    /// It ran with `--skip-snapshot`: its data was not protected.
    pub snapshot_skipped: bool,
}

/// The agent's side of one service.
pub struct AppAgent {
    store: Store,
    manifest: Manifest,
    layout: Layout,
    printer: Printer,
    log: JobLog,
    /// Where the host's own state is (its host-wide lock).
    host_state: PathBuf,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let what = what.into();
    move |source| AppError::Release(ReleaseError::Io { what, source })
}

impl AppAgent {
    pub fn open(manifest: Manifest, host_state: &Path) -> Result<AppAgent, AppError> {
        let layout = manifest.layout();
        let store = Store::open(&layout.state())?;
        Ok(AppAgent {
            store,
            manifest,
            layout,
            printer: Printer::new(true, false),
            log: JobLog::new(),
            host_state: host_state.to_owned(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn service(&self) -> &str {
        &self.manifest.service
    }

    fn phase(&self, id: &str, phase: &str, message: &str) {
        let _ = self.store.add_event(id, phase, message);
        self.printer.event(
            EVENT_PHASE,
            &serde_json::json!({ "id": id, "phase": phase, "message": message }),
        );
    }

    fn result(&self, deployment: &Deployment, message: impl Into<String>) -> AgentResult {
        AgentResult::of(deployment, message)
    }

    fn repo(&self) -> Result<Repo<'_>, AppError> {
        Ok(Repo {
            path: self.layout.repo(),
            url: self
                .manifest
                .repository
                .clone()
                .ok_or(ReleaseError::NoRepository)?,
            log: &self.log,
        })
    }

    /// The environment of the service's install, build and migrate steps.
    fn step_env(&self, revision: &str, release: &Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .manifest
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend([
            ("BERTH_SERVICE".into(), self.service().to_owned()),
            ("BERTH_REVISION".into(), revision.to_owned()),
            ("BERTH_RELEASE".into(), release.display().to_string()),
            (
                "BERTH_DATA".into(),
                self.layout.data().display().to_string(),
            ),
        ]);
        env
    }

    /// The health check of instance `instance` (its own port).
    fn health_check(&self, instance: u32, revision: Option<&str>) -> HealthCheck {
        let h = &self.manifest.health;
        HealthCheck {
            url: self.manifest.health_url(instance),
            status: h.status,
            timeout: Duration::from_secs(h.timeout),
            settle: Duration::from_secs(h.settle),
            expect: revision
                .filter(|_| h.expect_revision)
                .map(|r| crate::output::short_commit(r).to_owned()),
        }
    }

    /// The host-wide lock, when someone other than `actor` holds it (read
    /// from the file the host's agent publishes it in).
    fn host_lock(&self, actor: &str) -> Option<LockHolder> {
        state::read_host_lock(&self.host_state).filter(|h| h.owner != actor)
    }

    /// A system deployment in flight on the host (activating, waiting for
    /// its confirmation, or rolling back), as the host's agent publishes
    /// it: it may restart this service's unit, so the service waits, for
    /// every actor.
    fn system_deployment(&self) -> Option<LockHolder> {
        state::read_system_activity(&self.host_state).map(|a| a.holder())
    }

    /// Takes the service's lock for this process, waiting up to `wait`.
    async fn lock(&mut self, actor: &str, reason: &str, wait: Duration) -> Result<(), Busy> {
        let scope = service_scope(&self.manifest.service);
        let deadline = Instant::now() + wait;
        loop {
            let held = match self.host_lock(actor).or_else(|| self.system_deployment()) {
                Some(holder) => Some(holder),
                None => match self.store.lock_for_process(&scope, actor, Some(reason)) {
                    Ok(_) => return Ok(()),
                    Err(LockError::Held { holder }) => Some(*holder),
                    Err(e) => return Err(Busy::Error(e.to_string())),
                },
            };
            if let Some(holder) = held {
                if Instant::now() >= deadline {
                    let what = state::scope_name(&holder.scope);
                    return Err(if wait.is_zero() {
                        Busy::Held(format!("{what} is locked by {holder}"))
                    } else {
                        Busy::TimedOut(format!(
                            "{what} is still locked by {holder} after waiting {}s",
                            wait.as_secs()
                        ))
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn unlock(&mut self) {
        let _ = self
            .store
            .unlock_process(&service_scope(&self.manifest.service));
    }

    /// Finishes or rolls back a deployment whose agent died: one that had
    /// passed its health check is confirmed; one that had touched the
    /// service is rolled back (not blocked: the revision did not fail);
    /// one that had not is marked failed.
    ///
    /// Runs with the service's lock held, so two commands never settle the
    /// same deployment.
    async fn recover(&mut self) -> Result<Option<AgentResult>, AppError> {
        let Some(d) = self.store.active(Kind::App, &self.manifest.service)? else {
            return Ok(None);
        };
        let phases: Vec<String> = self
            .store
            .events(&d.id)?
            .into_iter()
            .map(|e| e.phase)
            .collect();
        if let Some(pid) = d.agent_pid {
            kill_leftovers(pid);
        }
        let seen = |p: &str| phases.iter().any(|x| x == p);
        let last = phases.last().cloned().unwrap_or_else(|| "recorded".into());
        self.phase(
            &d.id,
            "recover",
            &format!(
                "the agent of deployment {} died during its {last} phase",
                d.id
            ),
        );
        let result = if seen(HEALTHY) {
            if d.goal == GOAL_DEPLOY {
                // As the deploy would have: the manifest's count runs now.
                let _ = std::fs::remove_file(self.layout.scale());
            }
            let done = self.store.set_status(&d.id, Status::Confirmed, None)?;
            self.result(
                &done,
                format!(
                    "finished deployment {} of {}: it had passed its health check",
                    d.id, d.to_path
                ),
            )
        } else if seen(TOUCHED) {
            // Not blocked: the revision did not fail, its agent died;
            // unless the agent died undoing a failure of the revision.
            let failed = d.goal == GOAL_DEPLOY
                && self
                    .store
                    .events(&d.id)?
                    .iter()
                    .any(|e| e.phase == ROLLBACK && e.message != AGENT_DIED);
            self.undo(&d, AGENT_DIED, &last, failed).await?
        } else {
            let done = self.store.set_status(&d.id, Status::Failed, Some(&last))?;
            self.result(
                &done,
                format!(
                    "deployment {} died before it touched the service; nothing to undo",
                    d.id
                ),
            )
        };
        self.printer.event(EVENT_RECOVERED, &result);
        Ok(Some(result))
    }

    /// Checks what a deploy of `wanted` needs, and resolves it. Touches
    /// nothing but the repository cache.
    async fn prepare(&self, req: &DeployRequest) -> Result<String, AppError> {
        match self.manifest.data.check(&self.log).await {
            Err(SnapshotError::NotSqlite(db)) => return Err(AppError::NotSqlite(db)),
            checked => checked?,
        }
        let repo = self.repo()?;
        release::check(&req.wanted)?;
        repo.ensure().await?;
        repo.fetch().await?;
        let sha = repo.resolve(&req.wanted).await?;
        if !req.force {
            if let Some(b) = self.store.blocked(self.service(), &sha)? {
                return Err(AppError::Blocked {
                    service: self.service().to_owned(),
                    revision: sha,
                    why: format!(
                        "deployment {}: {}",
                        b.deployment_id.unwrap_or_default(),
                        b.reason.unwrap_or_default()
                    ),
                });
            }
            if !repo.on_branch(&sha, &self.manifest.branch).await? {
                return Err(ReleaseError::NotOnBranch {
                    revision: sha,
                    branch: self.manifest.branch.clone(),
                    repository: repo.url.clone(),
                }
                .into());
            }
        }
        Ok(sha)
    }

    /// `app deploy --dry-run`.
    pub async fn plan(&mut self, req: &DeployRequest) -> Result<Plan, AppError> {
        let sha = self.prepare(req).await?;
        let from = release::current_revision(&self.layout.current());
        // What it changes only informs the plan.
        let changes = match &from {
            Some(from) => self.changes(Some(from), &sha).await.ok(),
            None => None,
        };
        Ok(Plan {
            changes,
            service: self.service().to_owned(),
            unchanged: from.as_deref() == Some(sha.as_str()),
            from,
            build: !release::is_built(&self.layout.release(&sha)),
            to: sha,
            databases: self.manifest.data.sqlite.clone(),
            files: self.manifest.data.files.clone(),
            postgres: self.manifest.data.postgres.clone(),
            skip_snapshot: req.skip_snapshot,
            migrate: self.manifest.commands.migrate.clone(),
            lock: self
                .store
                .lock_holder(&service_scope(self.service()))?
                .or_else(|| self.host_lock(&req.actor))
                .or_else(|| self.system_deployment()),
        })
    }

    /// `app deploy`: the whole transaction.
    pub async fn deploy(&mut self, req: &DeployRequest) -> Result<AgentResult, AppError> {
        let reason = format!("deploy {} by {}", req.id, req.actor);
        if let Err(busy) = self.lock(&req.actor, &reason, req.lock_wait).await {
            return Ok(busy.result());
        }
        let result = match self.recover().await {
            Ok(_) => self.deploy_locked(req).await,
            Err(e) => Err(e),
        };
        self.unlock();
        result
    }

    async fn deploy_locked(&mut self, req: &DeployRequest) -> Result<AgentResult, AppError> {
        let sha = self.prepare(req).await?;
        let from = release::current_revision(&self.layout.current());
        if from.as_deref() == Some(sha.as_str()) {
            return Ok(AgentResult {
                outcome: Outcome::Unchanged,
                message: format!("{} already runs {sha}", self.service()),
                deployment: None,
            });
        }
        if let Some(current) = from.as_deref().filter(|_| req.skip_superseded) {
            if self.repo()?.is_ancestor(&sha, current).await? {
                return Ok(AgentResult {
                    outcome: Outcome::Unchanged,
                    message: format!(
                        "skipped: {} runs {current}, which already contains {sha}",
                        self.service()
                    ),
                    deployment: None,
                });
            }
        }
        let changes = match &from {
            Some(from) => match self.changes(Some(from), &sha).await {
                Ok(c) => Some(c),
                Err(e) if req.skip_untouched => return Err(e),
                // What changed only shapes the notification: deploy anyway.
                Err(e) => {
                    tracing::warn!("could not tell what {from}..{sha} changes: {e}");
                    None
                }
            },
            None => None,
        };
        if let Some(c) = changes
            .as_ref()
            .filter(|c| req.skip_untouched && !c.touched)
        {
            return Ok(AgentResult {
                outcome: Outcome::Unchanged,
                message: format!("skipped: {}", c.describe()),
                deployment: None,
            });
        }
        let d = self.store.begin(&NewDeployment {
            id: req.id.clone(),
            kind: Kind::App,
            target: self.service().to_owned(),
            from_path: from.clone(),
            from_generation: None,
            to_path: sha.clone(),
            goal: GOAL_DEPLOY.into(),
            actor: req.actor.clone(),
            reason: req.reason.clone(),
            ci_run_url: req.ci_run_url.clone(),
            revision: None,
        })?;
        self.store.set_agent_pid(&d.id, std::process::id())?;
        self.save_manifest();
        self.phase(
            &d.id,
            "recorded",
            &format!(
                "{} → {sha} (agent pid {})",
                from.as_deref().unwrap_or("nothing"),
                std::process::id()
            ),
        );
        if let Some(c) = &changes {
            self.phase(&d.id, EVENT_CHANGES, &c.describe());
            self.printer.event(EVENT_CHANGES, c);
        }
        if req.skip_snapshot {
            let warning = self.skip_warning();
            self.phase(&d.id, SNAPSHOT_SKIPPED, &warning);
            self.printer.event(
                EVENT_WARNING,
                &serde_json::json!({ "id": d.id, "message": warning }),
            );
        }
        match self.run_deploy(&d, &sha, req).await {
            Ok(result) => Ok(result),
            Err((phase, err)) => self.fail(&d, phase, err).await,
        }
    }

    /// `app changed`: what `to` (default: the head of the service's
    /// branch) changes for the service compared with `from` (default: the
    /// revision it runs).
    pub async fn changed(&self, from: Option<&str>, to: Option<&str>) -> Result<Changes, AppError> {
        let repo = self.repo()?;
        repo.ensure().await?;
        repo.fetch().await?;
        let to = match to {
            Some(rev) => repo.resolve(&Wanted::Rev(rev.to_owned())).await?,
            None => {
                repo.resolve(&Wanted::Ref(self.manifest.branch.clone()))
                    .await?
            }
        };
        let from = match from {
            Some(rev) => Some(repo.resolve(&Wanted::Rev(rev.to_owned())).await?),
            None => release::current_revision(&self.layout.current()),
        };
        self.changes(from.as_deref(), &to).await
    }

    /// What going from commit `from` (`None`: nothing deployed yet) to `to`
    /// changes for the service.
    async fn changes(&self, from: Option<&str>, to: &str) -> Result<Changes, AppError> {
        let files = match from {
            Some(from) => self.repo()?.changed_files(from, to).await?,
            None => Vec::new(),
        };
        let [paths, quiet] = self.filters()?;
        Ok(Changes::of(
            self.service(),
            from,
            to,
            &files,
            &paths,
            &quiet,
        ))
    }

    /// The manifest's `paths` and `quietPaths`, compiled.
    fn filters(&self) -> Result<[Filter; 2], AppError> {
        let compile = |p: &[String]| Filter::new(p).map_err(AppError::Nothing);
        Ok([
            compile(&self.manifest.paths)?,
            compile(&self.manifest.quiet_paths)?,
        ])
    }

    /// What `--skip-snapshot` leaves unprotected, in the words the deploy's
    /// warning and history use.
    fn skip_warning(&self) -> String {
        let data = self.manifest.data.names();
        if data.is_empty() {
            return format!(
                "--skip-snapshot: {} declares no data, so there was nothing to snapshot",
                self.service()
            );
        }
        format!(
            "--skip-snapshot: no snapshot before this deploy; {} will not be protected: \
             if the deploy fails, the previous release comes back but this data stays as \
             the failed deploy left it",
            data.join(", ")
        )
    }

    /// Keeps the manifest this deploy uses, so that later commands on a
    /// service deployed with flags alone know it too.
    fn save_manifest(&self) {
        let path = self.layout.saved_manifest();
        if let Ok(json) = serde_json::to_vec_pretty(&self.manifest) {
            let tmp = path.with_extension("json.tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    /// Settles a deployment whose step `phase` failed with `err`: before
    /// the service was touched it just failed; after, it is rolled back.
    async fn fail(
        &mut self,
        d: &Deployment,
        phase: &str,
        err: AppError,
    ) -> Result<AgentResult, AppError> {
        let why = format!("{phase} failed: {err}{}", command_tail(&err));
        let touched = self.store.events(&d.id)?.iter().any(|e| e.phase == TOUCHED);
        if touched {
            // A deploy's failed revision is refused next time; a rollback
            // or a restore brings no new revision.
            return self.undo(d, &why, phase, d.goal == GOAL_DEPLOY).await;
        }
        self.phase(&d.id, phase, &why);
        let done = self.store.set_status(&d.id, Status::Failed, Some(phase))?;
        Ok(self.result(
            &done,
            format!(
                "{why}; the service was not touched and still runs {}",
                running(&done.from_path)
            ),
        ))
    }

    /// The steps after recording; an error names its phase.
    async fn run_deploy(
        &mut self,
        d: &Deployment,
        sha: &str,
        req: &DeployRequest,
    ) -> Result<AgentResult, (&'static str, AppError)> {
        let at = |phase: &'static str| move |e: AppError| (phase, e);
        let dir = self.layout.release(sha);
        self.build(d, sha, &dir).await.map_err(at("build"))?;

        if req.skip_snapshot {
            self.phase(&d.id, "snapshot", "skipped (--skip-snapshot): none taken");
        } else {
            let snap = self
                .snapshot_into(&d.id, true)
                .await
                .map_err(at("snapshot"))?;
            self.phase(&d.id, "snapshot", &describe(&snap));
        }

        self.stop_unit(&d.id, self.manifest.instances).await?;
        if let Some(migrate) = self.manifest.commands.migrate.clone() {
            self.phase(&d.id, "migrate", &migrate);
            let env = self.step_env(sha, &dir);
            self.step("migrate", &migrate, &dir, &env)
                .await
                .map_err(at("migrate"))?;
        }
        self.phase(&d.id, "swap", &format!("current → releases/{sha}"));
        release::swap_symlink(&self.layout.current(), &dir).map_err(|e| ("swap", e.into()))?;
        self.start_healthy(&d.id, Some(sha), self.manifest.instances)
            .await?;
        // A deploy brings back the manifest's count of instances.
        let _ = std::fs::remove_file(self.layout.scale());

        if req.force {
            let _ = self.store.unblock(self.service(), sha);
        }
        let done = self
            .store
            .set_status(&d.id, Status::Confirmed, None)
            .map_err(|e| ("record", e.into()))?;
        self.prune(&[sha, d.from_path.as_deref().unwrap_or("")], &d.id);
        Ok(self.result(&done, format!("{} runs {sha}", self.service())))
    }

    /// Builds `releases/<sha>` unless it is already built.
    async fn build(&self, d: &Deployment, sha: &str, dir: &Path) -> Result<(), AppError> {
        if release::is_built(dir) {
            self.phase(&d.id, "build", &format!("releases/{sha} is already built"));
            return Ok(());
        }
        self.phase(
            &d.id,
            "build",
            &format!("checking out {sha} into releases/{sha}"),
        );
        release::remove_tree(dir).map_err(io(format!("remove {}", dir.display())))?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        self.repo()?.checkout(sha, dir).await?;
        let rev_file = dir.join(release::REVISION_FILE);
        std::fs::write(&rev_file, format!("{sha}\n"))
            .map_err(io(format!("write {}", rev_file.display())))?;
        let env = self.step_env(sha, dir);
        for (name, command) in [
            ("install", self.manifest.commands.install.clone()),
            ("build", self.manifest.commands.build.clone()),
        ] {
            if let Some(command) = command {
                self.phase(&d.id, name, &command);
                self.step(name, &command, dir, &env).await?;
            }
        }
        release::mark_built(dir)?;
        Ok(())
    }

    async fn step(
        &self,
        name: &'static str,
        command: &str,
        dir: &Path,
        env: &[(String, String)],
    ) -> Result<(), AppError> {
        process::output(
            &release::step(command, dir, env),
            process::Via::Local,
            &self.log,
        )
        .await
        .and_then(process::Output::check)
        .map(drop)
        .map_err(|source| {
            ReleaseError::Step {
                step: name,
                dir: dir.to_owned(),
                source,
            }
            .into()
        })
    }
}

fn running(rev: &Option<String>) -> String {
    rev.clone().unwrap_or_else(|| "nothing".into())
}

/// What a failed step wrote last, for the message.
fn command_tail(err: &AppError) -> String {
    match err {
        AppError::Release(ReleaseError::Step { source, .. }) => format!(": {source}"),
        _ => String::new(),
    }
}

/// Why the lock could not be taken.
enum Busy {
    Held(String),
    TimedOut(String),
    Error(String),
}

impl Busy {
    fn result(self) -> AgentResult {
        let (outcome, message) = match self {
            Busy::Held(m) => (Outcome::Busy, m),
            Busy::TimedOut(m) => (Outcome::TimedOut, m),
            Busy::Error(m) => (Outcome::Failed, m),
        };
        AgentResult {
            outcome,
            message,
            deployment: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(allow: bool) -> Manifest {
        with_data(
            allow,
            serde_json::json!({ "sqlite": ["data/app.db"], "files": ["data/uploads"] }),
        )
    }

    fn with_data(allow: bool, data: serde_json::Value) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "version": 1,
            "service": "notes",
            "dir": "/var/lib/notes",
            "unit": "notes.service",
            "repository": null,
            "health": { "url": "http://127.0.0.1:3000/health" },
            "data": data,
            "allowSkipSnapshot": allow,
        }))
        .unwrap()
    }

    #[test]
    fn skipping_the_snapshot_in_ci_needs_the_flag_or_the_manifest() {
        let guard = |in_ci, allowed_in_ci| SkipSnapshotGuard {
            in_ci,
            allowed_in_ci,
        };
        assert!(check_skip_snapshot(&manifest(false), guard(false, false)).is_ok());
        assert!(check_skip_snapshot(&manifest(false), guard(true, true)).is_ok());
        assert!(check_skip_snapshot(&manifest(true), guard(true, false)).is_ok());
        // Nothing declared, nothing to lose.
        let bare = with_data(false, serde_json::json!({}));
        assert!(check_skip_snapshot(&bare, guard(true, false)).is_ok());
        let err = check_skip_snapshot(&manifest(false), guard(true, false)).unwrap_err();
        assert!(err.is_usage());
        assert_eq!(
            err.to_string(),
            "refusing to skip the snapshot of notes in CI (CI is set): \
             data/app.db, data/uploads would not be protected"
        );
        assert!(err.hint().unwrap().contains("allowSkipSnapshot = true"));
    }
}
