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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::changes::{Changes, Filter};
use super::manifest::{Layout, Manifest};
use super::release::{self, ReleaseError, Repo, Wanted};
use super::snapshot::{self, Snapshot};
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

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("revision {revision} of {service} was rolled back before ({why}): it is blocked")]
    Blocked {
        service: String,
        revision: String,
        why: String,
    },
    #[error("{} is not an SQLite database", .0.display())]
    NotSqlite(PathBuf),
    #[error("{service} has no kept release {wanted}{}", kept_list(.kept))]
    NoSuchRelease {
        service: String,
        wanted: String,
        kept: Vec<String>,
    },
    #[error("{0}")]
    Nothing(String),
    #[error("no snapshot {id} of {service}")]
    NoSuchSnapshot { service: String, id: String },
    #[error("revision {wanted} of {service} is not blocked{}", blocked_list(.blocked))]
    NotBlocked {
        service: String,
        wanted: String,
        blocked: Vec<String>,
    },
    #[error("{wanted} names more than one blocked revision of {service}: {}", .matches.join(", "))]
    AmbiguousBlocked {
        service: String,
        wanted: String,
        matches: Vec<String>,
    },
    #[error(
        "refusing to skip the snapshot of {service} in CI (CI is set): {} would not be protected",
        .data.join(", ")
    )]
    SkipSnapshotInCi { service: String, data: Vec<String> },
    #[error("{message}")]
    Scale { message: String, hint: String },
}

fn blocked_list(blocked: &[String]) -> String {
    if blocked.is_empty() {
        " (none is)".into()
    } else {
        format!(" (blocked: {})", blocked.join(", "))
    }
}

fn kept_list(kept: &[String]) -> String {
    if kept.is_empty() {
        " (none are kept)".into()
    } else {
        format!(" (kept: {})", kept.join(", "))
    }
}

impl crate::error::Diagnose for AppError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: self.is_usage(),
        }
    }
}

impl AppError {
    pub fn hint(&self) -> Option<String> {
        match self {
            AppError::Blocked { .. } => Some(
                "fix it in a new commit, or pass --force to deploy this revision anyway".into(),
            ),
            AppError::NotBlocked { .. } => {
                Some("`berth app status` lists the service's blocked revisions".into())
            }
            AppError::AmbiguousBlocked { .. } => {
                Some("give more of the commit's hash, or all of it".into())
            }
            AppError::SkipSnapshotInCi { service, .. } => Some(format!(
                "drop --skip-snapshot; or, if losing that data on a failed deploy is acceptable, \
                 pass --allow-skip-snapshot-in-ci too, or set \
                 `berth.services.{service}.allowSkipSnapshot = true;` on the host"
            )),
            AppError::Release(e) => e.hint(),
            AppError::Snapshot(e) => e.hint(),
            AppError::Scale { hint, .. } => Some(hint.clone()),
            AppError::NotSqlite(_) => Some(
                "list only SQLite files in data.sqlite (or --db); declare other data in data.files"
                    .into(),
            ),
            _ => None,
        }
    }

    /// Bad input: nothing was touched.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AppError::Blocked { .. }
                | AppError::NotSqlite(_)
                | AppError::NoSuchRelease { .. }
                | AppError::NoSuchSnapshot { .. }
                | AppError::NotBlocked { .. }
                | AppError::AmbiguousBlocked { .. }
                | AppError::SkipSnapshotInCi { .. }
                | AppError::Nothing(_)
                | AppError::Scale { .. }
        ) || matches!(
            self,
            AppError::Release(
                ReleaseError::BadRevision(_)
                    | ReleaseError::BadName { .. }
                    | ReleaseError::NotFound { .. }
                    | ReleaseError::NotOnBranch { .. }
                    | ReleaseError::NoRepository
            )
        )
    }
}

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
    let data = declared_data(manifest);
    if guard.in_ci && !guard.allowed_in_ci && !manifest.allow_skip_snapshot && !data.is_empty() {
        return Err(AppError::SkipSnapshotInCi {
            service: manifest.service.clone(),
            data,
        });
    }
    Ok(())
}

/// The manifest's SQLite databases and files, as declared.
fn declared_data(manifest: &Manifest) -> Vec<String> {
    (manifest.data.sqlite.iter())
        .chain(&manifest.data.files)
        .map(|p| p.display().to_string())
        .collect()
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
        for db in &self.manifest.data.sqlite {
            if !snapshot::check_sqlite(db)? {
                return Err(AppError::NotSqlite(db.clone()));
            }
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
        let data = declared_data(&self.manifest);
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
            let snap = self.snapshot_into(&d.id, true).map_err(at("snapshot"))?;
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

    /// Stops the unit (every instance that may run: `count` or the ones
    /// running now, whichever is more), recording first that deployment
    /// `id` touches the service (from here on, a failure or a dead agent
    /// means rollback).
    async fn stop_unit(&self, id: &str, count: u32) -> Result<(), (&'static str, AppError)> {
        let units = self.units_to_stop(count).await;
        self.phase(id, TOUCHED, &format!("stopping {}", units.join(", ")));
        self.hold().map_err(|e| ("stop", e))?;
        self.control_all("stop", &units)
            .await
            .map_err(|e| ("stop", e.into()))
    }

    /// Before a stop that changes data: a socket-activated service's unit
    /// waits while [`Layout::hold`] exists, so a connection that arrives
    /// while the service is stopped waits in the socket's queue instead of
    /// starting the app on data being migrated or restored. Kept until the
    /// next start (a dead agent's is removed by the recovery's start).
    fn hold(&self) -> Result<(), AppError> {
        if !self.manifest.socket_activation {
            return Ok(());
        }
        let path = self.layout.hold();
        std::fs::write(
            &path,
            "stopped by berth: the unit starts once berth removes this file\n",
        )
        .map_err(io(format!("writing {}", path.display())))
    }

    /// Lets a held unit start (see [`AppAgent::hold`]).
    fn unhold(&self) -> Result<(), AppError> {
        let path = self.layout.hold();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// The units to stop before instances `1..=count` start again:
    /// those, the ones that should run now, and any other instance (up to
    /// `maxInstances`) systemd says is not inactive (one a dead agent's
    /// `app scale` started, say).
    async fn units_to_stop(&self, count: u32) -> Vec<String> {
        let n = count.max(self.running_instances());
        let mut units = self.manifest.instance_units(n);
        if self.manifest.is_template() {
            for i in n + 1..=self.manifest.max_instances() {
                let unit = self.manifest.instance_unit(i);
                if let Ok(state) = unit::show(&unit, &self.log).await {
                    if state.active_state != "inactive" {
                        units.push(unit);
                    }
                }
            }
        }
        units
    }

    /// `systemctl VERB` of each unit in turn; the first failure ends it.
    async fn control_all(&self, verb: &str, units: &[String]) -> Result<(), CommandError> {
        for unit in units {
            unit::control(verb, unit, &self.log).await?;
        }
        Ok(())
    }

    /// Starts instances `1..=count` and waits until each is healthy
    /// (serving `revision`, when the manifest asks for that), recording that
    /// they passed.
    async fn start_healthy(
        &self,
        id: &str,
        revision: Option<&str>,
        count: u32,
    ) -> Result<(), (&'static str, AppError)> {
        let instances: Vec<u32> = (1..=count).collect();
        self.start_instances(id, revision, &instances).await
    }

    /// Starts the given instances and waits until each is healthy.
    async fn start_instances(
        &self,
        id: &str,
        revision: Option<&str>,
        instances: &[u32],
    ) -> Result<(), (&'static str, AppError)> {
        let units: Vec<String> = instances
            .iter()
            .map(|&i| self.manifest.instance_unit(i))
            .collect();
        self.phase(id, "start", &format!("starting {}", units.join(", ")));
        self.unhold().map_err(|e| ("start", e))?;
        self.control_all("start", &units)
            .await
            .map_err(|e| ("start", e.into()))?;
        let urls: Vec<String> = instances
            .iter()
            .map(|&i| self.manifest.health_url(i))
            .collect();
        self.phase(id, "health", &urls.join(", "));
        let verdict = self.check_instances(revision, instances).await;
        if !verdict.healthy {
            return Err(("health", AppError::Nothing(verdict.message)));
        }
        self.phase(id, HEALTHY, &verdict.message);
        Ok(())
    }

    /// The health of each instance, checked at the same time: healthy when
    /// all are; else what the first unhealthy one (by number) said.
    async fn check_instances(&self, revision: Option<&str>, instances: &[u32]) -> unit::Verdict {
        let mut checks = tokio::task::JoinSet::new();
        for &i in instances {
            let (unit, check, log) = (
                self.manifest.instance_unit(i),
                self.health_check(i, revision),
                self.log.clone(),
            );
            checks.spawn(async move { (i, unit::wait_healthy(&unit, &check, &log).await) });
        }
        let mut verdicts = Vec::new();
        while let Some(joined) = checks.join_next().await {
            match joined {
                Ok(v) => verdicts.push(v),
                Err(e) => {
                    return unit::Verdict {
                        healthy: false,
                        message: format!("a health check did not finish: {e}"),
                    }
                }
            }
        }
        verdicts.sort_by_key(|(i, _)| *i);
        let template = self.manifest.is_template();
        let name = |i: u32| {
            if template {
                format!("instance {i} ({}): ", self.manifest.instance_unit(i))
            } else {
                String::new()
            }
        };
        match verdicts.iter().find(|(_, v)| !v.healthy) {
            Some((i, v)) => unit::Verdict {
                healthy: false,
                message: format!("{}{}", name(*i), v.message),
            },
            None => unit::Verdict {
                healthy: true,
                message: verdicts
                    .iter()
                    .map(|(_, v)| v.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        }
    }

    /// How many instances run now: what `berth app scale` left during this
    /// boot, else the manifest's count.
    pub fn running_instances(&self) -> u32 {
        read_scaled(&self.layout.scale())
            .filter(|s| s.boot_id == boot_id())
            .map(|s| s.instances)
            .filter(|n| (1..=self.manifest.max_instances()).contains(n))
            .unwrap_or(self.manifest.instances)
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

    /// Snapshots the declared data under `id`, after checking there is room
    /// for it (and, with `restore`, for an undo to put it back).
    fn snapshot_into(&self, id: &str, restore: bool) -> Result<Snapshot, AppError> {
        snapshot::check_space(
            &self.layout.snapshot(id),
            &self.manifest.data.sqlite,
            &self.manifest.data.files,
            restore,
        )?;
        Ok(snapshot::create(
            &self.layout.snapshot(id),
            id,
            self.service(),
            &self.layout.dir,
            &self.manifest.data.sqlite,
            &self.manifest.data.files,
        )?)
    }

    /// Puts the service back as deployment `d` found it: stop, restore the
    /// snapshot taken under `d`'s id (if it took one), `current` back to
    /// `d`'s starting release, start, and check health again. `block`
    /// refuses `d`'s revision from now on.
    async fn undo(
        &mut self,
        d: &Deployment,
        why: &str,
        failed_phase: &str,
        block: bool,
    ) -> Result<AgentResult, AppError> {
        // An agent that died undoing this deployment may have restored
        // some or all of the data already: that is finished, not redone.
        let resume = self
            .store
            .events(&d.id)?
            .iter()
            .any(|e| e.phase == ROLLBACK);
        let skipped = self.snapshot_skipped(&d.id)?;
        self.phase(&d.id, ROLLBACK, why);
        let mut problems = Vec::new();
        // What ran before `d` (a failed deploy leaves `berth app scale`'s
        // count in place), after stopping whatever `d` may have started.
        let count = self.running_instances();
        let all = self.units_to_stop(self.manifest.instances).await;
        if let Err(e) = self.hold() {
            problems.push(format!("stop: {e}"));
        }
        if let Err(e) = self.control_all("stop", &all).await {
            problems.push(format!("stop: {e}"));
        }
        let snap_dir = self.layout.snapshot(&d.id);
        let mut data_note = String::new();
        let data = declared_data(&self.manifest).join(", ");
        if skipped && !data.is_empty() {
            data_note = format!(
                "; its data was NOT restored (the snapshot was skipped with --skip-snapshot): \
                 {data} as the failed deploy left it"
            );
            self.phase(
                &d.id,
                "restore",
                &format!(
                    "not restored: the snapshot was skipped with --skip-snapshot; \
                     {data} stays as the failed deploy left it"
                ),
            );
        } else if snapshot::read(&snap_dir).is_ok() {
            let restored = match resume {
                true => snapshot::resume_restore(&snap_dir, &d.id),
                false => snapshot::restore(&snap_dir, &d.id),
            };
            match restored {
                Ok(s) => self.phase(&d.id, "restore", &format!("restored {}", describe(&s))),
                Err(e) => problems.push(format!("restore: {e}")),
            }
        }
        let previous = d.from_path.clone();
        match &previous {
            Some(prev) => {
                let dir = self.layout.release(prev);
                if let Err(e) = release::swap_symlink(&self.layout.current(), &dir) {
                    problems.push(format!("swap: {e}"));
                }
                self.phase(&d.id, "swap", &format!("current → releases/{prev}"));
                if let Err(e) = self.unhold() {
                    problems.push(format!("start: {e}"));
                }
                if let Err(e) = self
                    .control_all("start", &self.manifest.instance_units(count))
                    .await
                {
                    problems.push(format!("start: {e}"));
                }
                let instances: Vec<u32> = (1..=count).collect();
                let verdict = self.check_instances(Some(prev), &instances).await;
                self.phase(&d.id, "health", &verdict.message);
                if !verdict.healthy {
                    problems.push(format!("{prev} is not healthy either: {}", verdict.message));
                }
            }
            None => {
                // A first deploy: there is nothing to go back to (a
                // socket-activated unit stays held: no connection starts
                // it until the next deploy).
                let _ = std::fs::remove_file(self.layout.current());
                self.phase(
                    &d.id,
                    "swap",
                    "no previous release: the service stays stopped",
                );
            }
        }
        if block {
            self.store.block(self.service(), &d.to_path, &d.id, why)?;
            self.phase(
                &d.id,
                "block",
                &format!("revision {} is blocked", d.to_path),
            );
        }

        if problems.is_empty() {
            let done = self
                .store
                .set_status(&d.id, Status::RolledBack, Some(failed_phase))?;
            Ok(self.result(
                &done,
                format!(
                    "{why}; rolled back: {} runs {} again{data_note}",
                    self.service(),
                    running(&previous)
                ),
            ))
        } else {
            let done = self
                .store
                .set_status(&d.id, Status::RollbackFailed, Some(failed_phase))?;
            Ok(self.result(
                &done,
                format!(
                    "{why}; the rollback failed too: {}{data_note}",
                    problems.join("; ")
                ),
            ))
        }
    }

    /// Keeps `keep_releases` releases and `keep_snapshots` snapshots, and
    /// those named in `protect`.
    fn prune(&self, protect_releases: &[&str], protect_snapshot: &str) {
        release::prune(
            &self.layout.releases(),
            self.manifest.keep_releases,
            protect_releases,
        );
        let _ = snapshot::prune(
            &self.layout.snapshots(),
            self.manifest.keep_snapshots,
            &[protect_snapshot],
        );
    }

    /// `app rollback`: back to a kept release, without rebuilding.
    pub async fn rollback(&mut self, req: &RollbackRequest) -> Result<AgentResult, AppError> {
        let reason = format!("rollback {} by {}", req.id, req.actor);
        if let Err(busy) = self.lock(&req.actor, &reason, req.lock_wait).await {
            return Ok(busy.result());
        }
        let result = match self.recover().await {
            Ok(_) => self.rollback_locked(req).await,
            Err(e) => Err(e),
        };
        self.unlock();
        result
    }

    async fn rollback_locked(&mut self, req: &RollbackRequest) -> Result<AgentResult, AppError> {
        let current = release::current_revision(&self.layout.current());
        let kept: Vec<String> = release::list(&self.layout.releases())
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| Some(n) != current.as_ref())
            .collect();
        let target = match &req.to {
            Some(to) => {
                let matching: Vec<&String> =
                    kept.iter().filter(|n| n.starts_with(to.as_str())).collect();
                match matching[..] {
                    [one] => one.clone(),
                    [] => {
                        return Err(AppError::NoSuchRelease {
                            service: self.service().to_owned(),
                            wanted: to.clone(),
                            kept,
                        })
                    }
                    _ => {
                        return Err(AppError::Nothing(format!(
                            "`{to}` names more than one kept release of {}: give more of it",
                            self.service()
                        )))
                    }
                }
            }
            // The release the current one replaced, never just any kept
            // one (it may be one that failed).
            None => match self.previous(current.as_deref())? {
                Some(p) if kept.contains(&p) => p,
                Some(p) => {
                    return Err(AppError::NoSuchRelease {
                        service: self.service().to_owned(),
                        wanted: format!("{p} (the one before the current release)"),
                        kept,
                    })
                }
                None => {
                    return Err(AppError::Nothing(format!(
                        "{} has no previous release on record; name one with --to{}",
                        self.service(),
                        kept_list(&kept)
                    )))
                }
            },
        };
        // The data to put back: as it was before `current` was deployed
        // over `target`.
        let data = if req.restore_data {
            let source = self
                .store
                .history(Kind::App, Some(self.service()), 1000)?
                .into_iter()
                .find(|d| {
                    d.status == Status::Confirmed
                        && d.goal == GOAL_DEPLOY
                        && d.from_path.as_deref() == Some(target.as_str())
                        && Some(&d.to_path) == current.as_ref()
                })
                .map(|d| self.layout.snapshot(&d.id))
                .filter(|dir| snapshot::read(dir).is_ok());
            Some(source.ok_or_else(|| {
                AppError::Nothing(format!(
                    "no snapshot of {} from before {} replaced {target}",
                    self.service(),
                    current.as_deref().unwrap_or("nothing"),
                ))
            })?)
        } else {
            None
        };
        let d = self.store.begin(&NewDeployment {
            id: req.id.clone(),
            kind: Kind::App,
            target: self.service().to_owned(),
            from_path: current.clone(),
            from_generation: None,
            to_path: target.clone(),
            goal: GOAL_ROLLBACK.into(),
            actor: req.actor.clone(),
            reason: req
                .reason
                .clone()
                .or_else(|| data.as_ref().map(|_| "rollback with its data".to_owned())),
            ci_run_url: req.ci_run_url.clone(),
            revision: None,
        })?;
        self.store.set_agent_pid(&d.id, std::process::id())?;
        self.phase(
            &d.id,
            "recorded",
            &format!("{} → {target}", current.as_deref().unwrap_or("nothing")),
        );
        // Every instance running now goes back.
        let count = self.running_instances();
        let steps = async {
            if let Some(source) = &data {
                // The data now is kept too, so this rollback can be undone.
                let snap = self
                    .snapshot_into(&d.id, true)
                    .map_err(|e| ("snapshot", e))?;
                self.phase(&d.id, "snapshot", &describe(&snap));
                self.stop_unit(&d.id, count).await?;
                let restored = snapshot::restore(source, &replaced_tag(&d.id))
                    .map_err(|e| ("restore", e.into()))?;
                self.phase(
                    &d.id,
                    "restore",
                    &format!("restored {}", describe(&restored)),
                );
            } else {
                self.stop_unit(&d.id, count).await?;
            }
            self.phase(&d.id, "swap", &format!("current → releases/{target}"));
            release::swap_symlink(&self.layout.current(), &self.layout.release(&target))
                .map_err(|e| ("swap", e.into()))?;
            self.start_healthy(&d.id, Some(&target), count).await
        }
        .await;
        match steps {
            Ok(()) => {
                let done = self.store.set_status(&d.id, Status::Confirmed, None)?;
                Ok(self.result(&done, format!("{} runs {target} again", self.service())))
            }
            Err((phase, err)) => self.fail(&d, phase, err).await,
        }
    }

    /// The release `current` replaced, from the records.
    fn previous(&self, current: Option<&str>) -> Result<Option<String>, AppError> {
        Ok(self
            .store
            .history(Kind::App, Some(self.service()), 1000)?
            .into_iter()
            .find(|d| {
                d.status == Status::Confirmed
                    && d.goal != GOAL_RESTORE
                    && d.goal != GOAL_SCALE
                    && Some(d.to_path.as_str()) == current
            })
            .and_then(|d| d.from_path))
    }

    /// `app status`, after recovering an interrupted deployment.
    pub async fn status(&mut self, actor: &str) -> Result<AppStatus, AppError> {
        // Recovers only when the lock is free: a live deploy holds it.
        let recovered = match self.lock(actor, "status", Duration::ZERO).await {
            Ok(()) => {
                let recovered = self.recover().await;
                self.unlock();
                recovered?
            }
            Err(_) => None,
        };
        let running = self.running_instances();
        let mut instances = Vec::new();
        // The ones that should run, and any left running past them.
        for i in 1..=self.manifest.max_instances() {
            let unit = self.manifest.instance_unit(i);
            let state = unit::show(&unit, &self.log).await.ok();
            let active = state.as_ref().is_some_and(|s| s.active_state != "inactive");
            if i <= running || active {
                instances.push(InstanceStatus {
                    instance: i,
                    unit,
                    state,
                });
            }
        }
        let unit_state = instances.first().and_then(|i| i.state.clone());
        let history = self.store.history(Kind::App, Some(self.service()), 1)?;
        Ok(AppStatus {
            service: self.service().to_owned(),
            unit: self.manifest.unit.clone(),
            state: unit_state,
            running_instances: running,
            max_instances: self.manifest.max_instances(),
            instances,
            current: release::current_revision(&self.layout.current()),
            releases: release::list(&self.layout.releases())
                .into_iter()
                .map(|(n, _)| n)
                .collect(),
            active: self.store.active(Kind::App, self.service())?,
            last: history.into_iter().next(),
            lock: self.store.lock_holder(&service_scope(self.service()))?,
            blocked: self.store.blocked_list(self.service())?,
            recovered,
            hold: Some(self.layout.hold())
                .filter(|h| self.manifest.socket_activation && h.exists()),
        })
    }

    /// `app unblock`: deploys of `wanted` (a blocked revision, or the start
    /// of its hash) are no longer refused; the deployment that blocked it
    /// records who cleared it. Returns what it cleared.
    pub fn unblock(&self, wanted: &str, actor: &str) -> Result<Blocked, AppError> {
        let blocked = self.store.blocked_list(self.service())?;
        let wanted_lower = wanted.to_ascii_lowercase();
        let mut matches: Vec<Blocked> = blocked
            .iter()
            .filter(|b| b.revision.starts_with(&wanted_lower))
            .cloned()
            .collect();
        match matches.len() {
            1 => {
                let b = matches.remove(0);
                self.store.unblock(self.service(), &b.revision)?;
                if let Some(id) = &b.deployment_id {
                    // The audit trail only: the revision is unblocked anyway.
                    let _ = self.store.add_event(
                        id,
                        EVENT_UNBLOCKED,
                        &format!("revision {} unblocked by {actor}", b.revision),
                    );
                }
                Ok(b)
            }
            0 => Err(AppError::NotBlocked {
                service: self.service().to_owned(),
                wanted: wanted.to_owned(),
                blocked: blocked.into_iter().map(|b| b.revision).collect(),
            }),
            _ => Err(AppError::AmbiguousBlocked {
                service: self.service().to_owned(),
                wanted: wanted.to_owned(),
                matches: matches.into_iter().map(|b| b.revision).collect(),
            }),
        }
    }

    /// `app history`: deploys newest first, each with whether it skipped
    /// its snapshot.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, AppError> {
        let deployments = self.store.history(Kind::App, Some(self.service()), limit)?;
        deployments
            .into_iter()
            .map(|deployment| {
                Ok(HistoryEntry {
                    snapshot_skipped: self.snapshot_skipped(&deployment.id)?,
                    deployment,
                })
            })
            .collect()
    }

    /// Whether deployment `id` was told to skip its snapshot.
    fn snapshot_skipped(&self, id: &str) -> Result<bool, AppError> {
        Ok(self
            .store
            .events(id)?
            .iter()
            .any(|e| e.phase == SNAPSHOT_SKIPPED))
    }

    /// `app scale`: starts or stops instances until `req.instances` run,
    /// checking the health of each one it starts; the count holds until
    /// the next deploy (which runs the manifest's count) or the next boot.
    /// Recorded as a deployment of its own (goal `app-scale`).
    pub async fn scale(&mut self, req: &ScaleRequest) -> Result<AgentResult, AppError> {
        self.check_scale(req.instances)?;
        let reason = format!("scale {} by {}", req.id, req.actor);
        if let Err(busy) = self.lock(&req.actor, &reason, req.lock_wait).await {
            return Ok(busy.result());
        }
        let result = match self.recover().await {
            Ok(_) => self.scale_locked(req).await,
            Err(e) => Err(e),
        };
        self.unlock();
        result
    }

    /// Refuses a count the service cannot run, before anything is touched.
    fn check_scale(&self, n: u32) -> Result<(), AppError> {
        let service = self.service();
        let max = self.manifest.max_instances();
        if !self.manifest.is_template() {
            return Err(AppError::Scale {
                message: format!(
                    "{service} runs as the single unit {}, not as instances",
                    self.manifest.unit
                ),
                hint: format!(
                    "set berth.services.{service}.instances (or maxInstances) above 1 and deploy \
                 the host: its unit becomes the template {service}@.service"
                ),
            });
        }
        if !(1..=max).contains(&n) {
            return Err(AppError::Scale {
                message: format!("{service} can run 1 to {max} instances, not {n}"),
                hint: format!(
                    "raise berth.services.{service}.maxInstances (at most {}) to run more",
                    super::manifest::MAX_INSTANCES
                ),
            });
        }
        Ok(())
    }

    async fn scale_locked(&mut self, req: &ScaleRequest) -> Result<AgentResult, AppError> {
        let Some(current) = release::current_revision(&self.layout.current()) else {
            return Err(AppError::Nothing(format!(
                "{} runs no release yet: deploy it first (berth app deploy)",
                self.service()
            )));
        };
        let from = self.running_instances();
        let to = req.instances;
        let scale = serde_json::json!({ "service": self.service(), "from": from, "to": to });
        if from == to {
            self.printer.event(EVENT_SCALE, &scale);
            return Ok(AgentResult {
                outcome: Outcome::Unchanged,
                message: format!("{} already runs {to} instance(s)", self.service()),
                deployment: None,
            });
        }
        let d = self.store.begin(&NewDeployment {
            id: req.id.clone(),
            kind: Kind::App,
            target: self.service().to_owned(),
            from_path: Some(current.clone()),
            from_generation: None,
            to_path: current.clone(),
            goal: GOAL_SCALE.into(),
            actor: req.actor.clone(),
            reason: req
                .reason
                .clone()
                .or_else(|| Some(format!("scale from {from} to {to} instance(s)"))),
            ci_run_url: req.ci_run_url.clone(),
            revision: None,
        })?;
        self.store.set_agent_pid(&d.id, std::process::id())?;
        self.phase(&d.id, "recorded", &format!("{from} → {to} instance(s)"));
        if to < from {
            let units: Vec<String> = (to + 1..=from)
                .map(|i| self.manifest.instance_unit(i))
                .collect();
            self.phase(&d.id, "stop", &format!("stopping {}", units.join(", ")));
            if let Err(e) = self.control_all("stop", &units).await {
                // Some may have stopped: start them again.
                let _ = self.control_all("start", &units).await;
                let done = self.store.set_status(&d.id, Status::Failed, Some("stop"))?;
                return Ok(self.result(
                    &done,
                    format!(
                        "stop failed: {e}; {} still runs {from} instance(s)",
                        self.service()
                    ),
                ));
            }
        } else {
            let added: Vec<u32> = (from + 1..=to).collect();
            if let Err((phase, err)) = self.start_instances(&d.id, Some(&current), &added).await {
                let units: Vec<String> = added
                    .iter()
                    .map(|&i| self.manifest.instance_unit(i))
                    .collect();
                let stopped = self.control_all("stop", &units).await;
                let why = format!("{phase} failed: {err}");
                self.phase(
                    &d.id,
                    ROLLBACK,
                    &format!("{why}; stopping {}", units.join(", ")),
                );
                return Ok(match stopped {
                    Ok(()) => {
                        let done = self
                            .store
                            .set_status(&d.id, Status::RolledBack, Some(phase))?;
                        self.result(
                            &done,
                            format!(
                                "{why}; stopped the new instances: {} runs {from} instance(s)",
                                self.service()
                            ),
                        )
                    }
                    Err(e) => {
                        let done =
                            self.store
                                .set_status(&d.id, Status::RollbackFailed, Some(phase))?;
                        self.result(
                            &done,
                            format!("{why}; stopping the new instances failed too: {e}"),
                        )
                    }
                });
            }
        }
        write_scaled(&self.layout.scale(), to)
            .map_err(io(format!("write {}", self.layout.scale().display())))?;
        let done = self.store.set_status(&d.id, Status::Confirmed, None)?;
        self.printer.event(EVENT_SCALE, &scale);
        Ok(self.result(
            &done,
            format!(
                "{} runs {to} instance(s) (was {from}) until its next deploy",
                self.service()
            ),
        ))
    }

    /// `snapshot create`: under the service's lock (backups and deploys
    /// exclude each other).
    pub async fn snapshot_create(
        &mut self,
        id: &str,
        actor: &str,
        wait: Duration,
    ) -> Result<Result<Snapshot, AgentResult>, AppError> {
        if let Err(busy) = self
            .lock(actor, &format!("snapshot {id} by {actor}"), wait)
            .await
        {
            return Ok(Err(busy.result()));
        }
        let result = match self.recover().await {
            Ok(_) => self.snapshot_into(id, false),
            Err(e) => Err(e),
        };
        if result.is_ok() {
            let _ = snapshot::prune(
                &self.layout.snapshots(),
                self.manifest.keep_snapshots,
                &[id],
            );
        }
        self.unlock();
        result.map(Ok)
    }

    pub fn snapshots(&self) -> Result<Vec<Snapshot>, AppError> {
        Ok(snapshot::list(&self.layout.snapshots())?)
    }

    /// `snapshot restore`: stop, put the snapshot back, start, check
    /// health; recorded as a deployment of its own.
    pub async fn restore(
        &mut self,
        id: &str,
        snapshot_id: &str,
        actor: &str,
        wait: Duration,
    ) -> Result<AgentResult, AppError> {
        let dir = self.layout.snapshot(snapshot_id);
        if snapshot_id.contains('/') || snapshot::read(&dir).is_err() {
            return Err(AppError::NoSuchSnapshot {
                service: self.service().to_owned(),
                id: snapshot_id.to_owned(),
            });
        }
        if let Err(busy) = self
            .lock(actor, &format!("restore {snapshot_id} by {actor}"), wait)
            .await
        {
            return Ok(busy.result());
        }
        if let Err(e) = self.recover().await {
            self.unlock();
            return Err(e);
        }
        let current = release::current_revision(&self.layout.current());
        let begun = self.store.begin(&NewDeployment {
            id: id.to_owned(),
            kind: Kind::App,
            target: self.service().to_owned(),
            from_path: current.clone(),
            from_generation: None,
            to_path: current.clone().unwrap_or_default(),
            goal: GOAL_RESTORE.into(),
            actor: actor.to_owned(),
            reason: Some(format!("restore snapshot {snapshot_id}")),
            ci_run_url: None,
            revision: None,
        });
        let d = match begun {
            Ok(d) => d,
            Err(e) => {
                self.unlock();
                return Err(e.into());
            }
        };
        let steps = async {
            let snap = self.snapshot_into(id, true).map_err(|e| ("snapshot", e))?;
            self.phase(
                id,
                "snapshot",
                &format!("kept the data now: {}", describe(&snap)),
            );
            let count = self.running_instances();
            self.stop_unit(id, count).await?;
            let restored =
                snapshot::restore(&dir, &replaced_tag(id)).map_err(|e| ("restore", e.into()))?;
            self.phase(id, "restore", &format!("restored {}", describe(&restored)));
            self.start_healthy(id, current.as_deref(), count).await
        }
        .await;
        let result = match steps {
            Ok(()) => {
                let done = self.store.set_status(id, Status::Confirmed, None)?;
                Ok(self.result(&done, format!("restored snapshot {snapshot_id}")))
            }
            Err((phase, err)) => self.fail(&d, phase, err).await,
        };
        self.unlock();
        result
    }
}

/// What `app scale` left: the count of instances, for the boot it was made
/// in (a reboot starts the manifest's count again).
#[derive(Debug, Serialize, serde::Deserialize)]
struct Scaled {
    instances: u32,
    boot_id: String,
}

fn read_scaled(path: &Path) -> Option<Scaled> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes the count atomically (a new file renamed over the old one).
fn write_scaled(path: &Path, instances: u32) -> std::io::Result<()> {
    let json = serde_json::to_vec(&Scaled {
        instances,
        boot_id: boot_id(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// This boot's id (Linux); "" where there is none.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// What a restore that is not an undo keeps the data it replaces as
/// (`<db>.failed-<id>-replaced`): an undo of the same deployment then keeps
/// its own `<db>.failed-<id>` beside it.
fn replaced_tag(id: &str) -> String {
    format!("{id}-replaced")
}

/// Makes this agent the leader of its own process group, so that the steps
/// it runs (and theirs) can be found by its pid after it dies.
pub fn lead_process_group() {
    // SAFETY: setpgid on ourselves has no memory-safety preconditions.
    unsafe {
        libc::setpgid(0, 0);
    }
}

/// Kills what a dead agent's steps left running (its process group, see
/// [`lead_process_group`]), so a half-done migration cannot go on writing
/// to the data that recovery restores.
fn kill_leftovers(agent_pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(agent_pid) else {
        return;
    };
    // The agent is known dead (its lock went stale); a live process with
    // its pid is another one that got the pid since: leave it alone.
    if pgid <= 1 || crate::process::alive(agent_pid) {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; ESRCH (no such
    // group) is the common case and fine.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// `notes: 2 database(s) (1.2 MiB), 1 file tree(s)`.
fn describe(s: &Snapshot) -> String {
    let bytes: u64 = s.databases.iter().map(|d| d.size).sum();
    format!(
        "snapshot {}: {} database(s) ({:.1} MiB), {} file tree(s)",
        s.id,
        s.databases.len(),
        bytes as f64 / 1_048_576.0,
        s.files.len()
    )
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
