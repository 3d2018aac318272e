//! The service's data as a deploy sees it: one interface (check, size,
//! snapshot, restore) over the three kinds a service declares, each of
//! which lives in its own file: SQLite databases (`sqlite.rs`), file trees
//! (`files.rs`) and PostgreSQL databases (`postgres.rs`).

use std::path::{Path, PathBuf};

use super::postgres::{restore_pg, snapshot_pg, verify_pg};
use super::{
    abandon_if_failed, begin, check_postgres, check_space, check_sqlite, fill, read,
    restore::restore_with, Names, Snapshot, SnapshotError,
};
use crate::process::JobLog;

/// What a service declares as its data (absolute paths, database names).
#[derive(Clone, Debug, Default)]
pub struct Data {
    pub sqlite: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    pub postgres: Vec<String>,
}

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

    /// Checks there is room for a snapshot into `dir` (and, with
    /// `restore`, for an undo to stage it beside the live files): see
    /// [`check_space`]. A PostgreSQL database counts with its size, more
    /// than its dump takes. Also makes the checks of [`Data::check`].
    pub async fn check_space(
        &self,
        dir: &Path,
        restore: bool,
        log: &JobLog,
    ) -> Result<(), SnapshotError> {
        let mut dumps = 0;
        for db in &self.postgres {
            dumps += check_postgres(db, log).await?.size;
        }
        check_space(dir, &self.sqlite, &self.files, dumps, restore)
    }

    /// Takes a snapshot into `dir` (new): PostgreSQL dumps, then the SQLite
    /// copies and file trees, then `snapshot.json`, last, which makes it
    /// complete. On an error the directory is removed again.
    pub async fn snapshot(
        &self,
        dir: &Path,
        id: &str,
        service: &str,
        base: &Path,
        log: &JobLog,
    ) -> Result<Snapshot, SnapshotError> {
        begin(dir, &self.sqlite, &self.files)?;
        let made = async {
            let mut names = Names::new();
            let mut dumps = Vec::with_capacity(self.postgres.len());
            for db in &self.postgres {
                let dump = names.take_postgres(db);
                dumps.push(snapshot_pg(db, dir, dump, log).await?);
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
