//! The on-host state store: the SQLite database `/var/lib/berth/state.db`
//! in which berth's agent records each deployment of the host (system
//! deploys, later app deploys) and its events.
//!
//! The database, not a process, is the source of truth: a deployment is
//! recorded before anything changes, so after a crash, a reboot or a killed
//! agent the next agent (or the boot check) finds what was in flight and the
//! generation to roll back to.

pub mod id;
mod locks;
mod schema;
mod store;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

pub use id::{new_id, now, utc_time};
pub use locks::{
    host_lock_file, publish_host_lock, publish_system_activity, read_host_lock,
    read_system_activity, scope_name, service_scope, system_activity_file, Acquired, Blocked,
    LockError, LockHolder, Released, SystemActivity, HOST_SCOPE,
};
pub use store::Store;

/// Where the agent keeps its state on a host.
pub const DEFAULT_DIR: &str = "/var/lib/berth";

/// The database file in a state directory.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("state.db")
}

/// What a deployment changes: the host's system, or one app on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    System,
    App,
}

impl Kind {
    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::App => "app",
        }
    }
}

/// Where a deployment is in its life. Activating and Pending are the
/// unfinished ones; at most one deployment per kind and target is unfinished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Recorded; the profile is being set or switch-to-configuration runs.
    Activating,
    /// Activated, waiting for the deployer's confirmation (magic rollback
    /// armed).
    Pending,
    /// Succeeded.
    Confirmed,
    /// Failed, and the host is back on the recorded previous generation.
    RolledBack,
    /// Failed with nothing to roll back to, or before activation changed
    /// anything.
    Failed,
    /// Failed, and the rollback failed too: the host needs attention.
    RollbackFailed,
}

impl Status {
    /// Whether the deployment is over: nothing moves it any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Activating | Status::Pending)
    }

    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Activating => "activating",
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::RolledBack => "rolled_back",
            Status::Failed => "failed",
            Status::RollbackFailed => "rollback_failed",
        }
    }
}

/// A name that is not one of a [`Kind`]'s or a [`Status`]'s.
#[derive(Debug, thiserror::Error)]
#[error("`{value}` is not a deployment {what}")]
pub struct ParseError {
    what: &'static str,
    value: String,
}

impl FromStr for Kind {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Kind::System, Kind::App]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ParseError {
                what: "kind",
                value: s.to_owned(),
            })
    }
}

impl FromStr for Status {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Status::Activating,
            Status::Pending,
            Status::Confirmed,
            Status::RolledBack,
            Status::Failed,
            Status::RollbackFailed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| ParseError {
            what: "status",
            value: s.to_owned(),
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Both are stored as their names, so the database reads well in `sqlite3`
// and the schema's CHECK constraints can list them.
impl ToSql for Kind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for Kind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(FromSqlError::other)
    }
}

impl ToSql for Status {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for Status {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str()?.parse().map_err(FromSqlError::other)
    }
}

/// What the agent records when a deployment starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeployment {
    /// From [`new_id`].
    pub id: String,
    pub kind: Kind,
    /// The node name (system) or the service name (app).
    pub target: String,
    /// What ran before (a store path or a revision): the rollback point.
    pub from_path: Option<String>,
    pub from_generation: Option<u64>,
    pub to_path: String,
    /// `switch`, `boot`, `test`, `dry-activate`, or `app`.
    pub goal: String,
    /// Who deployed: `user@machine`, or the CI actor.
    pub actor: String,
    pub reason: Option<String>,
    pub ci_run_url: Option<String>,
    /// The flake revision (git commit) a system was built from, when it
    /// had one.
    pub revision: Option<String>,
}

/// A recorded deployment. Deserialize too: the deployer reads the agent's
/// JSON back into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub kind: Kind,
    pub target: String,
    pub from_path: Option<String>,
    pub from_generation: Option<u64>,
    pub to_path: String,
    /// The generation the new profile became, once it is set.
    pub to_generation: Option<u64>,
    pub goal: String,
    pub actor: String,
    pub reason: Option<String>,
    pub ci_run_url: Option<String>,
    /// Unix seconds.
    pub started: i64,
    /// Unix seconds; set when the status becomes terminal, and for a
    /// rollback when it is done.
    pub ended: Option<i64>,
    pub status: Status,
    /// The phase a failed deployment failed in.
    pub failure_phase: Option<String>,
    /// The agent process driving the deployment.
    pub agent_pid: Option<u32>,
    /// Unix seconds: when a pending deployment rolls back unless confirmed.
    pub confirm_deadline: Option<i64>,
    /// The flake revision (git commit) a system was built from; absent in
    /// what an older agent wrote.
    #[serde(default)]
    pub revision: Option<String>,
}

impl Deployment {
    /// Whether it is over: terminal, and not still rolling back.
    pub fn is_settled(&self) -> bool {
        self.status.is_terminal() && self.ended.is_some()
    }

    /// Claimed for rollback, the previous generation not back yet.
    pub fn is_rolling_back(&self) -> bool {
        self.status == Status::RolledBack && self.ended.is_none()
    }
}

/// One line of a deployment's story.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub deployment_id: String,
    /// Unix seconds.
    pub at: i64,
    pub phase: String,
    pub message: String,
}

/// What can go wrong reading or writing the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not create the state directory {}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not open the state database {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("could not {what}")]
    Sqlite {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    /// Another deployment of the same kind and target is unfinished.
    #[error(
        "deployment {} of {} by {}, started {} ago, is still {}",
        .holder.id, .holder.target, .holder.actor, age(now() - .holder.started), .holder.status
    )]
    Busy { holder: Box<Deployment> },
    #[error("no deployment {0} is recorded on this host")]
    NotFound(String),
    #[error(
        "the state database {} has schema version {found}, but this berth knows only versions up to {known}: a newer berth wrote it",
        .path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

/// A short duration for people: `12s`, `4m 2s`, `3h 10m`, `2d 5h`.
fn age(secs: i64) -> String {
    // A clock stepped back since the deployment started reads as "just now".
    let s = secs.max(0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h {}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d {}h", s / 86400, s % 86400 / 3600)
    }
}

/// Turns an SQLite error into one that says what was being done.
fn sql_err(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Sqlite { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 6] = [
        Status::Activating,
        Status::Pending,
        Status::Confirmed,
        Status::RolledBack,
        Status::Failed,
        Status::RollbackFailed,
    ];

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(
            "rolledback".parse::<Status>().unwrap_err().to_string(),
            "`rolledback` is not a deployment status"
        );
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in [Kind::System, Kind::App] {
            assert_eq!(kind.as_str().parse::<Kind>().unwrap(), kind);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert!("System".parse::<Kind>().is_err());
    }

    #[test]
    fn only_activating_and_pending_are_unfinished() {
        let open: Vec<_> = ALL.into_iter().filter(|s| !s.is_terminal()).collect();
        assert_eq!(open, [Status::Activating, Status::Pending]);
    }

    #[test]
    fn ages_read_short() {
        assert_eq!(age(-5), "0s");
        assert_eq!(age(12), "12s");
        assert_eq!(age(242), "4m 2s");
        assert_eq!(age(3 * 3600 + 600), "3h 10m");
        assert_eq!(age(2 * 86400 + 5 * 3600 + 7), "2d 5h");
    }

    #[test]
    fn db_lives_in_the_state_dir() {
        assert_eq!(
            db_path(Path::new(DEFAULT_DIR)),
            Path::new("/var/lib/berth/state.db")
        );
    }
}
