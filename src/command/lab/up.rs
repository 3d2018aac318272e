//! `berth lab up`.

use crate::context::Context;
use crate::error::Exit;
use crate::lab::{HostKind, Lab, Rate, Shaping, RATE_SYNTAX};

use super::status::print_hosts;
use super::LabDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many hosts to make
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub hosts: u8,
    /// Boot systemd in each host (a container on an overlay of /), for units and sudo
    #[arg(long)]
    pub systemd: bool,
    /// Limit the link between this machine and the lab to RATE each way, e.g. 100mbit (tc units: kbit, mbit, gbit)
    #[arg(long, value_name = "RATE", value_parser = |s: &str| parse_rate(s, "--uplink 100mbit"))]
    pub uplink: Option<Rate>,
    /// Limit each host's own link to RATE each way, e.g. 1gbit (tc units: kbit, mbit, gbit)
    #[arg(long, value_name = "RATE", value_parser = |s: &str| parse_rate(s, "--link 1gbit"))]
    pub link: Option<Rate>,
    #[command(flatten)]
    pub dir: LabDir,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let kind = if args.systemd {
        HostKind::Systemd
    } else {
        HostKind::Plain
    };
    let kinds = vec![kind; args.hosts as usize];
    let dir = &args.dir.lab_dir;
    ctx.printer.line(format!(
        "making {} {} host(s) in {}",
        args.hosts,
        if args.systemd { "systemd" } else { "plain" },
        dir.display()
    ));
    let shaping = Shaping {
        uplink: args.uplink,
        link: args.link,
    };
    let lab = tokio::select! {
        lab = Lab::up_shaped(dir, &kinds, shaping) => lab?,
        _ = tokio::signal::ctrl_c() => {
            ctx.printer.warn("interrupted: removing what was made");
            Lab::down(dir).await?;
            return Ok(Exit::INTERRUPTED);
        }
    };
    print_hosts(ctx, &lab);
    ctx.printer.line(format!(
        "use the hosts by name with `export BERTH_SSH_CONFIG={}`; remove them with `berth lab down`",
        lab.ssh_config().display()
    ));
    Ok(Exit::SUCCESS)
}

/// A rate, or clap's usage error with `example` (the flag and a value).
fn parse_rate(text: &str, example: &str) -> Result<Rate, String> {
    Rate::parse(text).map_err(|err| {
        if err.contains(RATE_SYNTAX) {
            format!("{RATE_SYNTAX}, e.g. `{example}`")
        } else {
            format!("{err}, e.g. `{example}`")
        }
    })
}
