//! Locks and blocked revisions, for app deploys.
//!
//! A lock is a row per scope (`service:NAME` or `host`). A deploy's own lock
//! carries its process (pid and start time): when that process is gone the
//! lock is stale and the next taker replaces it, so a killed agent never
//! leaves a service locked. A lock taken with `berth lock acquire` is `held`:
//! it outlives any process until its owner releases it, and its owner may
//! still deploy under it.

use rusqlite::{OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{now, sql_err, StateError, Store};
use crate::process;

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub scope: String,
    pub owner: String,
    pub reason: Option<String>,
    /// Unix seconds.
    pub acquired: i64,
    /// The process holding it for a deploy, if one does.
    pub pid: Option<u32>,
    #[serde(skip, default)]
    pub pid_start: Option<u64>,
    /// Held beyond any process, until its owner releases it.
    pub held: bool,
}

impl LockHolder {
    /// Whether a process holds it right now.
    pub fn process_alive(&self) -> bool {
        self.pid
            .is_some_and(|pid| process::alive_since(pid, self.pid_start))
    }

    /// Whether anyone holds it: an owner's hold, or a live process.
    pub fn is_live(&self) -> bool {
        self.held || self.process_alive()
    }
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} since {}", self.owner, super::utc_time(self.acquired))?;
        if let Some(pid) = self.pid.filter(|_| self.process_alive()) {
            write!(f, " (berth pid {pid})")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        Ok(())
    }
}

/// How a lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Acquired {
    /// It was free (or stale) and is now ours.
    New,
    /// Our owner already held it; nothing changed (or, for a process, the
    /// process now runs under the owner's hold).
    AlreadyHeld,
}

/// How a release went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Released {
    Released,
    /// Nobody held it.
    NotHeld,
}

/// A lock could not be taken or released.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is locked by {holder}", scope_name(&.holder.scope))]
    Held { holder: Box<LockHolder> },
    #[error("{} is locked by {holder}, not by {owner}: only its owner can release it", scope_name(&.holder.scope))]
    NotHolder {
        owner: String,
        holder: Box<LockHolder>,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// `service notes` or `the host`, for messages.
pub fn scope_name(scope: &str) -> String {
    match scope.strip_prefix("service:") {
        Some(service) => format!("service {service}"),
        None => "the host".into(),
    }
}

/// The lock scope of a service.
pub fn service_scope(service: &str) -> String {
    format!("service:{service}")
}

/// The lock scope of a whole host.
pub const HOST_SCOPE: &str = "host";

fn holder(row: &Row<'_>) -> rusqlite::Result<LockHolder> {
    Ok(LockHolder {
        scope: row.get("scope")?,
        owner: row.get("owner")?,
        reason: row.get("reason")?,
        acquired: row.get("acquired")?,
        pid: row.get("pid")?,
        pid_start: row
            .get::<_, Option<i64>>("pid_start")?
            .and_then(|t| u64::try_from(t).ok()),
        held: row.get("held")?,
    })
}

fn get_in(tx: &Transaction<'_>, scope: &str) -> Result<Option<LockHolder>, StateError> {
    tx.query_row("SELECT * FROM locks WHERE scope = ?1", [scope], holder)
        .optional()
        .map_err(sql_err(format!("read the lock of {}", scope_name(scope))))
}

/// The host's lock as a file anyone may read, beside the state database:
/// a service's user deploys its app and must honour the host's lock, but
/// cannot open root's database (SQLite in WAL mode needs write access to
/// its `-shm` to read).
pub fn host_lock_file(state_dir: &Path) -> PathBuf {
    state_dir.join("host-lock.json")
}

/// Writes (or, with `None`, removes) [`host_lock_file`], atomically.
pub fn publish_host_lock(state_dir: &Path, holder: Option<&LockHolder>) -> std::io::Result<()> {
    let path = host_lock_file(state_dir);
    match holder {
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Some(holder) => {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(holder).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, &path)
        }
    }
}

/// The host's lock, from [`host_lock_file`].
pub fn read_host_lock(state_dir: &Path) -> Option<LockHolder> {
    let bytes = std::fs::read(host_lock_file(state_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A system deployment in flight on the host, as the host's agent
/// publishes it for app deploys: they run as a service's user, cannot read
/// root's database, and must not stop, migrate or start a service while
/// the host's system (which may restart that service's unit) is changing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemActivity {
    /// The system deployment's id.
    pub id: String,
    pub node: String,
    pub actor: String,
    /// Unix seconds.
    pub started: i64,
    /// `activating`, `pending` (waiting for confirmation), or
    /// `rolling back`.
    pub status: String,
    /// The agent (or watchdog) working on it now, if one is.
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
    /// Unix seconds: until when it holds the host with no process working
    /// on it (a pending deployment's confirmation deadline).
    pub until: Option<i64>,
}

impl SystemActivity {
    /// Whether it still holds the host: its process runs, or its deadline
    /// has not passed. A file left by a killed agent with nothing pending
    /// does not.
    pub fn is_live(&self) -> bool {
        self.pid
            .is_some_and(|pid| process::alive_since(pid, self.pid_start))
            || self.until.is_some_and(|t| now() <= t)
    }

    /// As a holder of the host's lock, for the messages locks give.
    pub fn holder(&self) -> LockHolder {
        LockHolder {
            scope: HOST_SCOPE.into(),
            owner: self.actor.clone(),
            reason: Some(format!(
                "system deployment {} of {} is {}",
                self.id, self.node, self.status
            )),
            acquired: self.started,
            pid: self.pid,
            pid_start: self.pid_start,
            held: false,
        }
    }
}

/// Where the host's agent publishes [`SystemActivity`], beside
/// [`host_lock_file`].
pub fn system_activity_file(state_dir: &Path) -> PathBuf {
    state_dir.join("system-deployment.json")
}

/// Writes (or, with `None`, removes) [`system_activity_file`], atomically,
/// readable by everyone.
pub fn publish_system_activity(
    state_dir: &Path,
    activity: Option<&SystemActivity>,
) -> std::io::Result<()> {
    let path = system_activity_file(state_dir);
    match activity {
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        Some(activity) => {
            use std::os::unix::fs::PermissionsExt;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(activity).map_err(std::io::Error::other)?,
            )?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
            std::fs::rename(&tmp, &path)
        }
    }
}

/// The system deployment in flight on the host, if one still holds it.
pub fn read_system_activity(state_dir: &Path) -> Option<SystemActivity> {
    let bytes = std::fs::read(system_activity_file(state_dir)).ok()?;
    serde_json::from_slice::<SystemActivity>(&bytes)
        .ok()
        .filter(SystemActivity::is_live)
}

/// A blocked revision: one that failed and was rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub service: String,
    pub revision: String,
    pub deployment_id: Option<String>,
    pub reason: Option<String>,
    pub at: Option<i64>,
}

impl Store {
    fn immediate(&mut self, what: &str) -> Result<Transaction<'_>, StateError> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(what))
    }

    /// Who holds `scope`, if anyone does (a stale lock reads as free).
    pub fn lock_holder(&self, scope: &str) -> Result<Option<LockHolder>, StateError> {
        let found = self
            .conn
            .query_row("SELECT * FROM locks WHERE scope = ?1", [scope], holder)
            .optional()
            .map_err(sql_err(format!("read the lock of {}", scope_name(scope))))?;
        Ok(found.filter(LockHolder::is_live))
    }

    /// `berth lock acquire`: holds `scope` for `owner` until released.
    /// Again by the same owner changes nothing.
    pub fn hold(
        &mut self,
        scope: &str,
        owner: &str,
        reason: Option<&str>,
    ) -> Result<Acquired, LockError> {
        let what = format!("lock {}", scope_name(scope));
        let tx = self.immediate(&what)?;
        let acquired = match get_in(&tx, scope)?.filter(LockHolder::is_live) {
            Some(h) if h.owner == owner && h.held => Acquired::AlreadyHeld,
            Some(h) => {
                return Err(LockError::Held {
                    holder: Box::new(h),
                })
            }
            None => {
                tx.execute(
                    "INSERT OR REPLACE INTO locks (scope, owner, reason, acquired, held)
                     VALUES (?1, ?2, ?3, ?4, 1)",
                    (scope, owner, reason, now()),
                )
                .map_err(sql_err(&what))?;
                Acquired::New
            }
        };
        tx.commit().map_err(sql_err(what))?;
        Ok(acquired)
    }

    /// Takes `scope` for this process, on behalf of `owner`: free or stale,
    /// it becomes ours; held by `owner` (and no process), this process runs
    /// under the hold.
    pub fn lock_for_process(
        &mut self,
        scope: &str,
        owner: &str,
        reason: Option<&str>,
    ) -> Result<Acquired, LockError> {
        let what = format!("lock {}", scope_name(scope));
        let pid = std::process::id();
        let start = process::start_time(pid).and_then(|t| i64::try_from(t).ok());
        let tx = self.immediate(&what)?;
        let acquired = match get_in(&tx, scope)?.filter(LockHolder::is_live) {
            Some(h) if h.process_alive() && h.pid != Some(pid) => {
                return Err(LockError::Held {
                    holder: Box::new(h),
                })
            }
            Some(h) if h.held && h.owner != owner => {
                return Err(LockError::Held {
                    holder: Box::new(h),
                })
            }
            Some(_) => {
                tx.execute(
                    "UPDATE locks SET pid = ?2, pid_start = ?3 WHERE scope = ?1",
                    (scope, pid, start),
                )
                .map_err(sql_err(&what))?;
                Acquired::AlreadyHeld
            }
            None => {
                tx.execute(
                    "INSERT OR REPLACE INTO locks (scope, owner, reason, acquired, pid, pid_start, held)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                    (scope, owner, reason, now(), pid, start),
                )
                .map_err(sql_err(&what))?;
                Acquired::New
            }
        };
        tx.commit().map_err(sql_err(what))?;
        Ok(acquired)
    }

    /// Lets go of this process's lock of `scope`: an owner's hold stays.
    pub fn unlock_process(&mut self, scope: &str) -> Result<(), StateError> {
        let what = format!("unlock {}", scope_name(scope));
        let tx = self.immediate(&what)?;
        tx.execute(
            "DELETE FROM locks WHERE scope = ?1 AND pid = ?2 AND held = 0",
            (scope, std::process::id()),
        )
        .map_err(sql_err(&what))?;
        tx.execute(
            "UPDATE locks SET pid = NULL, pid_start = NULL WHERE scope = ?1 AND pid = ?2",
            (scope, std::process::id()),
        )
        .map_err(sql_err(&what))?;
        tx.commit().map_err(sql_err(what))
    }

    /// `berth lock release`: only the owner may; a deploy running under the
    /// hold keeps its own lock until it ends.
    pub fn release(&mut self, scope: &str, owner: &str) -> Result<Released, LockError> {
        let what = format!("unlock {}", scope_name(scope));
        let tx = self.immediate(&what)?;
        let released = match get_in(&tx, scope)?.filter(LockHolder::is_live) {
            None => Released::NotHeld,
            Some(h) if h.owner != owner || !h.held => {
                return Err(LockError::NotHolder {
                    owner: owner.to_owned(),
                    holder: Box::new(h),
                })
            }
            Some(h) => {
                if h.process_alive() {
                    tx.execute("UPDATE locks SET held = 0 WHERE scope = ?1", [scope])
                } else {
                    tx.execute("DELETE FROM locks WHERE scope = ?1", [scope])
                }
                .map_err(sql_err(&what))?;
                Released::Released
            }
        };
        tx.commit().map_err(sql_err(what))?;
        Ok(released)
    }

    /// Refuses `revision` of `service` from now on (unless forced).
    pub fn block(
        &self,
        service: &str,
        revision: &str,
        deployment_id: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO blocked_revisions (service, revision, deployment_id, reason, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                (service, revision, deployment_id, reason, now()),
            )
            .map(drop)
            .map_err(sql_err(format!("block revision {revision} of {service}")))
    }

    pub fn unblock(&self, service: &str, revision: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "DELETE FROM blocked_revisions WHERE service = ?1 AND revision = ?2",
                (service, revision),
            )
            .map(drop)
            .map_err(sql_err(format!("unblock revision {revision} of {service}")))
    }

    pub fn blocked(&self, service: &str, revision: &str) -> Result<Option<Blocked>, StateError> {
        self.conn
            .query_row(
                "SELECT * FROM blocked_revisions WHERE service = ?1 AND revision = ?2",
                (service, revision),
                blocked_row,
            )
            .optional()
            .map_err(sql_err(format!("read blocked revisions of {service}")))
    }

    /// Every blocked revision of `service`, oldest first.
    pub fn blocked_list(&self, service: &str) -> Result<Vec<Blocked>, StateError> {
        let what = || format!("read blocked revisions of {service}");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT * FROM blocked_revisions WHERE service = ?1
                 ORDER BY at, revision",
            )
            .map_err(sql_err(what()))?;
        let rows = stmt
            .query_map([service], blocked_row)
            .map_err(sql_err(what()))?;
        rows.collect::<Result<_, _>>().map_err(sql_err(what()))
    }
}

fn blocked_row(row: &Row<'_>) -> rusqlite::Result<Blocked> {
    Ok(Blocked {
        service: row.get("service")?,
        revision: row.get("revision")?,
        deployment_id: row.get("deployment_id")?,
        reason: row.get("reason")?,
        at: row.get("at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::open_in_memory().unwrap()
    }

    #[test]
    fn a_hold_is_exclusive_idempotent_and_released_only_by_its_owner() {
        let mut s = store();
        let scope = service_scope("notes");
        assert_eq!(
            s.hold(&scope, "alice", Some("db work")).unwrap(),
            Acquired::New
        );
        assert_eq!(
            s.hold(&scope, "alice", None).unwrap(),
            Acquired::AlreadyHeld
        );
        let err = s.hold(&scope, "bob", None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("service notes is locked by alice since "),
            "{err}"
        );
        assert!(err.to_string().ends_with(": db work"), "{err}");
        assert!(matches!(
            s.release(&scope, "bob"),
            Err(LockError::NotHolder { .. })
        ));
        assert_eq!(s.release(&scope, "alice").unwrap(), Released::Released);
        assert_eq!(s.release(&scope, "alice").unwrap(), Released::NotHeld);
        assert!(s.lock_holder(&scope).unwrap().is_none());
    }

    #[test]
    fn a_process_lock_excludes_others_and_goes_with_its_process() {
        let mut s = store();
        let scope = service_scope("notes");
        assert_eq!(
            s.lock_for_process(&scope, "ci", None).unwrap(),
            Acquired::New
        );
        let holder = s.lock_holder(&scope).unwrap().unwrap();
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(s.hold(&scope, "alice", None).is_err());
        s.unlock_process(&scope).unwrap();
        assert!(s.lock_holder(&scope).unwrap().is_none());

        // A dead process's lock is stale: the next taker gets it.
        s.conn
            .execute(
                "INSERT INTO locks (scope, owner, acquired, pid, pid_start, held)
                 VALUES (?1, 'dead', 0, 4194304, 1, 0)",
                [&scope],
            )
            .unwrap();
        assert!(s.lock_holder(&scope).unwrap().is_none());
        assert_eq!(
            s.lock_for_process(&scope, "ci", None).unwrap(),
            Acquired::New
        );
    }

    #[test]
    fn an_owner_deploys_under_its_own_hold_and_keeps_it() {
        let mut s = store();
        let scope = service_scope("notes");
        s.hold(&scope, "ci", Some("release train")).unwrap();
        assert!(matches!(
            s.lock_for_process(&scope, "alice", None),
            Err(LockError::Held { .. })
        ));
        assert_eq!(
            s.lock_for_process(&scope, "ci", None).unwrap(),
            Acquired::AlreadyHeld
        );
        s.unlock_process(&scope).unwrap();
        let holder = s.lock_holder(&scope).unwrap().unwrap();
        assert_eq!(
            (holder.owner.as_str(), holder.held, holder.pid),
            ("ci", true, None)
        );
    }

    #[test]
    fn the_host_lock_is_published_for_readers_without_the_database() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store();
        assert!(read_host_lock(tmp.path()).is_none());
        s.hold(HOST_SCOPE, "ops", Some("disk swap")).unwrap();
        let holder = s.lock_holder(HOST_SCOPE).unwrap();
        publish_host_lock(tmp.path(), holder.as_ref()).unwrap();
        let read = read_host_lock(tmp.path()).unwrap();
        assert_eq!(
            (read.owner.as_str(), read.reason.as_deref()),
            ("ops", Some("disk swap"))
        );
        publish_host_lock(tmp.path(), None).unwrap();
        publish_host_lock(tmp.path(), None).unwrap();
        assert!(read_host_lock(tmp.path()).is_none());
    }

    #[test]
    fn a_system_deployment_in_flight_holds_the_host_while_it_lives() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(read_system_activity(tmp.path()).is_none());
        let mut activity = SystemActivity {
            id: "D1".into(),
            node: "web1".into(),
            actor: "alice@laptop".into(),
            started: now(),
            status: "activating".into(),
            pid: Some(std::process::id()),
            pid_start: process::start_time(std::process::id()),
            until: None,
        };
        publish_system_activity(tmp.path(), Some(&activity)).unwrap();
        let read = read_system_activity(tmp.path()).unwrap();
        let message = read.holder().to_string();
        assert!(
            message.starts_with("alice@laptop since ")
                && message.ends_with(": system deployment D1 of web1 is activating"),
            "{message}"
        );
        // Its agent gone, and nothing pending: it no longer holds.
        activity.pid = Some(4_194_304);
        publish_system_activity(tmp.path(), Some(&activity)).unwrap();
        assert!(read_system_activity(tmp.path()).is_none());
        // Pending until its deadline.
        activity.until = Some(now() + 60);
        publish_system_activity(tmp.path(), Some(&activity)).unwrap();
        assert!(read_system_activity(tmp.path()).is_some());
        publish_system_activity(tmp.path(), None).unwrap();
        publish_system_activity(tmp.path(), None).unwrap();
        assert!(read_system_activity(tmp.path()).is_none());
    }

    #[test]
    fn blocked_revisions_round_trip() {
        let s = store();
        assert!(s.blocked("notes", "abc").unwrap().is_none());
        s.block("notes", "abc", "D1", "health failed").unwrap();
        let b = s.blocked("notes", "abc").unwrap().unwrap();
        assert_eq!(b.deployment_id.as_deref(), Some("D1"));
        s.block("notes", "def", "D2", "migration failed").unwrap();
        s.block("other", "abc", "D3", "crash").unwrap();
        let list: Vec<_> = s
            .blocked_list("notes")
            .unwrap()
            .into_iter()
            .map(|b| b.revision)
            .collect();
        assert_eq!(list, ["abc", "def"]);
        s.unblock("notes", "abc").unwrap();
        assert!(s.blocked("notes", "abc").unwrap().is_none());
        assert_eq!(s.blocked_list("notes").unwrap().len(), 1);
        assert_eq!(s.blocked_list("other").unwrap().len(), 1);
    }
}
