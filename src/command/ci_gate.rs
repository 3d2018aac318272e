//! `berth ci-gate --repo OWNER/NAME --sha SHA`: wait for the GitHub checks
//! of exactly that commit, and exit with how they went. Also the gate that
//! `--ci-gate` runs before `berth deploy` and `berth app deploy`.

use std::time::Duration;

use crate::context::Context;
use crate::error::{Exit, UsageError};
use crate::github::{self, GateOptions, Outcome, Repo, Sha};

/// How long the gate waits when no `--timeout` is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// The pause between two polls when no `--interval` is given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GitHub repository, OWNER/NAME
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: String,

    /// The commit whose checks to wait for (7 to 40 hex digits)
    #[arg(long, value_name = "SHA")]
    pub sha: String,

    /// A check run name or status context that must appear and pass, repeatable; any other
    /// counts only if it ran
    #[arg(long = "require", value_name = "NAME")]
    pub require: Vec<String>,

    /// Seconds to wait for the checks to finish, then exit 4
    #[arg(long, value_name = "SECS", default_value = "1800", value_parser = github::parse_secs)]
    pub timeout: Duration,

    /// Seconds between two polls (fractions allowed)
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = github::parse_secs)]
    pub interval: Duration,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let repo = Repo::parse(&args.repo)?;
    let sha = Sha::parse(&args.sha)?;
    let opts = GateOptions {
        require: args.require,
        timeout: args.timeout,
        interval: args.interval,
    };
    let outcome = github::gate(&repo, &sha, &opts, ctx.printer).await?;
    Ok(exit(outcome.outcome))
}

fn exit(outcome: Outcome) -> Exit {
    match outcome {
        Outcome::Passed => Exit::SUCCESS,
        Outcome::Failed => Exit::FAILURE,
        Outcome::TimedOut => Exit::TIMED_OUT,
    }
}

/// `--ci-gate OWNER/NAME` on a deploy: waits for the checks of `sha` with
/// the default timeout. `None`: go ahead; `Some(exit)`: the deploy must
/// not start, and the reason was printed.
pub async fn before_deploy(ctx: &Context, repo: &str, sha: &Sha) -> anyhow::Result<Option<Exit>> {
    let repo = Repo::parse(repo)?;
    let opts = GateOptions {
        require: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
        interval: DEFAULT_INTERVAL,
    };
    let outcome = github::gate(&repo, sha, &opts, ctx.printer).await?;
    if outcome.outcome == Outcome::Passed {
        return Ok(None);
    }
    ctx.printer.line(format!(
        "{} nothing was deployed: {}",
        crate::output::paint("error:", crate::output::Style::Error, ctx.printer.color()),
        outcome.reason()
    ));
    Ok(Some(exit(outcome.outcome)))
}

/// The commit a system deploy gates on: `--ci-sha`, else the flake's own
/// commit (what is deployed), else `github_sha` (`GITHUB_SHA`, for a flake
/// whose tree the job changed).
pub fn system_sha(
    ci_sha: Option<&str>,
    flake_commit: Option<&str>,
    github_sha: Option<String>,
) -> Result<Sha, UsageError> {
    let github_sha = github_sha.filter(|v| !v.is_empty());
    match ci_sha.or(flake_commit).or(github_sha.as_deref()) {
        Some(sha) => Sha::parse(sha),
        None => Err(UsageError::new(
            "--ci-gate needs the commit whose checks to wait for, and the flake has none (a dirty tree, or not git)",
        )
        .hint(format!(
            "commit the changes, give `--ci-sha SHA`, or run in GitHub Actions, which sets {}",
            crate::env::GITHUB_SHA
        ))),
    }
}

/// The commit an app deploy gates on: `--rev`, which must be a full SHA
/// (a branch or tag could move between the gate and the deploy).
pub fn app_sha(rev: Option<&str>) -> Result<Sha, UsageError> {
    let hint = "give the exact commit CI tested: `--rev` with its full 40-digit SHA";
    let Some(rev) = rev else {
        return Err(UsageError::new("--ci-gate needs --rev SHA, not --ref or --tag").hint(hint));
    };
    match Sha::parse(rev) {
        Ok(sha) if sha.is_full() => Ok(sha),
        _ => Err(UsageError::new(format!(
            "--ci-gate needs a full commit SHA in --rev, not `{rev}`"
        ))
        .hint(hint)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn defaults_and_fractional_seconds() {
        let cli = Cli::try_parse_from(["ci-gate", "--repo", "o/n", "--sha", "abcdef1"]).unwrap();
        assert_eq!(cli.args.timeout, DEFAULT_TIMEOUT);
        assert_eq!(cli.args.interval, DEFAULT_INTERVAL);
        assert!(cli.args.require.is_empty());
        let cli = Cli::try_parse_from([
            "ci-gate",
            "--repo",
            "o/n",
            "--sha",
            "abcdef1",
            "--require",
            "build",
            "--require",
            "test",
            "--interval",
            "0.2",
            "--timeout",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.args.require, ["build", "test"]);
        assert_eq!(cli.args.interval, Duration::from_millis(200));
        assert!(
            Cli::try_parse_from(["ci-gate", "--repo", "o/n", "--sha", "a", "--interval", "0"])
                .is_err()
        );
    }

    #[test]
    fn app_deploys_gate_on_a_full_rev() {
        let full = "3f2a9c1e0b7d4c65a8e1f0d2b3c4a5e6f7081920";
        assert_eq!(app_sha(Some(full)).unwrap().to_string(), full);
        let err = app_sha(Some("3f2a9c1")).unwrap_err();
        assert_eq!(
            err.message,
            "--ci-gate needs a full commit SHA in --rev, not `3f2a9c1`"
        );
        assert!(app_sha(None).unwrap_err().message.contains("--rev"));
    }

    #[test]
    fn system_deploys_gate_on_ci_sha() {
        let flake = "1111111111111111111111111111111111111111";
        let env = || Some("2222222222222222222222222222222222222222".to_owned());
        assert_eq!(
            system_sha(Some("ABCDEF1"), Some(flake), env())
                .unwrap()
                .to_string(),
            "abcdef1"
        );
        assert!(system_sha(Some("main"), None, None).is_err());
        // The flake's own commit before the job's.
        assert_eq!(
            system_sha(None, Some(flake), env()).unwrap().to_string(),
            flake
        );
        assert_eq!(
            system_sha(None, None, env()).unwrap().to_string(),
            env().unwrap()
        );
        let err = system_sha(None, None, Some(String::new())).unwrap_err();
        assert!(err.to_string().contains("the flake has none"), "{err}");
    }
}
