//! A host's systemd journal, as `berth logs` reads it: the check that the
//! host runs systemd at all, the `journalctl` command line, and what its
//! failures mean.

use crate::process::{Cmd, StdioMode};
use crate::process::{CommandError, Output};

/// The directory systemd makes when it boots a machine (what
/// `sd_booted(3)` looks at): without it there is no journal to read.
const BOOTED_MARKER: &str = "/run/systemd/system";

/// What journalctl says, on stderr, to a user who may read none of the
/// journal files it found.
const NOT_PERMITTED: &str = "insufficient permissions";

/// What to read from a host's journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only these units; none: the whole journal.
    pub units: Vec<String>,
    /// The last this many entries.
    pub lines: Option<usize>,
    /// Only entries since then, in a form journalctl reads
    /// (`2025-01-31 12:00:00`, `-1h`, `today`).
    pub since: Option<String>,
    /// Keep showing entries as they come, until stopped.
    pub follow: bool,
    /// One JSON object per entry (`--output=json`), else journalctl's
    /// usual lines.
    pub json: bool,
}

/// The command that succeeds only on a host booted with systemd.
pub fn booted() -> Cmd {
    Cmd::new("test").args(["-d", BOOTED_MARKER])
}

/// `journalctl` for `query`. Every value rides in its option's own word
/// (`--unit=VALUE`), so none can read as an option of its own. A followed
/// query streams: its lines are shown as they come and not kept.
pub fn journalctl(query: &Query) -> Cmd {
    let mut cmd = Cmd::new("journalctl").arg("--no-pager");
    for unit in &query.units {
        cmd = cmd.arg(format!("--unit={unit}"));
    }
    if let Some(lines) = query.lines {
        cmd = cmd.arg(format!("--lines={lines}"));
    }
    if let Some(since) = &query.since {
        cmd = cmd.arg(format!("--since={since}"));
    }
    if query.json {
        // Without `-- No entries --` on stdout, which is not JSON.
        cmd = cmd.args(["--output=json", "--quiet"]);
    }
    if query.follow {
        cmd = cmd.arg("--follow").stdio(StdioMode::Stream);
    }
    cmd
}

/// Why a host's journal could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{host} has no systemd journal: it was not booted with systemd ({BOOTED_MARKER} is missing)")]
    NoSystemd { host: String },
    #[error("{host} has no journalctl")]
    NoJournalctl { host: String },
    #[error("{user} on {host} may not read the system journal")]
    NotPermitted { host: String, user: String },
    #[error("could not read the journal of {host}")]
    Failed {
        host: String,
        #[source]
        source: CommandError,
    },
}

impl crate::error::Diagnose for JournalError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: self.is_usage(),
        }
    }
}

impl JournalError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            JournalError::NoSystemd { .. } | JournalError::NoJournalctl { .. } => Some(
                "`berth logs` reads the journal of hosts that run systemd (NixOS does); on this \
                 host, read its log files with `berth exec`, e.g. `berth exec FLAKE#NODE -- tail \
                 -n 50 /var/log/FILE`"
                    .into(),
            ),
            JournalError::NotPermitted { user, .. } => Some(format!(
                "add {user} to the `systemd-journal` group on the host \
                 (`users.users.{user}.extraGroups = [ \"systemd-journal\" ];`), or read as root \
                 with `--user root`"
            )),
            JournalError::Failed { .. } => None,
        }
    }

    /// Whether the host or the user cannot read a journal at all: a
    /// configuration to change, not a failure of the moment.
    pub fn is_usage(&self) -> bool {
        !matches!(self, JournalError::Failed { .. })
    }
}

/// How the [`booted`] check went: `Ok` on a host that runs systemd.
pub fn check_booted(host: &str, out: &Output) -> Result<(), JournalError> {
    if out.status.success() {
        return Ok(());
    }
    Err(JournalError::NoSystemd {
        host: host.to_owned(),
    })
}

/// How a [`journalctl`] run ended, read as `user` on `host`.
pub fn check(host: &str, user: &str, out: Output) -> Result<Output, JournalError> {
    if out.status.success() {
        return Ok(out);
    }
    if out.status.code() == Some(127) {
        return Err(JournalError::NoJournalctl {
            host: host.to_owned(),
        });
    }
    if String::from_utf8_lossy(&out.stderr).contains(NOT_PERMITTED) {
        return Err(JournalError::NotPermitted {
            host: host.to_owned(),
            user: user.to_owned(),
        });
    }
    out.check().map_err(|source| JournalError::Failed {
        host: host.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ExitStatus;

    fn line(query: &Query) -> String {
        journalctl(query).remote_line().into_string().unwrap()
    }

    #[test]
    fn a_unit_and_its_last_lines() {
        let query = Query {
            units: vec!["notes.service".into()],
            lines: Some(20),
            ..Query::default()
        };
        assert_eq!(
            line(&query),
            "journalctl --no-pager --unit=notes.service --lines=20"
        );
        assert_eq!(journalctl(&query).get_stdio(), StdioMode::Capture);
    }

    #[test]
    fn followed_json_since_a_time_streams() {
        let query = Query {
            units: vec!["a.service".into(), "b.timer".into()],
            since: Some("2025-01-31 12:00:00".into()),
            follow: true,
            json: true,
            ..Query::default()
        };
        assert_eq!(
            line(&query),
            "journalctl --no-pager --unit=a.service --unit=b.timer \
             '--since=2025-01-31 12:00:00' --output=json --quiet --follow"
        );
        assert_eq!(journalctl(&query).get_stdio(), StdioMode::Stream);
    }

    #[test]
    fn hostile_values_stay_in_their_option() {
        let query = Query {
            units: vec!["x; rm -rf /".into()],
            since: Some("$(id)".into()),
            ..Query::default()
        };
        assert_eq!(
            journalctl(&query).get_args()[1..],
            ["--unit=x; rm -rf /", "--since=$(id)"]
        );
        assert_eq!(
            line(&query),
            "journalctl --no-pager '--unit=x; rm -rf /' '--since=$(id)'"
        );
    }

    fn output(status: ExitStatus, stderr: &str) -> Output {
        Output {
            command: "journalctl".into(),
            host: Some("h1".into()),
            status,
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn failures_are_told_apart() {
        let code = ExitStatus::Code;
        assert!(check("h1", "notes", output(code(0), "")).is_ok());
        let denied = check(
            "h1",
            "notes",
            output(
                code(1),
                "No journal files were opened due to insufficient permissions.\n",
            ),
        )
        .unwrap_err();
        assert!(matches!(denied, JournalError::NotPermitted { .. }));
        assert_eq!(
            denied.to_string(),
            "notes on h1 may not read the system journal"
        );
        assert!(denied.hint().unwrap().contains("systemd-journal"));
        assert!(matches!(
            check("h1", "root", output(code(127), "sh: journalctl: not found")).unwrap_err(),
            JournalError::NoJournalctl { .. }
        ));
        let failed = check(
            "h1",
            "root",
            output(code(1), "Failed to parse timestamp: x"),
        )
        .unwrap_err();
        assert!(!failed.is_usage());
        assert!(
            crate::error::causes(&failed).contains("Failed to parse timestamp"),
            "{failed:?}"
        );
        let none = check_booted("h2", &output(code(1), "")).unwrap_err();
        assert_eq!(
            none.to_string(),
            "h2 has no systemd journal: it was not booted with systemd \
             (/run/systemd/system is missing)"
        );
        assert!(none.is_usage());
    }
}
