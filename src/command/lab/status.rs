//! `berth lab status`.

use serde::Serialize;

use crate::context::Context;
use crate::error::Exit;
use crate::lab::{HostKind, Lab};

use super::LabDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub dir: LabDir,
}

#[derive(Serialize)]
struct HostEvent<'a> {
    host: &'a str,
    kind: HostKind,
    address: String,
    pid: Option<u32>,
    running: bool,
    ssh: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let lab = Lab::open(&args.dir.lab_dir)?;
    print_hosts(ctx, &lab);
    let all_running = lab.hosts().iter().all(|h| lab.is_running(h));
    Ok(if all_running {
        Exit::SUCCESS
    } else {
        Exit::FAILURE
    })
}

/// One line (or one `lab_host` event) per host.
pub(super) fn print_hosts(ctx: &Context, lab: &Lab) {
    let config = lab.ssh_config();
    for host in lab.hosts() {
        let event = HostEvent {
            host: &host.name,
            kind: host.kind,
            address: host.net.addr.to_string(),
            pid: host.pid,
            running: lab.is_running(host),
            ssh: format!("ssh -F {} {}", config.display(), host.name),
        };
        ctx.printer.event("lab_host", &event);
        let kind = match host.kind {
            HostKind::Plain => "plain",
            HostKind::Systemd => "systemd",
        };
        ctx.printer.line(format!(
            "{:<4} {:<8} {:<14} {:<8} {}",
            ctx.printer.bold(&host.name),
            kind,
            event.address,
            if event.running { "running" } else { "stopped" },
            event.ssh
        ));
    }
}
