//! `app rollback` to a kept release, `app status`, `app unblock` and `app history`.

use super::*;

impl AppAgent {
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

    pub(super) async fn rollback_locked(
        &mut self,
        req: &RollbackRequest,
    ) -> Result<AgentResult, AppError> {
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
                    .await
                    .map_err(|e| ("snapshot", e))?;
                self.phase(&d.id, "snapshot", &describe(&snap));
                self.stop_unit(&d.id, count).await?;
                let restored = snapshot::restore(source, &replaced_tag(&d.id), false, &self.log)
                    .await
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
    pub(super) fn previous(&self, current: Option<&str>) -> Result<Option<String>, AppError> {
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
            latest_snapshot: snapshot::list(&self.layout.snapshots())?.into_iter().next(),
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
}
