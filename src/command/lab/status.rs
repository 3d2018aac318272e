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
    /// This machine's own address on the lab network, which hosts reach.
    machine_address: String,
    /// The limit on the link between this machine and the lab, each way.
    uplink_rate: Option<String>,
    /// The limit on each host's own link, each way.
    link_rate: Option<String>,
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

/// A line on the lab's network, then one line (or one `lab_host` event) per
/// host.
pub(super) fn print_hosts(ctx: &Context, lab: &Lab) {
    let config = lab.ssh_config();
    let shaping = lab.shaping();
    let uplink_rate = shaping.uplink.as_ref().map(ToString::to_string);
    let link_rate = shaping.link.as_ref().map(ToString::to_string);
    if let Some(switch) = lab.switch() {
        let rate = |r: &Option<String>| r.clone().unwrap_or_else(|| "unlimited".into());
        ctx.printer.line(format!(
            "network {}, this machine {}; uplink {}, each host's link {}",
            switch.network(),
            switch.addr,
            rate(&uplink_rate),
            rate(&link_rate),
        ));
    }
    for host in lab.hosts() {
        let event = HostEvent {
            host: &host.name,
            kind: host.kind,
            address: host.net.addr.to_string(),
            pid: host.pid,
            running: lab.is_running(host),
            ssh: format!("ssh -F {} {}", config.display(), host.name),
            machine_address: host.net.out_addr.to_string(),
            uplink_rate: uplink_rate.clone(),
            link_rate: link_rate.clone(),
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
