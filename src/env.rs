//! Every environment variable berth reads, declared once.

/// An ssh_config file for every SSH use, berth's own and `nix copy`'s
/// (`--ssh-config`). Lets lab aliases such as `h1` work as a target host.
pub const BERTH_SSH_CONFIG: &str = "BERTH_SSH_CONFIG";

/// Where `berth lab` keeps what it made (`--lab-dir`).
pub const BERTH_LAB_DIR: &str = "BERTH_LAB_DIR";

/// Any value turns colour off unless `--color always` is given
/// (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";

/// A `tracing` filter; overrides `-v`.
pub const RUST_LOG: &str = "RUST_LOG";

/// Extra options Nix passes to `ssh`; berth sets it for `nix copy` so the copy
/// rides the host's multiplexed connection.
pub const NIX_SSHOPTS: &str = "NIX_SSHOPTS";

/// The secret key `berth deploy` signs systems with (`--sign-key`), a
/// file as `berth keys generate` writes it.
pub const BERTH_SIGN_KEY: &str = "BERTH_SIGN_KEY";

/// The stage `berth deploy` and `berth app deploy` insist on (`--stage`):
/// a node or service that declares another stage, or none, is refused. A CI
/// job sets it once for every deploy it runs.
pub const BERTH_STAGE: &str = "BERTH_STAGE";

/// The agent's state directory on a host (`--state-dir`), default
/// `/var/lib/berth`.
pub const BERTH_STATE_DIR: &str = "BERTH_STATE_DIR";

/// Set by sudo (and run0) for the command it runs: the user who ran it. The
/// agent run as root through sudo by another user refuses all but the
/// system verbs.
pub const SUDO_USER: &str = "SUDO_USER";

/// doas's counterpart of `SUDO_USER`.
pub const DOAS_USER: &str = "DOAS_USER";

/// Set by CI services (GitHub Actions sets `CI=true`): any value but empty,
/// `false` or `0` means berth runs in CI, where `berth app deploy
/// --skip-snapshot` is refused unless `--allow-skip-snapshot-in-ci` or the
/// service's `allowSkipSnapshot` allows it.
pub const CI: &str = "CI";

/// Whether a value of [`CI`] means CI.
pub fn is_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim(), "" | "0") && !v.trim().eq_ignore_ascii_case("false"))
}

/// Who deploys, recorded on the host: `$USER@<hostname>`.
pub const USER: &str = "USER";

/// GitHub Actions: with `GITHUB_REPOSITORY` and `GITHUB_RUN_ID`, the URL of
/// the CI run recorded with a deployment.
pub const GITHUB_SERVER_URL: &str = "GITHUB_SERVER_URL";
pub const GITHUB_REPOSITORY: &str = "GITHUB_REPOSITORY";
pub const GITHUB_RUN_ID: &str = "GITHUB_RUN_ID";

/// A token for GitHub's API (`berth ci-gate`, `--ci-gate`): optional for a
/// public repository, sent as `Authorization: Bearer`.
pub const GITHUB_TOKEN: &str = "GITHUB_TOKEN";

/// GitHub's API, default `https://api.github.com` (GitHub Enterprise sets
/// it in Actions).
pub const GITHUB_API_URL: &str = "GITHUB_API_URL";

/// GitHub Actions: the commit the workflow runs for; `berth deploy
/// --ci-gate` gates on it when neither `--ci-sha` nor the flake names one.
pub const GITHUB_SHA: &str = "GITHUB_SHA";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ci_as_ci_services_set_it() {
        for yes in ["true", "1", "yes", "TRUE"] {
            assert!(is_ci(Some(yes)), "{yes}");
        }
        for no in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("False"),
            Some(" "),
        ] {
            assert!(!is_ci(no), "{no:?}");
        }
    }
}
