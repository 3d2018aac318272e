//! PostgreSQL databases in a snapshot (`data.postgres`).
//!
//! The agent runs as the service's user and reaches each database over
//! the local socket (peer authentication, libpq's defaults and `PG*`
//! variables), as `services.postgresql` with `ensureUsers` sets it up.
//!
//! A snapshot is `pg_dump -Fd -j N`: one consistent view of the database
//! (pg_dump's jobs share one exported snapshot) taken while the app keeps
//! writing; pg_dump takes only ACCESS SHARE locks, which no insert or
//! update waits for. The dump is synced before `snapshot.json` names it.
//!
//! A restore replaces what the service's role owns in the database, in one
//! transaction: the app's other sessions are ended, `DROP OWNED BY
//! CURRENT_USER` drops its tables, sequences, views, functions and types
//! (whatever a migration made or changed), and the dump's objects owned by
//! the role are created and filled again, owners, grants, sequence values
//! and extensions included. Until PostgreSQL commits, the database is as it
//! was; an agent killed half way leaves it unchanged (its session ends,
//! the transaction rolls back) and the recovery restores again. A restore
//! that committed is marked beside the dump, so a recovery does not redo it
//! over what the restarted service wrote since.
//!
//! Objects other roles own (an extension a superuser created, say) are
//! neither dropped nor restored: the deploy refuses a database where a
//! table or sequence belongs to another role, since a restore could not
//! put it back.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::tree_bytes;
use super::{exists, io_err, sync_dir, SnapshotError};
use crate::process::{self, Cmd, JobLog, Via};

/// One PostgreSQL database in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgSnapshot {
    /// The database's name.
    pub name: String,
    /// The dump's directory inside the snapshot (pg_dump's directory
    /// format).
    pub dump: String,
    /// The role that made it (the service's user): a restore replaces
    /// what this role owns.
    pub role: String,
    /// Bytes of the dump's files, checked before a restore.
    pub bytes: u64,
    /// The database's size when it was dumped (`pg_database_size`).
    pub size: u64,
}

/// How many jobs pg_dump runs: one per CPU, at most four (each is one more
/// connection to the server).
fn jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// A libpq connection string naming `db` (anything else from libpq's
/// defaults and the environment), so a name is never read as one.
fn conninfo(db: &str) -> String {
    let quoted = db.replace('\\', "\\\\").replace('\'', "\\'");
    format!("dbname='{quoted}' application_name=berth")
}

fn psql(db: &str) -> Cmd {
    Cmd::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(conninfo(db))
}

async fn run(cmd: Cmd, db: &str, log: &JobLog) -> Result<String, SnapshotError> {
    let out = process::output(&cmd, Via::Local, log)
        .await
        .and_then(process::Output::check)
        .map_err(|e| SnapshotError::Postgres {
            db: db.to_owned(),
            what: e.to_string(),
        })?;
    Ok(out.stdout_str())
}

/// What the deploy checks of a database before it stops anything.
pub struct PgFacts {
    pub role: String,
    pub size: u64,
}

/// Connects to `db` as the agent's user and checks a restore could put
/// back everything a migration may change: every table, view and sequence
/// outside PostgreSQL's own schemas (and not an extension's) belongs to
/// the connected role. Returns the role and the database's size.
pub async fn check_postgres(db: &str, log: &JobLog) -> Result<PgFacts, SnapshotError> {
    const FACTS: &str = "\
SELECT current_user, pg_database_size(current_database()), coalesce(( \
  SELECT string_agg(format('%I.%I (%s)', n.nspname, c.relname, pg_get_userbyid(c.relowner)), ', ' ORDER BY 1) \
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
    AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
    AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user) \
    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                    AND d.objid = c.oid AND d.deptype = 'e')), '')";
    let out = process::output(&psql(db).args(["-F", "\t", "-c", FACTS]), Via::Local, log)
        .await
        .and_then(process::Output::check)
        .map_err(|e| SnapshotError::PgUnreachable {
            db: db.to_owned(),
            detail: e.to_string(),
        })?;
    let line = out.stdout_str();
    let fields: Vec<&str> = line.trim_end_matches('\n').splitn(3, '\t').collect();
    let [role, size, others] = fields[..] else {
        return Err(SnapshotError::Postgres {
            db: db.to_owned(),
            what: format!("read its owner and size from psql's answer {line:?}"),
        });
    };
    if !others.is_empty() {
        return Err(SnapshotError::PgForeign {
            db: db.to_owned(),
            role: role.to_owned(),
            objects: others.to_owned(),
        });
    }
    Ok(PgFacts {
        role: role.to_owned(),
        size: size.parse().unwrap_or(0),
    })
}

/// Dumps `db`, which [`check_postgres`] found as `facts`, into
/// `dir/<dump>` (a new directory) and syncs it.
pub(super) async fn snapshot_pg(
    db: &str,
    facts: PgFacts,
    dir: &Path,
    dump: String,
    log: &JobLog,
) -> Result<PgSnapshot, SnapshotError> {
    let path = dir.join(&dump);
    let cmd = Cmd::new("pg_dump")
        .args(["--format=directory", "--compress=1", "--no-password"])
        .arg(format!("--jobs={}", jobs()))
        .arg("--file")
        .arg(&path)
        .arg("--dbname")
        .arg(conninfo(db));
    run(cmd, db, log).await?;
    let bytes = sync_tree(&path)?;
    Ok(PgSnapshot {
        name: db.to_owned(),
        dump,
        role: facts.role,
        bytes,
        size: facts.size,
    })
}

/// Syncs each file of a dump directory and the directory; returns their
/// bytes.
fn sync_tree(dir: &Path) -> Result<u64, SnapshotError> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
        let path = entry
            .map_err(io_err(format!("list {}", dir.display())))?
            .path();
        let file = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
        file.sync_all()
            .map_err(io_err(format!("sync {}", path.display())))?;
        bytes += file
            .metadata()
            .map_err(io_err(format!("read {}", path.display())))?
            .len();
    }
    sync_dir(dir)?;
    Ok(bytes)
}

/// Checks a dump is whole before anything is restored: its bytes as
/// recorded, and pg_restore reads its table of contents.
pub(super) async fn verify_pg(
    dir: &Path,
    pg: &PgSnapshot,
    log: &JobLog,
) -> Result<String, SnapshotError> {
    let path = dir.join(&pg.dump);
    let damaged = |why: String| SnapshotError::Damaged {
        copy: path.clone(),
        why,
    };
    if !exists(&path)? {
        return Err(damaged("it is missing".into()));
    }
    let bytes = tree_bytes(&path)?;
    if bytes != pg.bytes {
        return Err(damaged(format!(
            "it holds {bytes} bytes, {} were written",
            pg.bytes
        )));
    }
    let toc = process::output(
        &Cmd::new("pg_restore").arg("--list").arg(&path),
        Via::Local,
        log,
    )
    .await
    .and_then(process::Output::check)
    .map_err(|e| damaged(format!("pg_restore cannot read it: {e}")))?;
    Ok(toc.stdout_str())
}

/// The entries of pg_restore's table of contents (`--list`) a restore as
/// `role` replays: what the role owns, and every extension (pg_dump writes
/// `CREATE EXTENSION IF NOT EXISTS` and records no owner: one the role
/// owned was dropped with its objects and comes back, one another role owns
/// stays), with its comment unless `foreign` (extensions other roles own,
/// whose comments are not the role's to set) names it.
fn owned_entries(toc: &str, role: &str, foreign: &[String]) -> String {
    let mut list = String::new();
    for line in toc.lines() {
        let entry = line.trim_end();
        if entry.is_empty() || entry.starts_with(';') {
            continue;
        }
        // `<id>; <catalog oid> <oid> <kind and name…> <owner>`
        let what = entry
            .split_once("; ")
            .map_or("", |(_, rest)| rest)
            .splitn(3, ' ')
            .nth(2)
            .unwrap_or("");
        let extension = what.starts_with("EXTENSION - ");
        let comment = what
            .strip_prefix("COMMENT - EXTENSION ")
            .map(|name| name.trim())
            .is_some_and(|name| !foreign.iter().any(|f| f == name));
        if extension || comment || line.rsplit(' ').next() == Some(role) {
            list.push_str(entry);
            list.push('\n');
        }
    }
    list
}

/// The extensions in `db` that a role other than the connected one owns.
async fn foreign_extensions(db: &str, log: &JobLog) -> Result<Vec<String>, SnapshotError> {
    let out = run(
        psql(db).args([
            "-c",
            "SELECT extname FROM pg_extension WHERE extowner <> \
             (SELECT oid FROM pg_roles WHERE rolname = current_user)",
        ]),
        db,
        log,
    )
    .await?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// The file beside a dump that marks it restored under `tag`.
fn restored_mark(dir: &Path, pg: &PgSnapshot, tag: &str) -> PathBuf {
    dir.join(format!("{}.restored-{tag}", pg.dump))
}

/// Puts `pg`'s dump back into its database in one transaction (see the
/// module's description). With `resume`, a restore under `tag` that
/// committed already is left as it is. `toc` is [`verify_pg`]'s answer.
pub(super) async fn restore_pg(
    dir: &Path,
    pg: &PgSnapshot,
    toc: &str,
    tag: &str,
    resume: bool,
    log: &JobLog,
) -> Result<(), SnapshotError> {
    let mark = restored_mark(dir, pg, tag);
    if resume && exists(&mark)? {
        return Ok(());
    }
    let foreign = foreign_extensions(&pg.name, log).await?;
    let list = dir.join(format!("{}.restore-list", pg.dump));
    fs::write(&list, owned_entries(toc, &pg.role, &foreign))
        .map_err(io_err(format!("write {}", list.display())))?;
    // pg_restore writes the dump as SQL; psql runs it after the drop, in
    // the same transaction. COMMIT is sent only once pg_restore has
    // written all of it, and psql echoes the word after it only when the
    // commit went through: a dump cut short ends the session in an open
    // transaction, which PostgreSQL rolls back.
    const DONE: &str = "berth-restore-committed";
    let script = format!(
        "set -e\n\
         {{\n\
         printf '%s\\n' 'BEGIN;' \
           \"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid();\" \
           'DROP OWNED BY CURRENT_USER;'\n\
         pg_restore --use-list \"$1\" --file - \"$2\"\n\
         printf '%s\\n' 'COMMIT;' '\\echo {DONE}'\n\
         }} | psql -X -q -v ON_ERROR_STOP=1 -d \"$3\"\n"
    );
    let cmd = Cmd::new("sh")
        .arg("-c")
        .arg(script)
        .arg("berth-pg-restore")
        .arg(&list)
        .arg(dir.join(&pg.dump))
        .arg(conninfo(&pg.name));
    let out = run(cmd, &pg.name, log).await?;
    if !out.lines().any(|l| l.trim() == DONE) {
        return Err(SnapshotError::Postgres {
            db: pg.name.clone(),
            what: "restore it: pg_restore stopped before the end of the dump; nothing was changed"
                .into(),
        });
    }
    File::create(&mark)
        .and_then(|f| f.sync_all())
        .map_err(io_err(format!("write {}", mark.display())))?;
    sync_dir(dir)?;
    let _ = fs::remove_file(&list);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_name_cannot_add_connection_settings() {
        assert_eq!(conninfo("notes"), "dbname='notes' application_name=berth");
        assert_eq!(
            conninfo("a' host='evil"),
            r"dbname='a\' host=\'evil' application_name=berth"
        );
        assert_eq!(conninfo(r"a\"), r"dbname='a\\' application_name=berth");
    }

    #[test]
    fn a_restore_creates_what_the_role_owns_and_the_extensions() {
        let toc = "\
;
; Archive created at 2026-12-06 22:00:00 UTC
;     dbname: notes
;
2; 3079 16390 EXTENSION - pgcrypto 
3; 0 0 COMMENT - EXTENSION pgcrypto 
4; 3079 16391 EXTENSION - citext 
5; 0 0 COMMENT - EXTENSION citext 
215; 1259 16386 TABLE public items notes
216; 1259 16385 SEQUENCE public items_id_seq notes
3350; 0 16386 TABLE DATA public items notes
3357; 0 0 SEQUENCE SET public items_id_seq notes
3201; 2606 16392 CONSTRAINT public items items_pkey notes
3360; 0 0 ACL - SCHEMA public pg_database_owner
3361; 0 0 ACL public TABLE items notes
";
        assert_eq!(
            owned_entries(toc, "notes", &["citext".to_owned()]),
            "2; 3079 16390 EXTENSION - pgcrypto\n\
             3; 0 0 COMMENT - EXTENSION pgcrypto\n\
             4; 3079 16391 EXTENSION - citext\n\
             215; 1259 16386 TABLE public items notes\n\
             216; 1259 16385 SEQUENCE public items_id_seq notes\n\
             3350; 0 16386 TABLE DATA public items notes\n\
             3357; 0 0 SEQUENCE SET public items_id_seq notes\n\
             3201; 2606 16392 CONSTRAINT public items items_pkey notes\n\
             3361; 0 0 ACL public TABLE items notes\n"
        );
        // A role whose name ends another's is not that role.
        assert!(!owned_entries(toc, "tes", &[]).contains("TABLE"));
    }
}

/// One step of bench/postgres/run, timed: berth's own snapshot of the
/// database `BERTH_BENCH_PG_DB` into the new directory `BERTH_BENCH_PG_DIR`
/// (`BERTH_BENCH_PG_STEP=snapshot`), or its restore from there
/// (`restore`). Prints the seconds it took on stdout. Run by the script, as
/// the user owning the database, against its cluster (`PGHOST`).
#[cfg(test)]
#[test]
#[ignore = "a benchmark: run bench/postgres/run"]
fn bench_postgres_step() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("set {name}"));
    let (db, dir, step) = (
        var("BERTH_BENCH_PG_DB"),
        PathBuf::from(var("BERTH_BENCH_PG_DIR")),
        var("BERTH_BENCH_PG_STEP"),
    );
    let log = JobLog::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    runtime.block_on(async {
        match step.as_str() {
            "snapshot" => {
                let data = crate::app::manifest::Data {
                    postgres: vec![db],
                    ..Default::default()
                };
                let base = dir.parent().unwrap();
                data.snapshot(&dir, "bench", "bench", base, false, &log)
                    .await
                    .unwrap();
            }
            "restore" => {
                super::restore(&dir, "bench", false, &log).await.unwrap();
            }
            other => panic!("BERTH_BENCH_PG_STEP={other}: snapshot or restore"),
        }
    });
    println!("{:.2}", started.elapsed().as_secs_f64());
}
