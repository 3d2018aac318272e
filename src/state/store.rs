//! [`Store`]: one connection to the state database, and every read and write
//! of deployments and their events.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Params, Row, TransactionBehavior};

use super::{
    db_path, now, schema, sql_err, Deployment, Event, Kind, NewDeployment, StateError, Status,
};

/// How long a write waits for another process's write to finish before
/// failing: writes are single rows, so waiting long means something is stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the state database. Each process (or thread) opens its
/// own; SQLite's locking keeps them consistent.
pub struct Store {
    pub(super) conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database in `dir`, and brings its
    /// schema up to date.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| StateError::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        let path = db_path(dir);
        let conn = Connection::open(&path).map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        Store::set_up(conn, &path)
    }

    /// A private database that lives as long as the store (for tests).
    pub fn open_in_memory() -> Result<Store, StateError> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StateError::Open {
            path: path.to_owned(),
            source,
        })?;
        Store::set_up(conn, path)
    }

    fn set_up(mut conn: Connection, path: &Path) -> Result<Store, StateError> {
        let configure = |conn: &Connection| -> rusqlite::Result<()> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            enable_wal(conn)?;
            // FULL, not NORMAL: a commit must survive the power cut or hang
            // that the activation it records may itself cause.
            conn.pragma_update(None, "synchronous", "full")?;
            conn.pragma_update(None, "foreign_keys", true)
        };
        configure(&conn).map_err(|source| StateError::Open {
            path: path.to_owned(),
            source,
        })?;
        schema::migrate(&mut conn, path)?;
        Ok(Store { conn })
    }

    /// Records a new deployment as Activating, started now, unless one of the
    /// same kind and target is unfinished: then [`StateError::Busy`] names
    /// it. Check and insert are one `BEGIN IMMEDIATE` transaction, so two
    /// agents racing cannot both start.
    pub fn begin(&mut self, new: &NewDeployment) -> Result<Deployment, StateError> {
        let what = format!("record deployment {} of {}", new.id, new.target);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&what))?;
        if let Some(holder) = active_in(&tx, new.kind, &new.target)? {
            return Err(StateError::Busy {
                holder: Box::new(holder),
            });
        }
        let deployment = tx
            .query_row(
                "INSERT INTO deployments (id, kind, target, from_path, from_generation, to_path,
                     goal, actor, reason, ci_run_url, started, status, revision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                 RETURNING *",
                (
                    &new.id,
                    new.kind,
                    &new.target,
                    &new.from_path,
                    new.from_generation.map(Generation),
                    &new.to_path,
                    &new.goal,
                    &new.actor,
                    &new.reason,
                    &new.ci_run_url,
                    now(),
                    Status::Activating,
                    &new.revision,
                ),
                deployment,
            )
            .map_err(sql_err(&what))?;
        tx.commit().map_err(sql_err(what))?;
        Ok(deployment)
    }

    /// Sets a deployment's status unconditionally (use [`Store::transition`]
    /// where another process may be moving it too). A terminal status sets
    /// `ended` to now. `failure_phase`, when given, replaces the recorded
    /// one; `None` keeps it.
    pub fn set_status(
        &self,
        id: &str,
        status: Status,
        failure_phase: Option<&str>,
    ) -> Result<Deployment, StateError> {
        update_status(&self.conn, id, status, failure_phase)
    }

    /// Moves a deployment to `to` only if its status is one of `from` and it
    /// is unfinished (Activating or Pending; terminal statuses in `from` are
    /// ignored). Returns `Ok(None)` when it was not: the compare-and-set that
    /// lets exactly one of a confirm and a watchdog's rollback win.
    ///
    /// A move to RolledBack is a claim: the deployment stays unfinished
    /// (`ended` unset, see [`Deployment::is_settled`]) until the rollback is
    /// done and [`Store::set_status`] records how it ended, so nothing new
    /// begins while the previous generation is being switched back to.
    pub fn transition(
        &mut self,
        id: &str,
        from: &[Status],
        to: Status,
        failure_phase: Option<&str>,
    ) -> Result<Option<Deployment>, StateError> {
        let what = format!("move deployment {id} to {to}");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql_err(&what))?;
        let current = get_in(&tx, id)?;
        if current.status.is_terminal() || !from.contains(&current.status) {
            return Ok(None);
        }
        let finished = to != Status::RolledBack;
        let moved = update_status_ended(&tx, id, to, failure_phase, finished)?;
        tx.commit().map_err(sql_err(what))?;
        Ok(Some(moved))
    }

    /// Records the generation the new profile became.
    pub fn set_to_generation(&self, id: &str, generation: u64) -> Result<(), StateError> {
        self.set_column(id, "to_generation", Generation(generation))
    }

    /// Records the agent process driving the deployment.
    pub fn set_agent_pid(&self, id: &str, pid: u32) -> Result<(), StateError> {
        self.set_column(id, "agent_pid", pid)
    }

    /// Records when a pending deployment rolls back unless confirmed (unix
    /// seconds).
    pub fn set_confirm_deadline(&self, id: &str, deadline: i64) -> Result<(), StateError> {
        self.set_column(id, "confirm_deadline", deadline)
    }

    /// `column` is one of the literals above, never input.
    fn set_column(&self, id: &str, column: &str, value: impl ToSql) -> Result<(), StateError> {
        let changed = self
            .conn
            .execute(
                &format!("UPDATE deployments SET {column} = ?2 WHERE id = ?1"),
                (id, value),
            )
            .map_err(sql_err(format!("record {column} of deployment {id}")))?;
        if changed == 0 {
            return Err(StateError::NotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Appends an event, timed now, to a deployment's story.
    pub fn add_event(&self, id: &str, phase: &str, message: &str) -> Result<(), StateError> {
        // Selecting from deployments makes an unknown id insert nothing, which
        // reads as NotFound instead of a foreign-key failure.
        let added = self
            .conn
            .execute(
                "INSERT INTO events (deployment_id, at, phase, message)
                 SELECT id, ?2, ?3, ?4 FROM deployments WHERE id = ?1",
                (id, now(), phase, message),
            )
            .map_err(sql_err(format!("record an event of deployment {id}")))?;
        if added == 0 {
            return Err(StateError::NotFound(id.to_owned()));
        }
        Ok(())
    }

    /// The deployment `id`.
    pub fn get(&self, id: &str) -> Result<Deployment, StateError> {
        get_in(&self.conn, id)
    }

    /// The unfinished deployment of `kind` and `target`, if any.
    pub fn active(&self, kind: Kind, target: &str) -> Result<Option<Deployment>, StateError> {
        active_in(&self.conn, kind, target)
    }

    /// All unfinished deployments, oldest first (the boot check resolves
    /// them).
    pub fn all_active(&self) -> Result<Vec<Deployment>, StateError> {
        query_all(
            &self.conn,
            &format!("SELECT * FROM deployments WHERE {UNFINISHED} ORDER BY started, rowid"),
            (),
            "list unfinished deployments",
        )
    }

    /// Deployments of `kind`, newest first, at most `limit`; `target` `None`
    /// means every target of that kind.
    pub fn history(
        &self,
        kind: Kind,
        target: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Deployment>, StateError> {
        // rowid breaks ties within a second in the order rows were recorded.
        query_all(
            &self.conn,
            "SELECT * FROM deployments WHERE kind = ?1 AND (?2 IS NULL OR target = ?2)
             ORDER BY started DESC, rowid DESC LIMIT ?3",
            (kind, target, i64::try_from(limit).unwrap_or(i64::MAX)),
            "list past deployments",
        )
    }

    /// The newest Confirmed deployment of `kind` and `target`.
    pub fn last_confirmed(
        &self,
        kind: Kind,
        target: &str,
    ) -> Result<Option<Deployment>, StateError> {
        self.conn
            .query_row(
                "SELECT * FROM deployments
                 WHERE kind = ?1 AND target = ?2 AND status = 'confirmed'
                 ORDER BY started DESC, rowid DESC LIMIT 1",
                (kind, target),
                deployment,
            )
            .optional()
            .map_err(sql_err(format!(
                "read the last confirmed deployment of {target}"
            )))
    }

    /// The revision recorded for the system `path` of `target`: that of the
    /// newest confirmed deployment to it that has one. A rollback to an
    /// older generation finds the revision it was first deployed with.
    pub fn revision_of(
        &self,
        kind: Kind,
        target: &str,
        path: &str,
    ) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT revision FROM deployments
                 WHERE kind = ?1 AND target = ?2 AND to_path = ?3
                     AND status = 'confirmed' AND revision IS NOT NULL
                 ORDER BY started DESC, rowid DESC LIMIT 1",
                (kind, target, path),
                |row| row.get(0),
            )
            .optional()
            .map_err(sql_err(format!("read the revision of {target}'s {path}")))
    }

    /// A deployment's events, oldest first.
    pub fn events(&self, id: &str) -> Result<Vec<Event>, StateError> {
        // An unknown id is an error, not an empty story.
        self.get(id)?;
        let what = format!("read the events of deployment {id}");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT deployment_id, at, phase, message FROM events
                 WHERE deployment_id = ?1 ORDER BY seq",
            )
            .map_err(sql_err(&what))?;
        let rows = stmt
            .query_map([id], |row| {
                Ok(Event {
                    deployment_id: row.get("deployment_id")?,
                    at: row.get("at")?,
                    phase: row.get("phase")?,
                    message: row.get("message")?,
                })
            })
            .map_err(sql_err(&what))?;
        rows.collect::<Result<_, _>>().map_err(sql_err(what))
    }
}

/// WAL: readers (`berth status`) never block the agent's writes. An
/// in-memory database answers "memory" and stays so.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    // Switching a new database to WAL needs an exclusive lock, and SQLite
    // answers "locked" at once instead of using the busy timeout: two agents
    // creating the database together would fail one of them, so wait here.
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "wal", |_| Ok(())) {
            Err(err)
                if err.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

// The helpers below take a `Connection` so they serve both a plain store and
// a transaction (which derefs to one).

/// Deployments not over yet: activating, pending, or rolling back (claimed
/// for rollback, the rollback not done).
const UNFINISHED: &str =
    "(status IN ('activating', 'pending') OR (status = 'rolled_back' AND ended IS NULL))";

fn get_in(conn: &Connection, id: &str) -> Result<Deployment, StateError> {
    conn.query_row("SELECT * FROM deployments WHERE id = ?1", [id], deployment)
        .optional()
        .map_err(sql_err(format!("read deployment {id}")))?
        .ok_or_else(|| StateError::NotFound(id.to_owned()))
}

fn active_in(
    conn: &Connection,
    kind: Kind,
    target: &str,
) -> Result<Option<Deployment>, StateError> {
    conn.query_row(
        &format!("SELECT * FROM deployments WHERE kind = ?1 AND target = ?2 AND {UNFINISHED}"),
        (kind, target),
        deployment,
    )
    .optional()
    .map_err(sql_err(format!(
        "read the unfinished {kind} deployment of {target}"
    )))
}

fn update_status(
    conn: &Connection,
    id: &str,
    status: Status,
    failure_phase: Option<&str>,
) -> Result<Deployment, StateError> {
    update_status_ended(conn, id, status, failure_phase, true)
}

/// `finished`: whether a terminal status also ends the deployment (a
/// rollback's claim does not, until the rollback is done).
fn update_status_ended(
    conn: &Connection,
    id: &str,
    status: Status,
    failure_phase: Option<&str>,
    finished: bool,
) -> Result<Deployment, StateError> {
    let ended = (finished && status.is_terminal()).then(now);
    conn.query_row(
        "UPDATE deployments
         SET status = ?2, failure_phase = COALESCE(?3, failure_phase), ended = ?4
         WHERE id = ?1
         RETURNING *",
        (id, status, failure_phase, ended),
        deployment,
    )
    .optional()
    .map_err(sql_err(format!("mark deployment {id} {status}")))?
    .ok_or_else(|| StateError::NotFound(id.to_owned()))
}

fn query_all(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    what: &str,
) -> Result<Vec<Deployment>, StateError> {
    let mut stmt = conn.prepare(sql).map_err(sql_err(what))?;
    let rows = stmt.query_map(params, deployment).map_err(sql_err(what))?;
    rows.collect::<Result<_, _>>().map_err(sql_err(what))
}

/// Reads a row of `deployments` (by column name, so `SELECT *` and
/// `RETURNING *` both serve).
fn deployment(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: row.get("id")?,
        kind: row.get("kind")?,
        target: row.get("target")?,
        from_path: row.get("from_path")?,
        from_generation: row
            .get::<_, Option<Generation>>("from_generation")?
            .map(|g| g.0),
        to_path: row.get("to_path")?,
        to_generation: row
            .get::<_, Option<Generation>>("to_generation")?
            .map(|g| g.0),
        goal: row.get("goal")?,
        actor: row.get("actor")?,
        reason: row.get("reason")?,
        ci_run_url: row.get("ci_run_url")?,
        started: row.get("started")?,
        ended: row.get("ended")?,
        status: row.get("status")?,
        failure_phase: row.get("failure_phase")?,
        agent_pid: row.get("agent_pid")?,
        confirm_deadline: row.get("confirm_deadline")?,
        revision: row.get("revision")?,
    })
}

/// A generation number: a `u64`, which SQLite stores as a signed integer
/// (rusqlite converts `u64` only with a feature that this crate leaves off).
struct Generation(u64);

impl ToSql for Generation {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let value = i64::try_from(self.0)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(value.into())
    }
}

impl FromSql for Generation {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let value = value.as_i64()?;
        u64::try_from(value)
            .map(Generation)
            .map_err(|_| FromSqlError::OutOfRange(value))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::thread;

    use super::*;

    fn new(id: &str, kind: Kind, target: &str) -> NewDeployment {
        NewDeployment {
            id: id.to_owned(),
            kind,
            target: target.to_owned(),
            from_path: Some("/nix/store/aaaa-nixos-system-old".to_owned()),
            from_generation: Some(41),
            to_path: "/nix/store/bbbb-nixos-system-new".to_owned(),
            goal: "switch".to_owned(),
            actor: "alice@laptop".to_owned(),
            reason: Some("bump kernel".to_owned()),
            ci_run_url: None,
            revision: None,
        }
    }

    fn system(id: &str, target: &str) -> NewDeployment {
        new(id, Kind::System, target)
    }

    /// Sets `started`, which `begin` takes from the clock, so ordering tests
    /// need not sleep.
    fn backdate(store: &Store, id: &str, started: i64) {
        let changed = store
            .conn
            .execute(
                "UPDATE deployments SET started = ?2 WHERE id = ?1",
                (id, started),
            )
            .unwrap();
        assert_eq!(changed, 1);
    }

    fn ids(deployments: &[Deployment]) -> Vec<&str> {
        deployments.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn begin_records_an_activating_deployment() {
        let mut store = Store::open_in_memory().unwrap();
        let before = now();
        let d = store.begin(&system("d1", "web1")).unwrap();
        assert_eq!(d.status, Status::Activating);
        assert!(d.started >= before && d.started <= now());
        assert_eq!(d.ended, None);
        assert_eq!(d.from_generation, Some(41));
        assert_eq!(d.to_generation, None);
        assert_eq!(d.actor, "alice@laptop");
        assert_eq!(store.get("d1").unwrap(), d);
        assert_eq!(store.active(Kind::System, "web1").unwrap(), Some(d));
    }

    #[test]
    fn deployments_round_trip_through_json() {
        let mut store = Store::open_in_memory().unwrap();
        let d = store.begin(&system("d1", "web1")).unwrap();
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["kind"], "system");
        assert_eq!(json["status"], "activating");
        assert_eq!(serde_json::from_value::<Deployment>(json).unwrap(), d);
    }

    #[test]
    fn begin_refuses_while_one_is_unfinished_and_names_it() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .begin(&system("20261123T091502Z-ab12cd", "web1"))
            .unwrap();
        let err = store.begin(&system("d2", "web1")).unwrap_err();
        let StateError::Busy { holder } = &err else {
            panic!("expected Busy, got {err:?}");
        };
        assert_eq!(holder.id, "20261123T091502Z-ab12cd");
        let message = err.to_string();
        assert!(
            message.starts_with(
                "deployment 20261123T091502Z-ab12cd of web1 by alice@laptop, started "
            ),
            "{message}"
        );
        assert!(message.ends_with(" ago, is still activating"), "{message}");

        store
            .transition(
                "20261123T091502Z-ab12cd",
                &[Status::Activating],
                Status::Pending,
                None,
            )
            .unwrap()
            .unwrap();
        let err = store.begin(&system("d2", "web1")).unwrap_err();
        assert!(err.to_string().ends_with("is still pending"), "{err}");
        assert!(matches!(store.get("d2"), Err(StateError::NotFound(_))));

        // Other targets, and apps of the same name, are not held.
        store.begin(&system("d3", "web2")).unwrap();
        store.begin(&new("d4", Kind::App, "web1")).unwrap();

        store
            .set_status("20261123T091502Z-ab12cd", Status::Confirmed, None)
            .unwrap();
        store.begin(&system("d2", "web1")).unwrap();
    }

    #[test]
    fn a_terminal_status_sets_ended() {
        let mut store = Store::open_in_memory().unwrap();
        store.begin(&system("d1", "web1")).unwrap();
        let d = store.set_status("d1", Status::Pending, None).unwrap();
        assert_eq!((d.status, d.ended), (Status::Pending, None));
        let d = store
            .set_status("d1", Status::RolledBack, Some("health-check"))
            .unwrap();
        assert_eq!(d.status, Status::RolledBack);
        assert!(d.ended.is_some_and(|e| e >= d.started));
        assert_eq!(d.failure_phase.as_deref(), Some("health-check"));
        // No phase given keeps the recorded one.
        let d = store
            .set_status("d1", Status::RollbackFailed, None)
            .unwrap();
        assert_eq!(d.failure_phase.as_deref(), Some("health-check"));
        assert!(matches!(
            store.set_status("nope", Status::Failed, None),
            Err(StateError::NotFound(id)) if id == "nope"
        ));
    }

    #[test]
    fn transition_is_a_compare_and_set() {
        let mut store = Store::open_in_memory().unwrap();
        store.begin(&system("d1", "web1")).unwrap();
        // Not in `from`: nothing moves.
        assert_eq!(
            store
                .transition("d1", &[Status::Pending], Status::Confirmed, None)
                .unwrap(),
            None
        );
        assert_eq!(store.get("d1").unwrap().status, Status::Activating);

        let d = store
            .transition("d1", &[Status::Activating], Status::Pending, None)
            .unwrap()
            .unwrap();
        assert_eq!((d.status, d.ended), (Status::Pending, None));
        let d = store
            .transition(
                "d1",
                &[Status::Activating, Status::Pending],
                Status::Confirmed,
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(d.status, Status::Confirmed);
        assert!(d.ended.is_some());

        // Terminal rows never move, even when `from` names their status.
        for from in [&[Status::Pending][..], &[Status::Confirmed]] {
            assert_eq!(
                store
                    .transition("d1", from, Status::RolledBack, Some("watchdog"))
                    .unwrap(),
                None
            );
        }
        assert_eq!(store.get("d1").unwrap(), d);
        assert!(matches!(
            store.transition("nope", &[Status::Pending], Status::Confirmed, None),
            Err(StateError::NotFound(_))
        ));
    }

    #[test]
    fn setters_record_and_report_unknown_ids() {
        let mut store = Store::open_in_memory().unwrap();
        store.begin(&system("d1", "web1")).unwrap();
        store.set_to_generation("d1", 42).unwrap();
        store.set_agent_pid("d1", 4242).unwrap();
        store.set_confirm_deadline("d1", 1_800_000_000).unwrap();
        let d = store.get("d1").unwrap();
        assert_eq!(d.to_generation, Some(42));
        assert_eq!(d.agent_pid, Some(4242));
        assert_eq!(d.confirm_deadline, Some(1_800_000_000));

        assert!(matches!(
            store.set_to_generation("x", 1),
            Err(StateError::NotFound(_))
        ));
        assert!(matches!(
            store.set_agent_pid("x", 1),
            Err(StateError::NotFound(_))
        ));
        assert!(matches!(
            store.set_confirm_deadline("x", 1),
            Err(StateError::NotFound(_))
        ));
        assert!(matches!(store.get("x"), Err(StateError::NotFound(_))));
        assert_eq!(
            StateError::NotFound("x".into()).to_string(),
            "no deployment x is recorded on this host"
        );
        // Beyond what SQLite's signed integers hold: refused, not wrapped.
        assert!(matches!(
            store.set_to_generation("d1", u64::MAX),
            Err(StateError::Sqlite { .. })
        ));
    }

    #[test]
    fn history_is_newest_first_and_limited() {
        let mut store = Store::open_in_memory().unwrap();
        for (i, (id, target)) in [("a", "web1"), ("b", "web2"), ("c", "web1"), ("d", "web1")]
            .into_iter()
            .enumerate()
        {
            store.begin(&system(id, target)).unwrap();
            store.set_status(id, Status::Confirmed, None).unwrap();
            backdate(&store, id, 1000 + i as i64);
        }
        // Same second as "d": recorded later, so newer.
        store.begin(&system("e", "web1")).unwrap();
        backdate(&store, "e", 1003);
        store.begin(&new("app", Kind::App, "web1")).unwrap();

        let all = store.history(Kind::System, None, 10).unwrap();
        assert_eq!(ids(&all), ["e", "d", "c", "b", "a"]);
        let web1 = store.history(Kind::System, Some("web1"), 10).unwrap();
        assert_eq!(ids(&web1), ["e", "d", "c", "a"]);
        let two = store.history(Kind::System, Some("web1"), 2).unwrap();
        assert_eq!(ids(&two), ["e", "d"]);
        assert!(store.history(Kind::System, None, 0).unwrap().is_empty());
        assert_eq!(ids(&store.history(Kind::App, None, 10).unwrap()), ["app"]);
    }

    #[test]
    fn last_confirmed_skips_failures_and_other_targets() {
        let mut store = Store::open_in_memory().unwrap();
        assert_eq!(store.last_confirmed(Kind::System, "web1").unwrap(), None);
        let steps = [
            ("a", "web1", Status::Confirmed),
            ("b", "web1", Status::Confirmed),
            ("c", "web1", Status::RolledBack),
            ("d", "web2", Status::Confirmed),
        ];
        for (i, (id, target, status)) in steps.into_iter().enumerate() {
            store.begin(&system(id, target)).unwrap();
            store.set_status(id, status, None).unwrap();
            backdate(&store, id, 1000 + i as i64);
        }
        store.begin(&system("e", "web1")).unwrap(); // unfinished
        let last = store.last_confirmed(Kind::System, "web1").unwrap().unwrap();
        assert_eq!(last.id, "b");
        assert_eq!(store.last_confirmed(Kind::App, "web1").unwrap(), None);
    }

    #[test]
    fn the_revision_of_a_system_comes_from_its_newest_confirmed_deployment() {
        let mut store = Store::open_in_memory().unwrap();
        let (a, b) = ("/nix/store/aaaa-system", "/nix/store/bbbb-system");
        assert_eq!(store.revision_of(Kind::System, "web1", a).unwrap(), None);
        let steps = [
            ("1", "web1", a, Some("r1"), Status::Confirmed),
            ("2", "web1", b, Some("r2"), Status::Confirmed),
            // Rolled back, a rollback to `a` recorded with no revision, and
            // another node: none of them count.
            ("3", "web1", a, Some("r3"), Status::RolledBack),
            ("4", "web1", a, None, Status::Confirmed),
            ("5", "web2", a, Some("r5"), Status::Confirmed),
        ];
        for (i, (id, target, path, revision, status)) in steps.into_iter().enumerate() {
            let d = store
                .begin(&NewDeployment {
                    to_path: path.to_owned(),
                    revision: revision.map(str::to_owned),
                    ..system(id, target)
                })
                .unwrap();
            assert_eq!(d.revision.as_deref(), revision);
            store.set_status(id, status, None).unwrap();
            backdate(&store, id, 1000 + i as i64);
        }
        let of =
            |store: &Store, target, path| store.revision_of(Kind::System, target, path).unwrap();
        assert_eq!(of(&store, "web1", a).as_deref(), Some("r1"));
        assert_eq!(of(&store, "web1", b).as_deref(), Some("r2"));
        assert_eq!(of(&store, "web2", a).as_deref(), Some("r5"));
        assert_eq!(of(&store, "web1", "/nix/store/cccc-system"), None);
        // The same system deployed again from a newer commit: the newer one.
        store
            .begin(&NewDeployment {
                to_path: a.to_owned(),
                revision: Some("r6".into()),
                ..system("6", "web1")
            })
            .unwrap();
        store.set_status("6", Status::Confirmed, None).unwrap();
        backdate(&store, "6", 2000);
        assert_eq!(of(&store, "web1", a).as_deref(), Some("r6"));
    }

    #[test]
    fn events_come_back_oldest_first() {
        let mut store = Store::open_in_memory().unwrap();
        store.begin(&system("d1", "web1")).unwrap();
        store.begin(&system("d2", "web2")).unwrap();
        store.add_event("d1", "copy", "closure copied").unwrap();
        store.add_event("d2", "copy", "other deployment").unwrap();
        store
            .add_event("d1", "activate", "switch-to-configuration switch")
            .unwrap();
        store
            .add_event("d1", "confirm", "confirmed by alice@laptop")
            .unwrap();
        let events = store.events("d1").unwrap();
        let phases: Vec<_> = events.iter().map(|e| e.phase.as_str()).collect();
        assert_eq!(phases, ["copy", "activate", "confirm"]);
        assert!(events.iter().all(|e| e.deployment_id == "d1" && e.at > 0));
        assert_eq!(events[1].message, "switch-to-configuration switch");

        assert!(matches!(
            store.add_event("x", "copy", "?"),
            Err(StateError::NotFound(_))
        ));
        assert!(matches!(store.events("x"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn events_go_with_their_deployment() {
        let mut store = Store::open_in_memory().unwrap();
        store.begin(&system("d1", "web1")).unwrap();
        store.add_event("d1", "copy", "closure copied").unwrap();
        store.conn.execute("DELETE FROM deployments", ()).unwrap();
        let left: i64 = store
            .conn
            .query_row("SELECT count(*) FROM events", (), |row| row.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn all_active_lists_every_unfinished_deployment() {
        let mut store = Store::open_in_memory().unwrap();
        assert!(store.all_active().unwrap().is_empty());
        store.begin(&system("a", "web1")).unwrap();
        store.begin(&system("b", "web2")).unwrap();
        store.begin(&system("c", "web3")).unwrap();
        store.begin(&new("d", Kind::App, "api")).unwrap();
        store.set_status("b", Status::Pending, None).unwrap();
        store.set_status("c", Status::Failed, Some("copy")).unwrap();
        assert_eq!(ids(&store.all_active().unwrap()), ["a", "b", "d"]);
    }

    #[test]
    fn the_database_allows_one_unfinished_deployment_per_target() {
        let mut store = Store::open_in_memory().unwrap();
        store.begin(&system("a", "web1")).unwrap();
        store.set_status("a", Status::Confirmed, None).unwrap();
        store.begin(&system("b", "web1")).unwrap();
        // Reviving "a" behind begin's back would make two.
        assert!(matches!(
            store.set_status("a", Status::Pending, None),
            Err(StateError::Sqlite { .. })
        ));
    }

    #[test]
    fn open_creates_the_directory_and_a_migrated_wal_database() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("var/lib/berth");
        let store = Store::open(&dir).unwrap();
        assert!(db_path(&dir).is_file());
        let pragma = |name: &str| -> String {
            store
                .conn
                .query_row(&format!("PRAGMA {name}"), (), |row| {
                    row.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(pragma("journal_mode"), r#"Text("wal")"#);
        assert_eq!(pragma("foreign_keys"), "Integer(1)");
        assert_eq!(pragma("synchronous"), "Integer(2)");
        assert_eq!(
            pragma("user_version"),
            format!("Integer({})", schema::SCHEMA_VERSION)
        );
    }

    #[test]
    fn reopening_keeps_the_data() {
        let tmp = tempfile::tempdir().unwrap();
        let d = {
            let mut store = Store::open(tmp.path()).unwrap();
            let d = store.begin(&system("d1", "web1")).unwrap();
            store.add_event("d1", "copy", "closure copied").unwrap();
            d
        };
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.get("d1").unwrap(), d);
        assert_eq!(store.events("d1").unwrap().len(), 1);
    }

    #[test]
    fn open_refuses_a_newer_schema() {
        let tmp = tempfile::tempdir().unwrap();
        drop(Store::open(tmp.path()).unwrap());
        Connection::open(db_path(tmp.path()))
            .unwrap()
            .pragma_update(None, "user_version", 7)
            .unwrap();
        let err = Store::open(tmp.path()).err().unwrap();
        assert!(
            matches!(
                err,
                StateError::NewerSchema {
                    found: 7,
                    known: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("schema version 7"), "{message}");
        assert!(message.contains("versions up to 3"), "{message}");
        assert!(message.contains("state.db"), "{message}");
    }

    #[test]
    fn open_names_a_directory_it_cannot_create() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = Store::open(&file.join("berth")).err().unwrap();
        assert!(matches!(err, StateError::CreateDir { .. }), "{err:?}");
        assert!(err.to_string().contains("file/berth"), "{err}");
    }

    #[test]
    fn busy_refusal_crosses_connections() {
        let tmp = tempfile::tempdir().unwrap();
        let mut first = Store::open(tmp.path()).unwrap();
        let mut second = Store::open(tmp.path()).unwrap();
        first.begin(&system("d1", "web1")).unwrap();
        let err = second.begin(&system("d2", "web1")).unwrap_err();
        assert!(
            matches!(&err, StateError::Busy { holder } if holder.id == "d1"),
            "{err:?}"
        );
        assert_eq!(
            second.active(Kind::System, "web1").unwrap().unwrap().id,
            "d1"
        );
        second.begin(&system("d3", "web2")).unwrap();
        assert_eq!(ids(&first.all_active().unwrap()), ["d1", "d3"]);
    }

    type Work<T> = Box<dyn FnOnce(&mut Store) -> T + Send>;

    /// Runs `work` in two threads, each with its own store on `dir`, released
    /// together so their writes race. The stores are opened first, here, so
    /// a failed open cannot leave the other thread waiting at the barrier.
    fn race<T: Send + 'static>(dir: &Path, work: [Work<T>; 2]) -> [T; 2] {
        let barrier = Arc::new(Barrier::new(2));
        let threads = work.map(|work| {
            let mut store = Store::open(dir).unwrap();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                work(&mut store)
            })
        });
        threads.map(|t| t.join().unwrap())
    }

    #[test]
    fn agents_creating_the_database_together_all_open_it() {
        for _ in 0..50 {
            let tmp = tempfile::tempdir().unwrap();
            let barrier = Arc::new(Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (dir, barrier) = (tmp.path().to_owned(), barrier.clone());
                    thread::spawn(move || {
                        barrier.wait();
                        Store::open(&dir).map(|_| ())
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn racing_begins_start_exactly_one() {
        let tmp = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let start: fn() -> Work<_> =
                || Box::new(|s| s.begin(&system(&crate::state::new_id(), "web1")));
            let [a, b] = race(tmp.path(), [start(), start()]);
            let winner = match (a, b) {
                (Ok(d), Err(StateError::Busy { holder }))
                | (Err(StateError::Busy { holder }), Ok(d)) => {
                    assert_eq!(holder.id, d.id);
                    d
                }
                other => panic!("expected one start and one Busy, got {other:?}"),
            };
            let store = Store::open(tmp.path()).unwrap();
            store
                .set_status(&winner.id, Status::Confirmed, None)
                .unwrap();
        }
    }

    #[test]
    fn racing_confirm_and_rollback_exactly_one_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        for i in 0..20 {
            let id = format!("d{i}");
            store.begin(&system(&id, "web1")).unwrap();
            store.set_status(&id, Status::Pending, None).unwrap();
            let move_to = |to: Status| -> Work<_> {
                let id = id.clone();
                Box::new(move |s| s.transition(&id, &[Status::Pending], to, None).unwrap())
            };
            let [confirmed, rolled_back] = race(
                tmp.path(),
                [move_to(Status::Confirmed), move_to(Status::RolledBack)],
            );
            let winner = match (confirmed, rolled_back) {
                (Some(d), None) | (None, Some(d)) => d,
                other => panic!("expected exactly one winner, got {other:?}"),
            };
            assert_eq!(store.get(&id).unwrap(), winner);
            assert!(winner.status.is_terminal());
            if winner.is_rolling_back() {
                // The rollback, done, ends it.
                store.set_status(&id, Status::RolledBack, None).unwrap();
            }
        }
    }

    #[test]
    fn a_rollback_holds_the_target_until_it_is_done() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        store.begin(&system("d1", "web1")).unwrap();
        let claimed = store
            .transition(
                "d1",
                &[Status::Activating],
                Status::RolledBack,
                Some("confirm"),
            )
            .unwrap()
            .unwrap();
        assert!(claimed.is_rolling_back() && !claimed.is_settled());
        assert_eq!(
            store.active(Kind::System, "web1").unwrap().unwrap().id,
            "d1"
        );
        assert_eq!(store.all_active().unwrap().len(), 1);
        match store.begin(&system("d2", "web1")) {
            Err(StateError::Busy { holder }) => assert_eq!(holder.id, "d1"),
            other => panic!("expected Busy, got {other:?}"),
        }
        // A second claim loses: it is no longer activating or pending.
        assert!(store
            .transition("d1", &[Status::Activating], Status::RolledBack, None)
            .unwrap()
            .is_none());
        let done = store.set_status("d1", Status::RolledBack, None).unwrap();
        assert!(done.is_settled());
        assert_eq!(done.failure_phase.as_deref(), Some("confirm"));
        assert!(store.active(Kind::System, "web1").unwrap().is_none());
        store.begin(&system("d2", "web1")).unwrap();
    }
}
