//! `app scale`, and how many instances run now.

use super::*;

impl AppAgent {
    /// How many instances run now: what `berth app scale` left during this
    /// boot, else the manifest's count.
    pub fn running_instances(&self) -> u32 {
        read_scaled(&self.layout.scale())
            .filter(|s| s.boot_id == boot_id())
            .map(|s| s.instances)
            .filter(|n| (1..=self.manifest.max_instances()).contains(n))
            .unwrap_or(self.manifest.instances)
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
    pub(super) fn check_scale(&self, n: u32) -> Result<(), AppError> {
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
                    crate::app::manifest::MAX_INSTANCES
                ),
            });
        }
        Ok(())
    }

    pub(super) async fn scale_locked(
        &mut self,
        req: &ScaleRequest,
    ) -> Result<AgentResult, AppError> {
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
