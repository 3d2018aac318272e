//! The transaction's steps on the service's data: the snapshot before a
//! change, the undo that puts it back, `snapshot create`, `snapshot
//! restore` and pruning. What each kind of data needs is the manifest's
//! `Data`'s (src/app/snapshot/data.rs).

use super::*;

impl AppAgent {
    /// Snapshots the declared data under `id`, after checking there is room
    /// for it (and, with `restore`, for an undo to put it back).
    pub(super) async fn snapshot_into(
        &self,
        id: &str,
        restore: bool,
    ) -> Result<Snapshot, AppError> {
        let dir = self.layout.snapshot(id);
        Ok(self
            .manifest
            .data
            .snapshot(
                &dir,
                id,
                self.service(),
                &self.layout.dir,
                restore,
                &self.log,
            )
            .await?)
    }

    /// Puts the service back as deployment `d` found it: stop, restore the
    /// snapshot taken under `d`'s id (if it took one), `current` back to
    /// `d`'s starting release, start, and check health again. `block`
    /// refuses `d`'s revision from now on.
    pub(super) async fn undo(
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
        let data = self.manifest.data.names().join(", ");
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
            match snapshot::restore(&snap_dir, &d.id, resume, &self.log).await {
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
    pub(super) fn prune(&self, protect_releases: &[&str], protect_snapshot: &str) {
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

    /// Whether deployment `id` was told to skip its snapshot.
    pub(super) fn snapshot_skipped(&self, id: &str) -> Result<bool, AppError> {
        Ok(self
            .store
            .events(id)?
            .iter()
            .any(|e| e.phase == SNAPSHOT_SKIPPED))
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
            Ok(_) => self.snapshot_into(id, false).await,
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
            let snap = self
                .snapshot_into(id, true)
                .await
                .map_err(|e| ("snapshot", e))?;
            self.phase(
                id,
                "snapshot",
                &format!("kept the data now: {}", describe(&snap)),
            );
            let count = self.running_instances();
            self.stop_unit(id, count).await?;
            let restored = snapshot::restore(&dir, &replaced_tag(id), false, &self.log)
                .await
                .map_err(|e| ("restore", e.into()))?;
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

/// What a restore that is not an undo keeps the data it replaces as
/// (`<db>.failed-<id>-replaced`): an undo of the same deployment then keeps
/// its own `<db>.failed-<id>` beside it.
pub(super) fn replaced_tag(id: &str) -> String {
    format!("{id}-replaced")
}

/// `snapshot <id>: 1 SQLite database(s) (1.2 MiB), 0 file tree(s)`.
pub(super) fn describe(s: &Snapshot) -> String {
    format!("snapshot {}: {}", s.id, s.summary())
}
