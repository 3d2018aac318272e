//! What the commands that work on a flake's nodes share: evaluating and
//! selecting nodes, reaching a node's host, and calling its agent.

use anyhow::Context as _;

use crate::agent;
use crate::cli::Context;
use crate::deploy;
use crate::flake::{self, FlakeRef, NodeMeta, Selector};
use crate::host::{Host, SshHost};
use crate::process::Cmd;

/// The nodes `FLAKE[#NODE]` and `--on` name, from one evaluation.
pub async fn select(target: &str, on: Option<&str>) -> anyhow::Result<(FlakeRef, Vec<NodeMeta>)> {
    let target = FlakeRef::parse(target)?;
    let selector = on.map(Selector::parse).transpose()?;
    let nodes = flake::evaluate(&target.flake).await?;
    let nodes = flake::select(&nodes, target.node.as_ref(), selector.as_ref())?;
    Ok((target, nodes))
}

/// Exactly one node, named with `FLAKE#NODE`.
pub async fn one(target: &str) -> anyhow::Result<NodeMeta> {
    let (flake_ref, mut nodes) = select(target, None).await?;
    if flake_ref.node.is_none() || nodes.len() != 1 {
        return Err(crate::diagnostics::UsageError::new(format!(
            "`{target}` does not name one node"
        ))
        .hint("name it as FLAKE#NODE, e.g. `.#web1`")
        .into());
    }
    Ok(nodes.remove(0))
}

/// A node's host, reached with its `sshOptions`, the agent installed.
pub struct Connected {
    pub host: SshHost,
    /// Holds the node's ssh_config while the host is used.
    _scratch: tempfile::TempDir,
}

impl std::ops::Deref for Connected {
    type Target = SshHost;
    fn deref(&self) -> &SshHost {
        &self.host
    }
}

impl Connected {
    pub async fn close(self) {
        let _ = self.host.close().await;
    }
}

pub async fn connect(ctx: &Context, node: &NodeMeta) -> anyhow::Result<Connected> {
    let destination =
        deploy::destination(&node.name, &node.settings).map_err(anyhow::Error::msg)?;
    let scratch = tempfile::tempdir().context("could not make a temporary directory")?;
    let ssh = ctx
        .ssh
        .with_options(&node.settings.ssh_options, scratch.path())?;
    let host = SshHost::connect(&destination, &ssh).await?;
    ctx.agent.install(&host).await?;
    Ok(Connected {
        host,
        _scratch: scratch,
    })
}

/// Runs an agent verb on `host` and returns its events named `event`.
pub async fn agent_events(
    host: &SshHost,
    cmd: &Cmd,
    event: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = host
        .run(cmd)
        .await
        .with_context(|| format!("the berth agent on {} failed", host.name()))?;
    Ok(agent::find_events(&out.stdout, event))
}

/// Unix seconds as `2026-11-23 09:15:02Z`.
pub fn time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::time(1_779_357_205), "2026-05-21 09:53:25Z");
        assert_eq!(super::time(951_782_400), "2000-02-29 00:00:00Z");
    }
}
