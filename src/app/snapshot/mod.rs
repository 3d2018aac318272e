//! Snapshots of a service's data before an app deploy, and their restore
//! when the deploy fails.
//!
//! A snapshot is a directory `<service dir>/snapshots/<id>/` holding a copy
//! of each SQLite database, made with SQLite's online backup API in one step
//! (a consistent point-in-time copy while the service keeps writing; a live
//! database is never copied with `cp`), a copy of each declared file tree,
//! a `pg_dump` of each PostgreSQL database, and `snapshot.json`, written
//! last, which describes them: a directory without it is an incomplete
//! snapshot. Everything here runs on the host as the service's own user.
//!
//! `data.rs` is the one interface the transaction uses (check, room,
//! snapshot, restore) over the kinds, each in its own file: `sqlite.rs`
//! copies a database, `files.rs` a file tree, `postgres.rs` dumps and
//! restores a PostgreSQL database. This file holds the types, the error,
//! `snapshot.json` and the helpers the parts share; `restore.rs` puts
//! SQLite databases and file trees back, `prune.rs` lists and prunes a
//! service's snapshots, `space.rs` checks for room first, and `bench.rs` is
//! the benchmark of the SQLite copy.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[cfg(test)]
mod bench;
mod data;
mod files;
mod postgres;
mod prune;
mod restore;
mod space;
mod sqlite;

pub use data::restore;
pub use postgres::PgSnapshot;
pub use prune::{list, prune};

use postgres::check_postgres;
use space::check_space;
use sqlite::check_sqlite;

use files::snapshot_files;
use sqlite::snapshot_db;

/// The file describing a snapshot; written last, so its presence marks a
/// complete one.
const MANIFEST: &str = "snapshot.json";
const MANIFEST_TMP: &str = "snapshot.json.tmp";
/// The files SQLite keeps beside a database, named by suffix.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];
/// Read size for hashing and copying.
const CHUNK: usize = 1 << 20;

/// One database in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbSnapshot {
    /// The live database, absolute path.
    pub path: PathBuf,
    /// The copy's file name inside the snapshot directory (e.g.
    /// "data__app.db" made from the db's path relative to the service dir;
    /// unique within the set).
    pub file: String,
    /// False when the database did not exist yet (a first deploy):
    /// restoring then removes whatever the failed version created.
    pub existed: bool,
    pub size: u64,
    /// Lowercase hex of the copy's sha256 (empty when it did not exist).
    pub sha256: String,
    pub user_version: i64,
    /// The live database was in WAL mode. The copy itself is kept in
    /// rollback-journal mode, one self-contained file; a restore puts WAL
    /// mode back.
    #[serde(default)]
    pub wal: bool,
    /// The live database's permission bits, used on restore when the
    /// database is gone by then.
    #[serde(default)]
    pub mode: u32,
}

/// A copied file tree (declared `data.files`): path absolute, copy dir name
/// inside the snapshot. A symbolic link is copied as a link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesSnapshot {
    pub path: PathBuf,
    pub copy: String,
    pub existed: bool,
    /// Bytes of the regular files in the copy.
    pub bytes: u64,
}

/// A snapshot set: the directory `<service dir>/snapshots/<id>/` with
/// `snapshot.json` describing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The deploy id (or a new id for a manual/backup snapshot).
    pub id: String,
    pub service: String,
    /// Unix seconds.
    pub created: i64,
    pub databases: Vec<DbSnapshot>,
    pub files: Vec<FilesSnapshot>,
    /// Dumps of PostgreSQL databases (none in snapshots made before berth
    /// snapshot PostgreSQL).
    #[serde(default)]
    pub postgres: Vec<PgSnapshot>,
    /// Whether every copy was verified (quick_check ok, fsynced).
    pub complete: bool,
}

impl Snapshot {
    /// `1 SQLite database(s) (1.2 MiB), 1 PostgreSQL database(s) (dump
    /// 3.4 MiB), 2 file tree(s)`: the kinds it holds, one line.
    pub fn summary(&self) -> String {
        let sqlite: u64 = self.databases.iter().map(|d| d.size).sum();
        let dumps: u64 = self.postgres.iter().map(|p| p.bytes).sum();
        let mut parts = vec![format!(
            "{} SQLite database(s) ({})",
            self.databases.len(),
            mib(sqlite)
        )];
        if !self.postgres.is_empty() {
            parts.push(format!(
                "{} PostgreSQL database(s) (dump {})",
                self.postgres.len(),
                mib(dumps)
            ));
        }
        parts.push(format!("{} file tree(s)", self.files.len()));
        parts.join(", ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error("{} is not an SQLite database", .0.display())]
    NotSqlite(PathBuf),
    #[error("{} and {} overlap: each path can be snapshotted once", .0.display(), .1.display())]
    Overlap(PathBuf, PathBuf),
    #[error("could not {what} {}", .path.display())]
    Sqlite {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{} stayed locked: the backup could not read it", .0.display())]
    Busy(PathBuf),
    #[error("the copy of {} failed SQLite's quick_check: {report}", .path.display())]
    CheckFailed { path: PathBuf, report: String },
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
    #[error("{} holds no complete snapshot (no {MANIFEST})", .0.display())]
    Incomplete(PathBuf),
    #[error("{} is not a snapshot description", .path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the snapshot copy {} is damaged: {why}; nothing was restored", .copy.display())]
    Damaged { copy: PathBuf, why: String },
    #[error("`{0}` cannot name a failed state: use letters, digits, `.`, `_` and `-`")]
    BadTag(String),
    #[error("{} already exists: restoring would overwrite the failed state kept there", .0.display())]
    FailedExists(PathBuf),
    #[error(
        "not enough free space on {} (the filesystem mounted at {}): {what} need {}, {} is free",
        .path.display(), .mount.display(), mib(*.needed), mib(*.free)
    )]
    NoSpace {
        path: PathBuf,
        mount: PathBuf,
        what: &'static str,
        needed: u64,
        free: u64,
    },
    #[error("could not reach the PostgreSQL database {db}: {detail}")]
    PgUnreachable { db: String, detail: String },
    #[error(
        "the PostgreSQL database {db} holds objects its service's role {role} does not own: {objects}"
    )]
    PgForeign {
        db: String,
        role: String,
        objects: String,
    },
    #[error("could not {what} (PostgreSQL database {db})")]
    Postgres { db: String, what: String },
    #[error("could not give {} the owner {uid}:{gid} of the file it replaces", .path.display())]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
}

impl crate::error::Diagnose for SnapshotError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: false,
        }
    }
}

impl SnapshotError {
    pub fn hint(&self) -> Option<String> {
        match self {
            SnapshotError::NotSqlite(_) => Some(
                "declare it as a file tree (`data.files`), not as an SQLite database".into(),
            ),
            SnapshotError::Overlap(..) => Some(
                "declare each database and file tree once, and no database inside a file tree: copying a tree would copy a live database torn".into(),
            ),
            SnapshotError::Busy(_) => Some(
                "a process holds a write lock on it for long (a long transaction in rollback-journal mode?); retry, or put the database in WAL mode".into(),
            ),
            SnapshotError::CheckFailed { path, .. } => Some(format!(
                "the live database may be damaged: check it with `sqlite3 {} 'PRAGMA integrity_check'`",
                path.display()
            )),
            SnapshotError::Exists(_) => {
                Some("a snapshot with this id exists: use a new id or remove it".into())
            }
            SnapshotError::Incomplete(_) => {
                Some("it was interrupted while being made and cannot be restored".into())
            }
            SnapshotError::Damaged { .. } => {
                Some("restore an older snapshot of the service instead".into())
            }
            SnapshotError::FailedExists(_) => {
                Some("move it away, or restore with another tag".into())
            }
            SnapshotError::PgUnreachable { db, .. } => Some(format!(
                "the agent connects as the service's user over PostgreSQL's local socket \
                 (peer authentication): check PostgreSQL runs, the database {db} exists and \
                 the user has a role of its name (services.postgresql.ensureUsers); \
                 nothing was stopped or changed"
            )),
            SnapshotError::PgForeign { role, .. } => Some(format!(
                "a restore puts back what {role} owns: give those objects to {role} \
                 (ALTER TABLE … OWNER TO {role}), or leave the database out of data.postgres; \
                 nothing was stopped or changed"
            )),
            SnapshotError::Owner { .. } => {
                Some("restore as the service's user, who owns its data".into())
            }
            SnapshotError::NoSpace { mount, .. } => Some(format!(
                "free space on {} (old snapshots, kept `.failed-` files), or lower keepSnapshots; nothing was stopped or changed",
                mount.display()
            )),
            _ => None,
        }
    }
}

/// `1.5 MiB`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// Snapshots `dbs` (absolute paths) and `files` (absolute paths) into `dir`
/// (`snapshots/<id>`, created here, mode 0700), writing `snapshot.json` last
/// (atomically: temp file + fsync + rename) so a directory without it is an
/// incomplete snapshot. `base` is the service directory: file names inside
/// the snapshot are made from paths relative to it. On an error the
/// directory is removed again.
pub fn create(
    dir: &Path,
    id: &str,
    service: &str,
    base: &Path,
    dbs: &[PathBuf],
    files: &[PathBuf],
) -> Result<Snapshot, SnapshotError> {
    begin(dir, dbs, files)?;
    let mut names = Names::new();
    let made = fill(dir, id, service, base, dbs, files, Vec::new(), &mut names);
    abandon_if_failed(dir, made)
}

/// Checks the declared paths and makes the snapshot's directory `dir`
/// (mode 0700); [`fill`] then copies into it.
pub(super) fn begin(dir: &Path, dbs: &[PathBuf], files: &[PathBuf]) -> Result<(), SnapshotError> {
    if let Some(path) = dbs.iter().chain(files).find(|p| !p.is_absolute()) {
        return Err(SnapshotError::NotAbsolute(path.clone()));
    }
    let all: Vec<&PathBuf> = dbs.iter().chain(files).collect();
    for (i, a) in all.iter().enumerate() {
        if let Some(b) = all[i + 1..]
            .iter()
            .find(|b| a.starts_with(b) || b.starts_with(a))
        {
            return Err(SnapshotError::Overlap(a.to_path_buf(), b.to_path_buf()));
        }
    }
    // A tree holding the snapshot would be copied into itself.
    if let Some(tree) = files
        .iter()
        .find(|f| dir.starts_with(f) || f.starts_with(dir))
    {
        return Err(SnapshotError::Overlap(dir.to_owned(), tree.clone()));
    }
    for db in dbs {
        if !check_sqlite(db)? {
            return Err(SnapshotError::NotSqlite(db.clone()));
        }
    }
    let parent = parent_dir(dir);
    fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SnapshotError::Exists(dir.to_owned()))
        }
        Err(e) => return Err(io_err(format!("create {}", dir.display()))(e)),
    }
    // The umask may have taken bits off; it must be exactly 0700.
    fs::set_permissions(dir, Permissions::from_mode(0o700))
        .map_err(io_err(format!("set the mode of {}", dir.display())))
}

/// Removes the directory of a snapshot that failed to be made.
pub(super) fn abandon_if_failed<T>(
    dir: &Path,
    made: Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    if made.is_err() {
        if let Err(e) = remove_any(dir) {
            tracing::warn!(
                "could not remove the incomplete snapshot {}: {e}",
                dir.display()
            );
        }
    }
    made
}

/// Copies the SQLite databases and file trees into `dir` and writes
/// `snapshot.json`, with `postgres` (dumped into `dir` already).
#[allow(clippy::too_many_arguments)]
pub(super) fn fill(
    dir: &Path,
    id: &str,
    service: &str,
    base: &Path,
    dbs: &[PathBuf],
    files: &[PathBuf],
    postgres: Vec<PgSnapshot>,
    names: &mut Names,
) -> Result<Snapshot, SnapshotError> {
    let mut databases = Vec::with_capacity(dbs.len());
    for db in dbs {
        let file = names.take(base, db);
        databases.push(snapshot_db(db, dir, file)?);
    }
    let mut trees = Vec::with_capacity(files.len());
    for path in files {
        let copy = names.take(base, path);
        trees.push(snapshot_files(path, dir, copy)?);
    }
    let snapshot = Snapshot {
        id: id.to_owned(),
        service: service.to_owned(),
        created: unix_now(),
        databases,
        files: trees,
        postgres,
        complete: true,
    };
    write_manifest(dir, &snapshot)?;
    sync_dir(parent_dir(dir))?;
    Ok(snapshot)
}

/// Names of copies inside a snapshot: unique, also counting the files
/// SQLite keeps beside a copy (a copy named `x-wal` beside one named `x`
/// would be taken for its write-ahead log).
pub(super) struct Names {
    taken: HashSet<String>,
}

impl Names {
    pub(super) fn new() -> Names {
        Names {
            taken: [MANIFEST, MANIFEST_TMP].map(String::from).into(),
        }
    }

    pub(super) fn take(&mut self, base: &Path, path: &Path) -> String {
        let rel = path.strip_prefix(base).unwrap_or(path);
        let parts: Vec<_> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part.to_string_lossy()),
                _ => None,
            })
            .collect();
        let stem = if parts.is_empty() {
            "data".to_owned()
        } else {
            parts.join("__")
        };
        self.unique(stem)
    }

    /// The name of a PostgreSQL database's dump: `postgres.<name>`, with
    /// anything but letters, digits, `.`, `_` and `-` as `_`.
    pub(super) fn take_postgres(&mut self, db: &str) -> String {
        let safe: String = db
            .chars()
            .map(
                |c| match c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    true => c,
                    false => '_',
                },
            )
            .collect();
        self.unique(format!("postgres.{safe}"))
    }

    fn unique(&mut self, stem: String) -> String {
        let mut name = stem.clone();
        let mut n = 1;
        while self.clashes(&name) {
            n += 1;
            name = format!("{stem}.{n}");
        }
        self.taken.insert(name.clone());
        name
    }

    fn clashes(&self, name: &str) -> bool {
        self.taken.iter().any(|t| {
            t == name
                || SIDECARS.iter().any(|s| {
                    name.strip_suffix(s) == Some(t.as_str()) || t.strip_suffix(s) == Some(name)
                })
        })
    }
}

/// Reads `dir/snapshot.json`.
pub fn read(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let path = dir.join(MANIFEST);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SnapshotError::Incomplete(dir.to_owned()))
        }
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    serde_json::from_slice(&text).map_err(|source| SnapshotError::Manifest { path, source })
}

fn write_manifest(dir: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let tmp = dir.join(MANIFEST_TMP);
    let path = dir.join(MANIFEST);
    let mut json = serde_json::to_vec_pretty(snapshot).expect("a snapshot serializes");
    json.push(b'\n');
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .map_err(io_err(format!("write {}", tmp.display())))?;
    rename(&tmp, &path)?;
    sync_dir(dir)
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

fn sql_err(what: &'static str, path: &Path) -> impl FnOnce(rusqlite::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Sqlite { what, path, source }
}

fn rename(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    fs::rename(from, to).map_err(io_err(format!(
        "rename {} to {}",
        from.display(),
        to.display()
    )))
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Whether anything, even a dangling symbolic link, is at `path`.
fn exists(path: &Path) -> Result<bool, SnapshotError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// Removes a file or a whole tree, also one with read-only directories;
/// nothing there is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path)?;
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

fn make_writable(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::set_permissions(path, Permissions::from_mode(meta.mode() & 0o7777 | 0o700))?;
        for item in fs::read_dir(path)? {
            make_writable(&item?.path())?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync {}", dir.display())))
}

/// Size and lowercase hex sha256 of a file, read in chunks.
fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    copy_hashing(&mut File::open(path)?, &mut io::sink())
}

/// Copies `from` to `to` and returns the bytes and their sha256.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
    }
    to.flush()?;
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    use rusqlite::{Connection, OpenFlags};

    /// A service directory with a WAL database `data/app.db` holding
    /// `rows` rows, user_version 7.
    pub(super) fn service(rows: i64, payload: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("svc");
        let db = base.join("data/app.db");
        fs::create_dir_all(db.parent().unwrap()).unwrap();
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA user_version = 7;
             CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             CREATE TABLE meta(n INTEGER NOT NULL);
             BEGIN;
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {rows})
               INSERT INTO t(payload) SELECT randomblob({payload}) FROM c;
             INSERT INTO meta VALUES ({rows});
             COMMIT;"
        ))
        .unwrap();
        (tmp, base, db)
    }

    /// A service writing: one row per commit, with a counter updated in the
    /// same transaction, until `stop`.
    pub(super) struct Writer {
        stop: Arc<AtomicBool>,
        committed: Arc<AtomicI64>,
        thread: thread::JoinHandle<()>,
    }

    impl Writer {
        pub(super) fn start(db: &Path) -> Writer {
            let stop = Arc::new(AtomicBool::new(false));
            let committed = Arc::new(AtomicI64::new(0));
            let conn = Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
            let thread = {
                let (stop, committed) = (stop.clone(), committed.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        conn.execute_batch(
                            "BEGIN IMMEDIATE;
                             INSERT INTO t(payload) VALUES (randomblob(200));
                             UPDATE meta SET n = n + 1;
                             COMMIT;",
                        )
                        .unwrap();
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                })
            };
            Writer {
                stop,
                committed,
                thread,
            }
        }

        pub(super) fn committed(&self) -> i64 {
            self.committed.load(Ordering::Relaxed)
        }

        pub(super) fn wait_for(&self, n: i64) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.committed() < n {
                assert!(Instant::now() < deadline, "the writer is stuck");
                thread::sleep(Duration::from_millis(1));
            }
        }

        pub(super) fn stop(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().unwrap();
        }
    }

    /// Rows of `t` (count, max id, the counter) and a digest of all rows.
    pub(super) fn contents(db: &Path) -> (i64, i64, i64, String) {
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let (count, max): (i64, i64) = conn
            .query_row("SELECT count(*), coalesce(max(id), 0) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let n: i64 = conn
            .query_row("SELECT n FROM meta", [], |r| r.get(0))
            .unwrap();
        let mut hasher = Sha256::new();
        let mut stmt = conn
            .prepare("SELECT id, payload FROM t ORDER BY id")
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            hasher.update(row.get::<_, i64>(0).unwrap().to_le_bytes());
            hasher.update(row.get::<_, Vec<u8>>(1).unwrap());
        }
        (count, max, n, format!("{:x}", hasher.finalize()))
    }

    pub(super) fn journal_mode(db: &Path) -> String {
        let conn = Connection::open(db).unwrap();
        conn.pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap()
    }

    pub(super) fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn create_refuses_overlapping_paths() {
        let base = PathBuf::from("/srv/app");
        let dir = base.join("snapshots/x");
        let cases = [
            (vec!["/srv/app/data/app.db"], vec!["/srv/app/data"]),
            (vec!["/srv/app/a.db", "/srv/app/a.db"], vec![]),
            (vec![], vec!["/srv/app/uploads", "/srv/app/uploads/big"]),
            (vec![], vec!["/srv/app"]),
        ];
        for (dbs, files) in cases {
            let dbs: Vec<_> = dbs.into_iter().map(PathBuf::from).collect();
            let files: Vec<_> = files.into_iter().map(PathBuf::from).collect();
            let err = create(&dir, "x", "app", &base, &dbs, &files).unwrap_err();
            assert!(matches!(err, SnapshotError::Overlap(..)), "{err}");
        }
        assert!(!dir.exists());
    }

    #[test]
    fn a_snapshot_says_what_it_holds_and_old_ones_read_without_postgres() {
        let old = r#"{"id": "d1", "service": "app", "created": 1, "databases": [],
            "files": [], "complete": true}"#;
        let mut snap: Snapshot = serde_json::from_str(old).unwrap();
        assert!(snap.postgres.is_empty());
        assert_eq!(
            snap.summary(),
            "0 SQLite database(s) (0.0 MiB), 0 file tree(s)"
        );
        snap.postgres.push(PgSnapshot {
            name: "notes".into(),
            dump: "postgres.notes".into(),
            role: "notes".into(),
            bytes: 3 << 20,
            size: 9 << 20,
        });
        assert_eq!(
            snap.summary(),
            "0 SQLite database(s) (0.0 MiB), 1 PostgreSQL database(s) (dump 3.0 MiB), 0 file tree(s)"
        );
        let mut names = Names::new();
        assert_eq!(names.take_postgres("notes"), "postgres.notes");
        assert_eq!(names.take_postgres("a b/c"), "postgres.a_b_c");
        assert_eq!(names.take_postgres("a_b_c"), "postgres.a_b_c.2");
    }

    #[test]
    fn names_are_unique_counting_sqlite_files() {
        let base = Path::new("/srv/app");
        let mut names = Names::new();
        let mut take = |p: &str| names.take(base, Path::new(p));
        assert_eq!(take("/srv/app/data/app.db"), "data__app.db");
        assert_eq!(take("/srv/app/data__app.db"), "data__app.db.2");
        assert_eq!(take("/srv/app/data/app.db-wal"), "data__app.db-wal.2");
        assert_eq!(take("/var/lib/other.db"), "var__lib__other.db");
        assert_eq!(take("/srv/app"), "data");
        assert_eq!(take("/srv/app/snapshot.json"), "snapshot.json.2");
    }
}
