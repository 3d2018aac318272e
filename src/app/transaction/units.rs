//! The service's units: stopping (and holding) them, starting them and
//! checking their health; and the process group that lets recovery stop
//! what a dead agent left running.

use super::*;

impl AppAgent {
    /// Stops the unit (every instance that may run: `count` or the ones
    /// running now, whichever is more), recording first that deployment
    /// `id` touches the service (from here on, a failure or a dead agent
    /// means rollback).
    pub(super) async fn stop_unit(
        &self,
        id: &str,
        count: u32,
    ) -> Result<(), (&'static str, AppError)> {
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
    pub(super) fn hold(&self) -> Result<(), AppError> {
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
    pub(super) fn unhold(&self) -> Result<(), AppError> {
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
    pub(super) async fn units_to_stop(&self, count: u32) -> Vec<String> {
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
    pub(super) async fn control_all(
        &self,
        verb: &str,
        units: &[String],
    ) -> Result<(), CommandError> {
        for unit in units {
            unit::control(verb, unit, &self.log).await?;
        }
        Ok(())
    }

    /// Starts instances `1..=count` and waits until each is healthy
    /// (serving `revision`, when the manifest asks for that), recording that
    /// they passed.
    pub(super) async fn start_healthy(
        &self,
        id: &str,
        revision: Option<&str>,
        count: u32,
    ) -> Result<(), (&'static str, AppError)> {
        let instances: Vec<u32> = (1..=count).collect();
        self.start_instances(id, revision, &instances).await
    }

    /// Starts the given instances and waits until each is healthy.
    pub(super) async fn start_instances(
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
    pub(super) async fn check_instances(
        &self,
        revision: Option<&str>,
        instances: &[u32],
    ) -> unit::Verdict {
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
pub(super) fn kill_leftovers(agent_pid: u32) {
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
