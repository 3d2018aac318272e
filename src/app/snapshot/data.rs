//! The service's data as a deploy sees it: one interface (check, room and
//! snapshot on the manifest's [`Data`], and [`restore`]) over the three
//! kinds a service declares, each of which lives in its own file: SQLite
//! databases (`sqlite.rs`), file trees (`files.rs`) and PostgreSQL
//! databases (`postgres.rs`).

use std::path::Path;

use super::postgres::{restore_pg, snapshot_pg, verify_pg, PgFacts};
use super::{
    abandon_if_failed, begin, check_postgres, check_space, check_sqlite, fill, read,
    restore::restore_with, Names, Snapshot, SnapshotError,
};
use crate::app::manifest::Data;
use crate::process::JobLog;

/// The data a manifest declares (its paths resolved, absolute).
impl Data {
    /// Each piece as the messages name it: paths, and `postgres:<name>`.
    pub fn names(&self) -> Vec<String> {
        self.sqlite
            .iter()
            .chain(&self.files)
            .map(|p| p.display().to_string())
            .chain(self.postgres.iter().map(|db| format!("postgres:{db}")))
            .collect()
    }

    /// Refuses, before anything is stopped, data a snapshot could not
    /// take or a restore could not put back: a file declared as SQLite
    /// that is not, a PostgreSQL database the agent cannot reach or whose
    /// objects are not all its role's.
    pub async fn check(&self, log: &JobLog) -> Result<(), SnapshotError> {
        for db in &self.sqlite {
            if !check_sqlite(db)? {
                return Err(SnapshotError::NotSqlite(db.clone()));
            }
        }
        for db in &self.postgres {
            check_postgres(db, log).await?;
        }
        Ok(())
    }

    /// Takes a snapshot into `dir` (new), after checking that every
    /// filesystem has room for it (and, with `restore`, for an undo to
    /// stage it beside the live files: see [`check_space`]; a PostgreSQL
    /// database counts with its size, more than its dump takes) and that
    /// each PostgreSQL database is one a restore can put back. Then the
    /// PostgreSQL dumps, the SQLite copies and file trees, and
    /// `snapshot.json`, last, which makes it complete. On an error the
    /// directory is removed again.
    pub async fn snapshot(
        &self,
        dir: &Path,
        id: &str,
        service: &str,
        base: &Path,
        restore: bool,
        log: &JobLog,
    ) -> Result<Snapshot, SnapshotError> {
        let mut facts: Vec<PgFacts> = Vec::with_capacity(self.postgres.len());
        for db in &self.postgres {
            facts.push(check_postgres(db, log).await?);
        }
        let dumps = facts.iter().map(|f| f.size).sum();
        check_space(dir, &self.sqlite, &self.files, dumps, restore)?;
        begin(dir, &self.sqlite, &self.files)?;
        let made = async {
            let mut names = Names::new();
            let mut dumps = Vec::with_capacity(self.postgres.len());
            for (db, facts) in self.postgres.iter().zip(facts) {
                let dump = names.take_postgres(db);
                dumps.push(snapshot_pg(db, facts, dir, dump, log).await?);
            }
            fill(
                dir,
                id,
                service,
                base,
                &self.sqlite,
                &self.files,
                dumps,
                &mut names,
            )
        }
        .await;
        abandon_if_failed(dir, made)
    }
}

/// Puts the snapshot in `dir` back; the caller has stopped the service.
/// Every PostgreSQL dump is checked first, then the SQLite databases and
/// file trees are restored (see [`super::restore`]), then each PostgreSQL
/// database in one transaction. `failed_tag` names what is kept of the
/// failed state. With `resume`, what a dead agent's restore under the same
/// tag finished is left as it is.
pub async fn restore(
    dir: &Path,
    failed_tag: &str,
    resume: bool,
    log: &JobLog,
) -> Result<Snapshot, SnapshotError> {
    let snapshot = read(dir)?;
    let mut tocs = Vec::with_capacity(snapshot.postgres.len());
    for pg in &snapshot.postgres {
        tocs.push(verify_pg(dir, pg, log).await?);
    }
    let whole = restore_with(dir, failed_tag, resume)?;
    for (pg, toc) in snapshot.postgres.iter().zip(&tocs) {
        restore_pg(dir, pg, toc, failed_tag, resume, log).await?;
    }
    Ok(whole)
}
