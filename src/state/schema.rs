//! The database schema, as migrations numbered by SQLite's `user_version`.
//!
//! A migration, once released, never changes: a new need gets a new entry at
//! the end, so every host reaches the same schema whatever version it was on.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::{sql_err, StateError};

/// Migration `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: deployments and their events; blocked revisions and locks for app
    // deploys. STRICT, so a wrong type is an error rather than stored. A
    // PRIMARY KEY does not imply NOT NULL in SQLite, hence the explicit ones.
    "
    CREATE TABLE deployments (
        id               TEXT NOT NULL PRIMARY KEY,
        kind             TEXT NOT NULL CHECK (kind IN ('system', 'app')),
        target           TEXT NOT NULL,
        from_path        TEXT,
        from_generation  INTEGER CHECK (from_generation >= 0),
        to_path          TEXT NOT NULL,
        to_generation    INTEGER CHECK (to_generation >= 0),
        goal             TEXT NOT NULL,
        actor            TEXT NOT NULL,
        reason           TEXT,
        ci_run_url       TEXT,
        started          INTEGER NOT NULL,
        ended            INTEGER,
        status           TEXT NOT NULL CHECK (status IN ('activating', 'pending',
                             'confirmed', 'rolled_back', 'failed', 'rollback_failed')),
        failure_phase    TEXT,
        agent_pid        INTEGER CHECK (agent_pid >= 0),
        confirm_deadline INTEGER
    ) STRICT;

    CREATE INDEX deployments_by_target ON deployments (kind, target, started);

    -- At most one unfinished deployment per kind and target, whatever code
    -- writes: the database enforces what Store::begin checks.
    CREATE UNIQUE INDEX deployments_one_unfinished ON deployments (kind, target)
        WHERE status IN ('activating', 'pending');

    CREATE TABLE events (
        seq           INTEGER PRIMARY KEY,
        deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
        at            INTEGER NOT NULL,
        phase         TEXT NOT NULL,
        message       TEXT NOT NULL
    ) STRICT;

    CREATE INDEX events_by_deployment ON events (deployment_id, seq);

    CREATE TABLE blocked_revisions (
        service       TEXT NOT NULL,
        revision      TEXT NOT NULL,
        deployment_id TEXT,
        reason        TEXT,
        at            INTEGER,
        PRIMARY KEY (service, revision)
    ) STRICT;

    CREATE TABLE locks (
        scope    TEXT NOT NULL PRIMARY KEY,
        owner    TEXT NOT NULL,
        reason   TEXT,
        acquired INTEGER NOT NULL
    ) STRICT;
    ",
    // 2: locks know the process that holds them (a transaction's lock goes
    // with its process; a dead holder's lock is stale) and whether someone
    // holds it beyond any process (`berth lock acquire`).
    "
    ALTER TABLE locks ADD COLUMN pid INTEGER CHECK (pid >= 0);
    ALTER TABLE locks ADD COLUMN pid_start INTEGER;
    ALTER TABLE locks ADD COLUMN held INTEGER NOT NULL DEFAULT 0 CHECK (held IN (0, 1));
    ",
    // 3: the flake revision (git commit) a system deployment was built from,
    // so that a deploy can tell whether the host already runs a newer one.
    // NULL where there was none (a dirty tree, a `path:` flake), for app
    // deployments (their commit is `to_path`), and for every row written
    // before.
    "
    ALTER TABLE deployments ADD COLUMN revision TEXT;
    ",
];

/// The schema version this berth writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], refusing one that is newer.
/// `path` names the database in errors.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let what = format!("migrate the state database {}", path.display());
    // IMMEDIATE: two agents opening a fresh database at once must not both
    // read version 0 and both run migration 1.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err(&what))?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql_err(&what))?;
    // A negative version was not written by berth: refuse it as unknown too.
    let Some(pending) = usize::try_from(found)
        .ok()
        .and_then(|done| MIGRATIONS.get(done..))
    else {
        return Err(StateError::NewerSchema {
            path: path.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    };
    for (version, sql) in (found + 1..).zip(pending) {
        let what = format!("{what} to schema version {version}");
        tx.execute_batch(sql).map_err(sql_err(&what))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(sql_err(what))?;
    }
    tx.commit().map_err(sql_err(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap()
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        let names = stmt.query_map([], |row| row.get(0)).unwrap();
        names.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn migrates_an_empty_database_to_the_latest_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(user_version(&conn), 0);
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        assert_eq!(
            tables(&conn),
            ["blocked_revisions", "deployments", "events", "locks"]
        );
    }

    #[test]
    fn migrating_again_changes_nothing() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
    }

    #[test]
    fn refuses_a_newer_or_foreign_schema() {
        for found in [SCHEMA_VERSION + 1, 99, -1] {
            let mut conn = Connection::open_in_memory().unwrap();
            conn.pragma_update(None, "user_version", found).unwrap();
            let err = migrate(&mut conn, Path::new("/x/state.db")).unwrap_err();
            assert!(
                matches!(err, StateError::NewerSchema { found: f, known, .. } if f == found && known == SCHEMA_VERSION),
                "{err:?}"
            );
            assert!(tables(&conn).is_empty(), "a refused database was changed");
        }
    }

    #[test]
    fn constraints_reject_unknown_kinds_and_statuses() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        let insert = |kind: &str, status: &str| {
            conn.execute(
                "INSERT INTO deployments (id, kind, target, to_path, goal, actor, started, status)
                 VALUES (?1, ?2, 'web1', '/nix/store/x', 'switch', 'a@b', 0, ?3)",
                (format!("{kind}-{status}"), kind, status),
            )
        };
        insert("system", "confirmed").unwrap();
        assert!(insert("container", "confirmed").is_err());
        assert!(insert("system", "done").is_err());
    }

    /// A database as berth left it at `version`: the first migrations only.
    fn at_version(version: usize) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        conn
    }

    #[test]
    fn version_3_adds_a_revision_to_deployments_and_keeps_the_old_ones() {
        let mut conn = at_version(2);
        conn.execute(
            "INSERT INTO deployments (id, kind, target, to_path, goal, actor, started, status)
             VALUES ('old', 'system', 'web1', '/nix/store/x', 'switch', 'a@b', 0, 'confirmed')",
            (),
        )
        .unwrap();
        assert!(
            conn.execute("UPDATE deployments SET revision = 'r'", ())
                .is_err(),
            "version 2 already had a revision column"
        );
        migrate(&mut conn, Path::new(":memory:")).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        let old: (String, Option<String>) = conn
            .query_row(
                "SELECT status, revision FROM deployments WHERE id = 'old'",
                (),
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(old, ("confirmed".to_owned(), None));
        let rev = "0123456789abcdef0123456789abcdef01234567";
        conn.execute(
            "INSERT INTO deployments (id, kind, target, to_path, goal, actor, started, status, revision)
             VALUES ('new', 'system', 'web1', '/nix/store/y', 'switch', 'a@b', 1, 'confirmed', ?1)",
            [rev],
        )
        .unwrap();
        let stored: String = conn
            .query_row(
                "SELECT revision FROM deployments WHERE id = 'new'",
                (),
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(stored, rev);
    }
}
