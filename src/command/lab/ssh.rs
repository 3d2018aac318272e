//! `berth lab ssh HOST [-- CMD…]`.

use std::ffi::OsString;

use crate::context::Context;
use crate::error::Exit;
use crate::lab::Lab;
use crate::process::{self, quote_line, Cmd, JobLog, StdioMode, Via};

use super::LabDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The lab host, e.g. h1
    pub host: String,
    /// A command to run instead of a shell; each word reaches it unchanged
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
    #[command(flatten)]
    pub dir: LabDir,
}

pub async fn run(_ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let lab = Lab::open(&args.dir.lab_dir)?;
    let host = lab.host(&args.host)?;
    let cmd = ssh_cmd(&lab.ssh_config(), &host.name, &args.command);
    let out = process::output(&cmd, Via::Local, &JobLog::new()).await?;
    Ok(Exit(out.status.code().map_or(1, |c| c as u8)))
}

/// `ssh -F CONFIG [-t] HOST [-- LINE]`, with the terminal shared.
fn ssh_cmd(config: &std::path::Path, host: &str, command: &[OsString]) -> Cmd {
    let cmd = Cmd::new("ssh")
        .arg("-F")
        .arg(config)
        .stdio(StdioMode::Inherit);
    if command.is_empty() {
        cmd.args(["-t", host])
    } else {
        cmd.args([host, "--"]).arg(quote_line(command))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn command_words_are_quoted_into_one_line() {
        let cmd = ssh_cmd(
            Path::new("/lab/ssh_config"),
            "h1",
            &["printf".into(), "%s".into(), "a b".into()],
        );
        assert_eq!(
            cmd.argv(),
            [
                "ssh",
                "-F",
                "/lab/ssh_config",
                "h1",
                "--",
                "printf %s 'a b'"
            ]
        );
        let shell = ssh_cmd(Path::new("/lab/ssh_config"), "h1", &[]);
        assert_eq!(shell.argv(), ["ssh", "-F", "/lab/ssh_config", "-t", "h1"]);
    }
}
