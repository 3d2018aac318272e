//! `berth lock acquire|release|status [SERVICE] --host HOST`: hold a
//! service (or a whole host) against deploys, with an owner and a reason.
//! Exit codes: 0 done, 2 held by another, 3 release by a non-holder
//! refused, 4 timed out waiting.

use anyhow::Context as _;

use crate::app::manifest::ServiceName;
use crate::context::Context;
use crate::error::{Exit, RemoteError};
use crate::host::Host;
use crate::process::Cmd;

use super::app::{self, HostArgs};

#[derive(Debug, clap::Subcommand)]
pub enum LockCommand {
    /// Hold the lock (again by the same owner: nothing changes)
    Acquire(AcquireArgs),
    /// Let go of it (only its owner can)
    Release(ReleaseArgs),
    /// Who holds it
    Status(LockTarget),
}

/// A service's lock, or the whole host's.
#[derive(Debug, clap::Args)]
pub struct LockTarget {
    /// The service [default: the whole host]
    #[arg(value_name = "SERVICE")]
    pub service: Option<ServiceName>,
    #[command(flatten)]
    pub host: HostArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub target: LockTarget,
    /// Who holds it [default: you, as user@machine]
    #[arg(long, value_name = "NAME")]
    pub owner: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub target: LockTarget,
    /// Who holds it [default: you, as user@machine]
    #[arg(long, value_name = "NAME")]
    pub owner: Option<String>,
    /// Why (shown to whoever finds it held)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Wait this long for a held lock
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait: u64,
}

pub async fn run(ctx: &Context, command: LockCommand) -> anyhow::Result<Exit> {
    let (action, args, owner, reason, wait) = match command {
        LockCommand::Acquire(a) => ("acquire", a.target, a.owner, a.reason, a.wait),
        LockCommand::Release(a) => ("release", a.target, a.owner, None, 0),
        LockCommand::Status(a) => ("status", a, None, None, 0),
    };
    let owner = owner.unwrap_or_else(|| super::deploy::audit(None).actor);
    let default_user = args.service.as_deref().unwrap_or("root");
    let host = app::connect(ctx, &args.host, default_user).await?;
    if args.service.is_none() && host.escalates() && ctx.ask_sudo_password {
        super::nodes::read_sudo_password(ctx, &[host.name().to_owned()])?;
    }
    // The host's lock is root's: a user other than root takes it through
    // sudo, with the host's own agent (the one its sudo rule names) unless
    // --agent names one.
    let program = match &args.service {
        None if host.escalates() => ctx.agent.for_login(true).program,
        _ => app::program(ctx),
    };
    let mut cmd = Cmd::new(program)
        .args(["agent", "lock", action, "--owner", &owner])
        .args(["--wait", &wait.to_string()]);
    match &args.service {
        Some(service) => cmd = cmd.args(["--service", service]),
        None => cmd = cmd.as_root(),
    }
    if let Some(reason) = &reason {
        cmd = cmd.args(["--reason", reason]);
    }
    let out = host.output(&cmd).await;
    let _ = host.close().await;
    let out = out.context("could not run the berth agent")?;
    let event = crate::agent::find_events(&out.stdout, "lock")
        .into_iter()
        .next();
    let Some(event) = event else {
        return Err(
            RemoteError::from_agent(&args.host.host, &out.stderr, out.status.code()).into(),
        );
    };
    ctx.printer.event("lock", &event);
    ctx.printer.line(event["message"].as_str().unwrap_or(""));
    Ok(Exit(
        u8::try_from(out.status.code().unwrap_or(1)).unwrap_or(1),
    ))
}
