//! What the commands that work on a flake's nodes share: evaluating and
//! selecting nodes, reaching a node's host, and calling its agent.

use anyhow::Context as _;

use crate::agent;
use crate::context::Context;
use crate::deploy;
use crate::error::UsageError;
use crate::flake::{self, FlakeRef, NodeMeta, Selector};
use crate::host::{Host, SshHost, SshSettings};
use crate::process::Cmd;

/// Which nodes a command acts on: `[FLAKE[#NODE]] [--on SELECTOR]`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// The flake and, after `#`, one node (default: every node of `.`)
    #[arg(value_name = "FLAKE[#NODE]", default_value = ".")]
    pub target: String,
    /// Which nodes: names, globs, @tag, comma-separated
    #[arg(long, value_name = "SELECTOR")]
    pub on: Option<String>,
}

/// The nodes `FLAKE[#NODE]` and `--on` name, from one evaluation.
pub async fn select(ctx: &Context, args: &NodesArgs) -> anyhow::Result<(FlakeRef, Vec<NodeMeta>)> {
    let target = FlakeRef::parse(&args.target)?;
    let selector = args.on.as_deref().map(Selector::parse).transpose()?;
    ctx.printer.line(format!("evaluating {}", target.flake));
    let nodes = select_in(&target, selector.as_ref()).await?;
    ask_sudo_password(ctx, &nodes)?;
    Ok((target, nodes))
}

/// Reads the sudo password from the terminal, once, before any host is
/// reached: when `--ask-sudo-password` or a node's `askSudoPassword` asks
/// for it and one of `nodes` logs in as a user other than root. A host
/// whose sudo needs no password never gets it.
pub fn ask_sudo_password(ctx: &Context, nodes: &[NodeMeta]) -> anyhow::Result<()> {
    let escalating: Vec<String> = nodes
        .iter()
        .filter(|n| n.settings.escalates())
        .filter(|n| ctx.ask_sudo_password || n.settings.ask_sudo_password)
        .filter_map(|n| deploy::destination(&n.name, &n.settings).ok())
        .map(|d| d.to_string())
        .collect();
    read_sudo_password(ctx, &escalating)
}

/// Reads the sudo password for `destinations` from the terminal, once
/// (nothing when there are none, or it was read already).
pub fn read_sudo_password(ctx: &Context, destinations: &[String]) -> anyhow::Result<()> {
    if destinations.is_empty() || ctx.ssh.sudo_password.get().is_some() {
        return Ok(());
    }
    let hosts = destinations.join(", ");
    let prompt = format!("[berth] sudo password for {hosts}: ");
    let password = crate::process::read_password(&prompt).map_err(|err| {
        UsageError::new(format!(
            "the sudo password for {hosts} was asked for, but there is no terminal to read it from ({err})"
        ))
        .hint(
            "give the user a sudo rule that needs no password (berth.agent.deployUsers), \
             or run berth at a terminal",
        )
    })?;
    ctx.ssh.sudo_password.set(password);
    Ok(())
}

/// The nodes of `target` (whose flake may be a locked reference) that its
/// `#NODE` and `selector` name, from one evaluation.
pub async fn select_in(
    target: &FlakeRef,
    selector: Option<&Selector>,
) -> anyhow::Result<Vec<NodeMeta>> {
    // A named node is evaluated alone: the others' configurations are not.
    let nodes = flake::evaluate(&target.flake, target.node.as_ref()).await?;
    Ok(flake::select(&nodes, target.node.as_ref(), selector)?)
}

/// Exactly one node, named with `FLAKE#NODE`.
pub async fn one(ctx: &Context, target: &str) -> anyhow::Result<NodeMeta> {
    let args = NodesArgs {
        target: target.to_owned(),
        on: None,
    };
    let (flake_ref, mut nodes) = select(ctx, &args).await?;
    if flake_ref.node.is_none() || nodes.len() != 1 {
        return Err(
            UsageError::new(format!("`{target}` does not name one node"))
                .hint("name it as FLAKE#NODE, e.g. `.#web1`")
                .into(),
        );
    }
    Ok(nodes.remove(0))
}

/// A node's host, reached with its `sshOptions`, the agent installed.
pub struct Connected {
    pub host: SshHost,
    /// The agent this node's host runs (the host's own for a deploy user).
    pub agent: agent::Program,
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

/// A node's host with the agent installed.
pub async fn connect(ctx: &Context, node: &NodeMeta) -> anyhow::Result<Connected> {
    let mut host = reach(&ctx.ssh, node).await?;
    host.agent = ctx.agent.for_node(&node.settings);
    host.agent.install(&host.host).await?;
    Ok(host)
}

/// A node's host, as its `targetUser` with its `sshOptions`; nothing is
/// installed (`berth logs`, `berth exec` need no agent).
pub async fn reach(ssh: &SshSettings, node: &NodeMeta) -> anyhow::Result<Connected> {
    let destination =
        deploy::destination(&node.name, &node.settings).map_err(anyhow::Error::msg)?;
    let scratch = tempfile::tempdir().context("could not make a temporary directory")?;
    let ssh = ssh
        .with_options(&node.settings.ssh_options, scratch.path())?
        .escalating(&node.settings.privilege_escalation_command);
    let host = SshHost::connect(&destination, &ssh).await?;
    Ok(Connected {
        host,
        agent: agent::Program {
            program: "berth".into(),
            closure: None,
        },
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
