//! The service's systemd unit: started, stopped and restarted only through
//! `sudo -n systemctl <verb> <unit>` (the narrow rule the NixOS module
//! writes for the service's user), and its health over loopback.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::process::{self, Cmd, CommandError, JobLog, Via};

/// What systemd says about the unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UnitState {
    pub active_state: String,
    pub sub_state: String,
    /// How often systemd restarted it since it was last started by hand: a
    /// rising count is a crash loop, even while `is-active` says active.
    pub n_restarts: u64,
    pub main_pid: u32,
}

/// `systemctl VERB UNIT`, through `sudo -n` unless berth runs as root.
pub fn systemctl(verb: &str, unit: &str) -> Cmd {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Cmd::new("systemctl").args([verb, unit])
    } else {
        Cmd::new("sudo").args(["-n", "systemctl", verb, unit])
    }
}

/// Parses `systemctl show` output (`Key=value` lines).
pub fn parse_show(text: &str) -> UnitState {
    let mut state = UnitState::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "ActiveState" => state.active_state = value.to_owned(),
            "SubState" => state.sub_state = value.to_owned(),
            "NRestarts" => state.n_restarts = value.parse().unwrap_or(0),
            "MainPID" => state.main_pid = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    state
}

pub async fn control(verb: &str, unit: &str, log: &JobLog) -> Result<(), CommandError> {
    process::output(&systemctl(verb, unit), Via::Local, log)
        .await?
        .check()
        .map(drop)
}

/// Reading needs no privilege.
pub async fn show(unit: &str, log: &JobLog) -> Result<UnitState, CommandError> {
    let out = process::output(
        &Cmd::new("systemctl").args([
            "show",
            "--property=ActiveState,SubState,NRestarts,MainPID",
            unit,
        ]),
        Via::Local,
        log,
    )
    .await?
    .check()?;
    Ok(parse_show(&out.stdout_str()))
}

/// What the health check wants.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub url: String,
    pub status: u16,
    pub timeout: Duration,
    pub settle: Duration,
    /// The body must contain this (the revision's first 12 characters).
    pub expect: Option<String>,
}

/// How the check ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub healthy: bool,
    pub message: String,
}

fn unhealthy(message: String) -> Verdict {
    Verdict {
        healthy: false,
        message,
    }
}

/// One GET: `Ok(())` when it answers as wanted, else what it answered.
async fn probe(client: &reqwest::Client, check: &HealthCheck) -> Result<(), String> {
    let response = client
        .get(&check.url)
        .send()
        .await
        .map_err(|e| format!("{}: {}", check.url, crate::error::causes(&e)))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    if status != check.status {
        return Err(format!(
            "{} answered {status}, not {}",
            check.url, check.status
        ));
    }
    if let Some(expect) = &check.expect {
        if !body.contains(expect.as_str()) {
            return Err(format!("{} does not report revision {expect}", check.url));
        }
    }
    Ok(())
}

/// Waits until the unit is up and the URL answers as wanted, then watches
/// it for `settle`: a unit that systemd restarts meanwhile (its NRestarts
/// rises) or that stops answering is unhealthy.
pub async fn wait_healthy(unit: &str, check: &HealthCheck, log: &JobLog) -> Verdict {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => return unhealthy(format!("could not make an HTTP client: {e}")),
    };
    let baseline = match show(unit, log).await {
        Ok(s) => s.n_restarts,
        Err(e) => return unhealthy(e.to_string()),
    };
    let deadline = Instant::now() + check.timeout;
    let mut healthy_since: Option<Instant> = None;
    let mut last = String::from("no answer yet");
    loop {
        let state = match show(unit, log).await {
            Ok(s) => s,
            Err(e) => return unhealthy(e.to_string()),
        };
        if state.n_restarts > baseline {
            return unhealthy(format!(
                "{unit} is crash-looping: systemd restarted it {} time(s) since it started",
                state.n_restarts - baseline
            ));
        }
        if state.active_state == "failed" {
            return unhealthy(format!("{unit} failed ({})", state.sub_state));
        }
        match probe(&client, check).await {
            Ok(()) => {
                let since = *healthy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= check.settle {
                    return Verdict {
                        healthy: true,
                        message: format!("{} answered {}", check.url, check.status),
                    };
                }
            }
            Err(why) => {
                if healthy_since.is_some() {
                    return unhealthy(format!("stopped answering after it was healthy: {why}"));
                }
                last = why;
            }
        }
        if healthy_since.is_none() && Instant::now() >= deadline {
            return unhealthy(format!(
                "not healthy within {}s: {last}",
                check.timeout.as_secs()
            ));
        }
        // Often until the first answer (an app's start is what a deploy
        // waits on), then calmly while it settles.
        let pause = if healthy_since.is_some() { 250 } else { 50 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_systemctl_show() {
        let s = parse_show("ActiveState=active\nSubState=running\nNRestarts=3\nMainPID=42\n");
        assert_eq!(
            s,
            UnitState {
                active_state: "active".into(),
                sub_state: "running".into(),
                n_restarts: 3,
                main_pid: 42
            }
        );
    }

    #[test]
    fn systemctl_goes_through_sudo_unless_root() {
        let cmd = systemctl("restart", "notes.service");
        let argv = cmd.argv();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(argv, ["systemctl", "restart", "notes.service"]);
        } else {
            assert_eq!(
                argv,
                ["sudo", "-n", "systemctl", "restart", "notes.service"]
            );
        }
    }
}
