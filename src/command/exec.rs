//! `berth exec [FLAKE[#NODE]] [--on SELECTOR] -- COMMAND...`: one command
//! on many nodes' hosts at once, each output line prefixed with its node,
//! and each host's exit code in a summary.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use crate::context::Context;
use crate::error::Exit;
use crate::flake::NodeMeta;
use crate::host::{tailscale, Host, SshSettings};
use crate::output::Printer;
use crate::process::{Cmd, ExitStatus, Stream};

use super::nodes;

/// The JSON event of one host's run.
pub const EVENT_EXEC: &str = "exec_result";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub nodes: nodes::NodesArgs,
    /// How many hosts at once
    #[arg(short = 'p', long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub parallel: u64,
    /// Run it as root: through the node's privilegeEscalationCommand (sudo) where the node's
    /// targetUser is not root. Without it, it runs as targetUser
    #[arg(long)]
    pub root: bool,
    /// The program and its arguments, after `--`. Each word reaches the host as it is, read by
    /// no shell of berth's: for pipes or variables, run `sh -c '…'`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// How the command went on one host.
#[derive(Debug, Serialize)]
pub struct HostRun {
    pub node: String,
    pub host: String,
    /// Its exit code; none when it was killed or never ran.
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Why it did not run (no connection, …).
    pub error: Option<String>,
    pub seconds: f64,
}

impl HostRun {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }

    fn describe(&self) -> String {
        match (&self.error, self.exit_code, self.signal) {
            (Some(error), _, _) => format!("FAILED: {error}"),
            (None, Some(0), _) => "exit 0".into(),
            (None, Some(code), _) => format!("FAILED: exit {code}"),
            (None, None, Some(signal)) => format!("FAILED: killed by signal {signal}"),
            (None, None, None) => "FAILED".into(),
        }
    }
}

/// The command as the hosts run it: argv, quoted for the remote shell by
/// [`Cmd::remote_line`] and nothing else.
pub fn command(words: &[OsString]) -> Cmd {
    Cmd::new(&words[0]).args(&words[1..])
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let printer = ctx.printer;
    let (_, mut selected) = nodes::select(ctx, &args.nodes).await?;
    tailscale::resolve_nodes(&mut selected, printer).await?;
    let mut interrupt = super::logs::catch_interrupts()?;
    let cmd = command(&args.command);
    let cmd = Arc::new(if args.root { cmd.as_root() } else { cmd });
    let width = selected
        .iter()
        .map(|n| n.name.as_str().len())
        .max()
        .unwrap_or(0);
    let limit = Arc::new(tokio::sync::Semaphore::new(args.parallel as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for node in selected {
        let (cmd, limit, ssh) = (cmd.clone(), limit.clone(), ctx.ssh.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            run_on(node, &ssh, &cmd, printer, width).await
        });
    }
    let mut runs = Vec::new();
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(joined) => {
                    let run = joined.context("a host's task failed")?;
                    printer.event(EVENT_EXEC, &run);
                    runs.push(run);
                }
                None => break,
            },
            _ = interrupt.recv() => {
                // Dropping the tasks kills each ssh and closes each connection.
                tasks.shutdown().await;
                printer.warn("interrupted: the command was stopped on the hosts it still ran on");
                return Ok(Exit::INTERRUPTED);
            }
        }
    }
    runs.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(summarize(&runs, printer))
}

/// Connects to `node`'s host and runs `cmd` there, showing each line as it
/// comes (not with `--json`, whose events carry the output whole).
async fn run_on(
    node: NodeMeta,
    ssh: &SshSettings,
    cmd: &Cmd,
    printer: Printer,
    width: usize,
) -> HostRun {
    let started = Instant::now();
    let mut run = HostRun {
        node: node.name.to_string(),
        host: node.settings.target_host(&node.name).to_owned(),
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
        seconds: 0.0,
    };
    let host = match nodes::reach(ssh, &node).await {
        Ok(host) => host,
        Err(err) => {
            run.error = Some(format!("{err:#}"));
            run.seconds = started.elapsed().as_secs_f64();
            return run;
        }
    };
    if !printer.json() {
        let label = format!("{:<width$}", run.node);
        host.log().watch(move |stream, line| match stream {
            Stream::Stdout => {
                let _ = printer.data(&format!("{label} | {line}"));
            }
            Stream::Stderr => printer.line(format!("{label} ! {line}")),
        });
    }
    match host.output(cmd).await {
        Ok(out) => {
            match out.status {
                ExitStatus::Code(code) => run.exit_code = Some(code),
                ExitStatus::Signal(signal) => run.signal = Some(signal),
            }
            run.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            run.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        Err(err) => run.error = Some(format!("{:#}", anyhow::Error::new(err))),
    }
    host.close().await;
    run.seconds = started.elapsed().as_secs_f64();
    run
}

/// One line per host, the summary, and the exit code.
fn summarize(runs: &[HostRun], printer: Printer) -> Exit {
    let ok = runs.iter().filter(|r| r.ok()).count();
    printer.line(String::new());
    printer.line(format!("{ok} of {} host(s) succeeded", runs.len()));
    for run in runs {
        printer.line(format!(
            "  {} ({}): {} [{:.1}s]",
            printer.bold(&run.node),
            run.host,
            run.describe(),
            run.seconds
        ));
    }
    printer.event(
        "summary",
        &serde_json::json!({ "hosts": runs.len(), "ok": ok, "failed": runs.len() - ok }),
    );
    exit_of(runs)
}

/// 0 when the command exited 0 on every host, else 1 (as a deploy with a
/// failed host).
fn exit_of(runs: &[HostRun]) -> Exit {
    if runs.iter().all(HostRun::ok) {
        Exit::SUCCESS
    } else {
        Exit::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        exec: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.exec)
    }

    #[test]
    fn the_command_comes_after_the_double_dash_word_for_word() {
        let args = parse(&[
            ".", "--on", "@web", "-p", "4", "--", "printf", "%s\n", "a b", "--on",
        ])
        .unwrap();
        assert_eq!(args.nodes.on.as_deref(), Some("@web"));
        assert_eq!(args.parallel, 4);
        let cmd = command(&args.command);
        assert_eq!(cmd.argv(), ["printf", "%s\n", "a b", "--on"]);
        assert_eq!(cmd.remote_line(), "printf '%s\n' 'a b' --on");
    }

    #[test]
    fn no_command_or_no_parallelism_is_refused() {
        assert!(parse(&["."]).is_err());
        assert!(parse(&[".", "uptime"]).is_err());
        assert!(parse(&[".", "-p", "0", "--", "uptime"]).is_err());
    }

    #[test]
    fn a_host_fails_unless_its_command_exited_0() {
        let run = |exit_code, signal, error: Option<&str>| HostRun {
            node: "web1".into(),
            host: "h1".into(),
            exit_code,
            signal,
            stdout: String::new(),
            stderr: String::new(),
            error: error.map(str::to_owned),
            seconds: 0.0,
        };
        assert_eq!(run(Some(0), None, None).describe(), "exit 0");
        assert_eq!(run(Some(3), None, None).describe(), "FAILED: exit 3");
        assert_eq!(
            run(None, Some(9), None).describe(),
            "FAILED: killed by signal 9"
        );
        assert_eq!(
            run(None, None, Some("no route")).describe(),
            "FAILED: no route"
        );
        assert_eq!(exit_of(&[run(Some(0), None, None)]), Exit::SUCCESS);
        assert_eq!(
            exit_of(&[run(Some(0), None, None), run(Some(1), None, None)]),
            Exit::FAILURE
        );
        assert_eq!(exit_of(&[run(None, None, Some("x"))]), Exit::FAILURE);
    }
}
