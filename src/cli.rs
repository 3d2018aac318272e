//! The command line: global flags, subcommands, and the step that turns
//! flags and environment into the settings commands use.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::command;
use crate::context::Context;
use crate::diagnostics;
use crate::env;
use crate::error::{Exit, UsageError};
use crate::host::SshSettings;
use crate::output::{ColorChoice, Printer};

/// Deploy NixOS hosts and the apps on them, with magic rollback.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The heading the global options stand under in every command's help, after
/// the command's own options.
pub const GLOBAL_OPTIONS: &str = "Global options";

#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// More output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG wins)
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = GLOBAL_OPTIONS)]
    pub verbose: u8,

    /// Write NDJSON events to stdout (messages for humans stay on stderr)
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS)]
    pub json: bool,

    /// When to colour messages (NO_COLOR turns `auto` off)
    #[arg(long, value_enum, value_name = "WHEN", default_value_t, global = true, help_heading = GLOBAL_OPTIONS)]
    pub color: ColorChoice,

    /// An ssh_config for every SSH connection, berth's own and nix's
    #[arg(long, value_name = "FILE", env = env::BERTH_SSH_CONFIG, global = true, help_heading = GLOBAL_OPTIONS)]
    pub ssh_config: Option<PathBuf>,

    /// Trust and record the key of a host never seen before (a changed key is refused anyway)
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS)]
    pub accept_new_host_keys: bool,

    /// The berth program on the hosts [default: this berth's closure, copied there, when it runs
    /// from the Nix store; else `berth`]
    #[arg(long, value_name = "PATH", global = true, help_heading = GLOBAL_OPTIONS)]
    pub agent: Option<String>,

    /// Read the sudo password once from the terminal, for hosts reached as a user other than
    /// root whose sudo asks for one (it goes to their sudo on stdin, nowhere else)
    #[arg(long, global = true, help_heading = GLOBAL_OPTIONS)]
    pub ask_sudo_password: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy NixOS hosts: build, copy, activate, check health, roll back by itself on failure
    Deploy(command::deploy::Args),
    /// Show what a deploy would change: closure diff and units, per node
    Plan(command::plan::Args),
    /// Put a host back on an earlier generation
    Rollback(command::rollback::Args),
    /// Past deployments of a node, newest first
    History(command::history::Args),
    /// What each node's host runs and how its last deploy went
    Status(command::status::Args),
    /// A service's or a host's systemd journal: the last lines, since a time, or followed
    Logs(command::logs::Args),
    /// Run one command on many hosts at once, each line prefixed with its node
    Exec(command::exec::Args),
    /// Read-only HTTP checks of a deployed app: status codes of paths, with a summary
    Smoke(command::smoke::Args),
    /// Wait for the GitHub checks of one commit to finish; exit 0 when they passed
    CiGate(command::ci_gate::Args),
    /// On a host: deploy its node from a flake by itself (pull mode), with rollback
    Converge(command::converge::Args),
    /// Apps whose code lives in git: deploy an exact revision safely, roll back, status, history
    #[command(subcommand)]
    App(command::app::AppCommand),
    /// Hold a service or a whole host against deploys, with an owner and a reason
    #[command(subcommand)]
    Lock(command::lock::LockCommand),
    /// Snapshots of a service's data: create, list, restore
    #[command(subcommand)]
    Snapshot(command::snapshot::SnapshotCommand),
    /// Keys to sign systems with, which hosts can require (`berth.agent.trustedPublicKeys`)
    #[command(subcommand)]
    Keys(command::keys::KeysCommand),
    /// Throwaway target hosts on this machine, to try berth and to test it
    #[command(subcommand)]
    Lab(command::lab::LabCommand),
    /// Print a shell completion script
    Completions(command::completions::Args),
    /// Print berth's man page (roff)
    Man(command::man::Args),
    /// The host side of deploys, run by berth over SSH
    #[command(hide = true)]
    Agent(Box<command::agent::Args>),
}

/// The [`Context`] the global flags and environment make. `uses_ssh`: whether the command reaches hosts with the deployer's
/// SSH settings (the lab writes its own ssh_config, so
/// `BERTH_SSH_CONFIG` may name one that `lab up` is about to make).
fn context(global: &GlobalArgs, uses_ssh: bool) -> Result<Context, UsageError> {
    if let Some(config) = global.ssh_config.as_ref().filter(|_| uses_ssh) {
        if !config.is_file() {
            return Err(UsageError::new(format!(
                "the ssh_config {} does not exist",
                config.display()
            ))
            .hint(format!("check --ssh-config or {}", env::BERTH_SSH_CONFIG)));
        }
        // Nix splits NIX_SSHOPTS on whitespace.
        if config.to_string_lossy().contains(char::is_whitespace) {
            return Err(UsageError::new(format!(
                "the ssh_config path {} contains whitespace, which nix cannot pass to ssh",
                config.display()
            ))
            .hint("move or link it to a path without spaces"));
        }
    }
    Ok(Context {
        printer: Printer::new(global.json, global.color.enabled()),
        ssh: SshSettings {
            config_file: global.ssh_config.clone(),
            accept_new_host_keys: global.accept_new_host_keys,
            ..SshSettings::default()
        },
        agent: crate::agent::Program::resolve(global.agent.clone()),
        ask_sudo_password: global.ask_sudo_password,
    })
}

/// `--color` as given on the command line, read before clap parses so that
/// clap's own messages honour it too.
fn color_from_args(args: &[OsString]) -> ColorChoice {
    let mut choice = ColorChoice::Auto;
    let mut iter = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = iter.next() {
        let value = match arg.strip_prefix("--color") {
            Some("") => iter.next().map(|v| v.into_owned()),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        };
        if let Some(value) = value {
            choice = clap::ValueEnum::from_str(&value, false).unwrap_or(choice);
        }
    }
    choice
}

fn init_tracing(verbose: u8, color: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var(env::RUST_LOG)
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| {
            EnvFilter::new(match verbose {
                0 => "warn",
                1 => "berth=info",
                2 => "berth=debug",
                _ => "trace",
            })
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Parses the command line, runs the command, and maps the outcome to an
/// exit code.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let color = color_from_args(&args);
    let clap_color = match color {
        ColorChoice::Always => clap::ColorChoice::Always,
        ColorChoice::Never => clap::ColorChoice::Never,
        ColorChoice::Auto if !color.enabled() => clap::ColorChoice::Never,
        ColorChoice::Auto => clap::ColorChoice::Auto,
    };
    let matches = match Cli::command().color(clap_color).try_get_matches_from(&args) {
        Ok(matches) => matches,
        // Help and version exit 0, usage errors 2.
        Err(err) => err.exit(),
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    init_tracing(cli.global.verbose, cli.global.color.enabled());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return report(
                &anyhow::Error::new(err).context("could not start the async runtime"),
                color,
            )
        }
    };
    let result = runtime.block_on(async {
        let uses_ssh = match &cli.command {
            Command::Lab(_)
            | Command::Smoke(_)
            | Command::CiGate(_)
            | Command::Converge(_)
            | Command::Keys(_)
            | Command::Completions(_)
            | Command::Man(_)
            | Command::Agent(_) => false,
            Command::Deploy(args) => !args.dry_run,
            _ => true,
        };
        let ctx = context(&cli.global, uses_ssh)?;
        run(ctx, cli.command).await
    });
    match result {
        Ok(exit) => exit.into(),
        Err(err) => report(&err, color),
    }
}

fn report(err: &anyhow::Error, color: ColorChoice) -> ExitCode {
    // A reader that went away (`berth man | head`) is not an error.
    let broken_pipe = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        return Exit::SUCCESS.into();
    }
    let (text, exit) = diagnostics::render(err, color.enabled(), command::diagnose);
    eprint!("{text}");
    exit.into()
}

async fn run(ctx: Context, command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Deploy(args) => command::deploy::run(&ctx, args).await,
        Command::Plan(args) => command::plan::run(&ctx, args).await,
        Command::Rollback(args) => command::rollback::run(&ctx, args).await,
        Command::History(args) => command::history::run(&ctx, args).await,
        Command::Status(args) => command::status::run(&ctx, args).await,
        Command::Logs(args) => command::logs::run(&ctx, args).await,
        Command::Exec(args) => command::exec::run(&ctx, args).await,
        Command::Smoke(args) => command::smoke::run(&ctx, args).await,
        Command::CiGate(args) => command::ci_gate::run(&ctx, args).await,
        Command::Converge(args) => command::converge::run(&ctx, args).await,
        Command::App(cmd) => command::app::run(&ctx, cmd).await,
        Command::Lock(cmd) => command::lock::run(&ctx, cmd).await,
        Command::Snapshot(cmd) => command::snapshot::run(&ctx, cmd).await,
        Command::Keys(cmd) => command::keys::run(&ctx, cmd).await,
        Command::Lab(cmd) => command::lab::run(&ctx, cmd).await,
        Command::Completions(args) => command::completions::run(args, Cli::command()),
        Command::Man(args) => command::man::run(args, Cli::command()),
        Command::Agent(args) => command::agent::run(&ctx, *args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn color_is_read_before_parsing() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            color_from_args(&args(&["berth", "--color", "never"])),
            ColorChoice::Never
        );
        assert_eq!(
            color_from_args(&args(&["berth", "--color=always", "lab"])),
            ColorChoice::Always
        );
        assert_eq!(color_from_args(&args(&["berth", "lab"])), ColorChoice::Auto);
        assert_eq!(
            color_from_args(&args(&["berth", "--color", "bogus"])),
            ColorChoice::Auto
        );
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// docs/cli.md names every command and every environment variable.
    #[test]
    fn cli_reference_covers_every_command() {
        let doc = include_str!("../docs/cli.md");
        fn walk(cmd: &clap::Command, path: &str, found: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let path = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &path, found);
                } else {
                    found.push(path);
                }
            }
        }
        let mut commands = Vec::new();
        walk(&Cli::command(), "berth", &mut commands);
        for command in commands {
            assert!(
                doc.contains(&format!("`{command}")),
                "docs/cli.md lacks `{command}`"
            );
        }
        for var in [
            env::BERTH_SSH_CONFIG,
            env::BERTH_LAB_DIR,
            env::NO_COLOR,
            env::RUST_LOG,
            env::NIX_SSHOPTS,
            env::GITHUB_TOKEN,
            env::GITHUB_API_URL,
            env::GITHUB_SHA,
            env::BERTH_SIGN_KEY,
            env::BERTH_STAGE,
            env::CI,
        ] {
            assert!(doc.contains(&format!("`{var}`")), "docs/cli.md lacks {var}");
        }
    }
}
