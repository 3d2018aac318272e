//! `berth snapshot create|list|restore SERVICE --host HOST`: the service's
//! data, snapshot with the same code a deploy uses (SQLite's online backup,
//! checked and checksummed).

use std::time::Instant;

use anyhow::Context as _;

use crate::context::Context;
use crate::error::{Exit, RemoteError};

use super::app::{self, ServiceArgs};

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot the service's declared data now
    Create(CreateArgs),
    /// The service's snapshots, newest first
    List(ServiceArgs),
    /// Put the data back from a snapshot (stops the service, keeps today's data beside)
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// Wait this long for the service's lock (a deploy in progress)
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub lock_wait: u64,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// The snapshot's id (see `berth snapshot list`)
    #[arg(value_name = "ID", value_parser = crate::state::id::parse_id)]
    pub id: String,
    /// Wait this long for the service's lock before giving up
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub lock_wait: u64,
}

pub async fn run(ctx: &Context, command: SnapshotCommand) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let actor = super::deploy::audit(None).actor;
    let (target, cmd) = match &command {
        SnapshotCommand::Create(a) => (
            &a.target,
            app::agent(ctx, "snapshot", Some(&a.target.service))
                .arg("create")
                .args(["--actor", &actor, "--lock-wait", &a.lock_wait.to_string()]),
        ),
        SnapshotCommand::List(t) => (t, app::agent(ctx, "snapshot", Some(&t.service)).arg("list")),
        SnapshotCommand::Restore(a) => (
            &a.target,
            app::agent(ctx, "restore", Some(&a.target.service)).args([
                "--snapshot",
                &a.id,
                "--id",
                &crate::state::new_id(),
                "--actor",
                &actor,
                "--lock-wait",
                &a.lock_wait.to_string(),
            ]),
        ),
    };
    let host = app::connect(ctx, &target.host, &target.service).await?;
    let run = app::run_agent(ctx, &host, &cmd).await;
    let _ = host.close().await;
    let run = run.context("the snapshot failed")?;
    if let Some(result) = &run.result {
        ctx.printer.event(crate::agent::EVENT_RESULT, result);
        ctx.printer.line(format!(
            "{} on {}: {} [{:.1}s]",
            target.service,
            target.host.host,
            result.message,
            started.elapsed().as_secs_f64()
        ));
        return Ok(app::exit_of(result.outcome));
    }
    let snapshots = crate::agent::find_events(&run.stdout, "snapshot");
    if snapshots.is_empty() && matches!(command, SnapshotCommand::List(_)) {
        ctx.printer
            .line(format!("{} has no snapshots", target.service));
    }
    if snapshots.is_empty() && !matches!(command, SnapshotCommand::List(_)) {
        return Err(RemoteError::from_agent(&target.host.host, b"", None).into());
    }
    for s in &snapshots {
        ctx.printer.line(snapshot_line(s));
    }
    Ok(Exit::SUCCESS)
}

/// `<id>  <time>  <what it holds>`, from a `snapshot` event.
pub fn snapshot_line(s: &serde_json::Value) -> String {
    let what = serde_json::from_value::<crate::app::snapshot::Snapshot>(s.clone())
        .map_or_else(|_| "?".to_owned(), |s| s.summary());
    format!(
        "{}  {}  {what}",
        s["id"].as_str().unwrap_or("?"),
        crate::state::utc_time(s["created"].as_i64().unwrap_or(0)),
    )
}
