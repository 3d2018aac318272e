//! `berth logs SERVICE --host HOST` and `berth logs FLAKE#NODE`: a
//! service's or a host's systemd journal, read over SSH — as the service's
//! own user, or as the node's `targetUser` (root) for a system target.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::app::manifest::{ServiceName, MANIFEST_DIR};
use crate::context::Context;
use crate::error::{Exit, UsageError};
use crate::host::{Host, SshHost};
use crate::journal::{self, Query};
use crate::process::{Cmd, Stream};

use super::{app, nodes};

/// How many entries `logs` shows without `-n` or `--since`.
const DEFAULT_LINES: usize = 100;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A service (`berth.services.<name>`) with --host, or a node as FLAKE#NODE without it
    #[arg(value_name = "SERVICE|FLAKE#NODE")]
    pub target: String,
    /// The service's host, as an SSH destination ([user@]host)
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Who reads the service's journal [default: the service's own user, which needs the
    /// host's `systemd-journal` group]
    #[arg(long, value_name = "USER", requires = "host")]
    pub user: Option<String>,
    /// Only this unit of the node's host (repeatable) [default: the host's whole journal]
    #[arg(long, value_name = "UNIT", conflicts_with = "host")]
    pub unit: Vec<String>,
    /// The last N entries [default: 100, or every entry with --since]
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
    /// Only entries since then, in a form journalctl reads: `2025-01-31 12:00:00`, `-1h`,
    /// `today`
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Keep showing new entries as they come, until Ctrl-C
    #[arg(short = 'f', long)]
    pub follow: bool,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let mut query = Query {
        units: Vec::new(),
        lines: args.lines.or(args.since.is_none().then_some(DEFAULT_LINES)),
        since: args.since.clone(),
        follow: args.follow,
        json: ctx.printer.json(),
    };
    match &args.host {
        Some(host) => {
            let service = ServiceName::new(&args.target).map_err(|e| {
                UsageError::new(e.to_string()).hint(
                    "with --host, name a service of `berth.services`; without it, a node as \
                     FLAKE#NODE",
                )
            })?;
            let host_args = app::HostArgs {
                host: host.clone(),
                user: args.user.clone(),
            };
            let mut interrupt = catch_interrupts()?;
            let Some(host) = interruptible(
                app::connect(ctx, &host_args, service.as_ref()),
                &mut interrupt,
            )
            .await
            else {
                return Ok(Exit::INTERRUPTED);
            };
            let host = host?;
            let name = host_args.host.rsplit('@').next().unwrap_or(host.name());
            let user = match host_args.host.split_once('@') {
                Some((user, _)) => user,
                None => host_args.user.as_deref().unwrap_or(service.as_ref()),
            };
            let read = async {
                journal::check_booted(name, &host.output(&journal::booted()).await?)?;
                query.units = vec![unit_of(&host, &service).await?];
                show(ctx, &host, name, user, &query, &mut interrupt).await
            };
            let exit = read.await;
            let _ = host.close().await;
            exit
        }
        None => {
            let node = nodes::one(ctx, &args.target).await?;
            query.units = args.unit.clone();
            let mut interrupt = catch_interrupts()?;
            let Some(host) = interruptible(nodes::reach(&ctx.ssh, &node), &mut interrupt).await
            else {
                return Ok(Exit::INTERRUPTED);
            };
            let host = host?;
            let name = format!("{} ({})", node.name, node.settings.target_host(&node.name));
            let user = node.settings.target_user.clone();
            let read = async {
                journal::check_booted(&name, &host.output(&journal::booted()).await?)?;
                show(ctx, &host, &name, &user, &query, &mut interrupt).await
            };
            let exit = read.await;
            host.close().await;
            exit
        }
    }
}

/// SIGINT, caught from now on: an interrupt then closes the connection
/// (and what runs on it) rather than killing berth outright, which would
/// leave the SSH master behind.
pub fn catch_interrupts() -> anyhow::Result<Signal> {
    signal(SignalKind::interrupt()).context("could not catch interrupts (SIGINT)")
}

/// `future`'s output, or `None` when berth is interrupted first.
async fn interruptible<T>(
    future: impl std::future::Future<Output = T>,
    interrupt: &mut Signal,
) -> Option<T> {
    tokio::select! {
        value = future => Some(value),
        _ = interrupt.recv() => None,
    }
}

/// The unit of `service`: its manifest's `unit`, else `<service>.service`
/// (the module's default).
async fn unit_of(host: &SshHost, service: &ServiceName) -> anyhow::Result<String> {
    let path = format!("{MANIFEST_DIR}/{service}.json");
    let out = host.output(&Cmd::new("cat").arg("--").arg(&path)).await?;
    if !out.status.success() {
        return Ok(format!("{service}.service"));
    }
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{path} on {} is not JSON", host.name()))?;
    manifest["unit"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{path} on {} names no unit", host.name()))
}

/// Runs journalctl on `host` and shows each entry as it comes: a line on
/// stdout, or a `journal` event with `--json`. Ends when journalctl does,
/// when stdout is closed, or on Ctrl-C (exit 130).
async fn show(
    ctx: &Context,
    host: &SshHost,
    name: &str,
    user: &str,
    query: &Query,
    interrupt: &mut Signal,
) -> anyhow::Result<Exit> {
    let printer = ctx.printer;
    let closed = Arc::new(tokio::sync::Notify::new());
    let notify = closed.clone();
    let label = name.to_owned();
    host.log().watch(move |stream, line| {
        if stream != Stream::Stdout {
            return;
        }
        if printer.json() {
            if let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) {
                printer.event(
                    "journal",
                    &serde_json::json!({ "host": label, "entry": entry }),
                );
            }
        } else if printer.data(line).is_err() {
            notify.notify_one();
        }
    });
    let cmd = journal::journalctl(query);
    let out = tokio::select! {
        out = host.output(&cmd) => out?,
        _ = interrupt.recv() => return Ok(Exit::INTERRUPTED),
        _ = closed.notified() => return Ok(Exit::SUCCESS),
    };
    let out = journal::check(name, user, out)?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        printer.line(format!("{name}: {line}"));
    }
    Ok(Exit::SUCCESS)
}
