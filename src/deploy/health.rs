//! Health checks after an activation: on the host (units that must be
//! active, commands) and from the deployer (HTTP). That no unit failed is
//! checked by the agent right after the switch.

use std::time::Duration;

use crate::flake::HealthChecks;
use crate::host::Host;
use crate::process::Cmd;

/// Runs every check; the first failure is the error, in words.
pub async fn check(host: &dyn Host, checks: &HealthChecks) -> Result<(), String> {
    for unit in &checks.units {
        let out = host
            .output(&Cmd::new("systemctl").args(["is-active", unit]))
            .await
            .map_err(|e| e.to_string())?;
        let state = out.stdout_str().trim().to_owned();
        if state != "active" {
            return Err(format!("unit {unit} is {state}, not active"));
        }
    }
    for check in &checks.commands {
        let Some((program, args)) = check.command.split_first() else {
            continue;
        };
        let cmd = Cmd::new(program).args(args);
        let limit = Duration::from_secs(check.timeout);
        match tokio::time::timeout(limit, host.run(&cmd)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(format!("health command failed: {err}")),
            Err(_) => {
                return Err(format!(
                    "health command `{cmd}` took longer than {}s",
                    check.timeout
                ))
            }
        }
    }
    if !checks.http.is_empty() {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("could not make an HTTP client: {e}"))?;
        for check in &checks.http {
            http(
                &client,
                &check.url,
                check.expect_status,
                check.timeout,
                check.retries,
            )
            .await?;
        }
    }
    Ok(())
}

/// GET `url` until it answers `expect`, at most `retries` more times.
async fn http(
    client: &reqwest::Client,
    url: &str,
    expect: u16,
    timeout: u64,
    retries: u32,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match client
            .get(url)
            .timeout(Duration::from_secs(timeout))
            .send()
            .await
        {
            Ok(response) if response.status().as_u16() == expect => return Ok(()),
            Ok(response) => last = format!("answered {}", response.status().as_u16()),
            Err(err) => last = format!("failed: {err}"),
        }
    }
    Err(format!(
        "health check GET {url} {last} (expected {expect}, {} tries)",
        retries + 1
    ))
}
