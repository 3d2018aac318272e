//! Snapshots of a service's data before an app deploy, and their restore
//! when the deploy fails.
//!
//! A snapshot is a directory `<service dir>/snapshots/<id>/` holding a copy
//! of each SQLite database, made with SQLite's online backup API in one step
//! (a consistent point-in-time copy while the service keeps writing; a live
//! database is never copied with `cp`), a copy of each declared file tree,
//! and `snapshot.json`, written last, which describes them: a directory
//! without it is an incomplete snapshot. Everything here runs on the host as
//! the service's own user.

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file describing a snapshot; written last, so its presence marks a
/// complete one.
const MANIFEST: &str = "snapshot.json";
const MANIFEST_TMP: &str = "snapshot.json.tmp";
/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// The files SQLite keeps beside a database, named by suffix.
const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];
/// How long the backup waits for a lock on the live database (a writer in
/// rollback-journal mode holds one while it commits).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Further attempts when the backup still finds the database busy or locked.
const BUSY_RETRIES: u32 = 3;
const BUSY_PAUSE: Duration = Duration::from_millis(200);
/// An incomplete snapshot younger than this may still be in the making.
const INCOMPLETE_GRACE: Duration = Duration::from_secs(3600);
/// How often, and from how many new bytes on, a copy in the making is
/// written to disk (see `write_behind`).
const WRITE_BEHIND_EVERY: Duration = Duration::from_millis(50);
const WRITE_BEHIND_CHUNK: u64 = 16 << 20;
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
    /// Whether every copy was verified (quick_check ok, fsynced).
    pub complete: bool,
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

/// What a filesystem keeps free for the state database's writes and the
/// copies' journal switch, beyond the copies themselves.
const HEADROOM: u64 = 1 << 20;

/// Checks, before a snapshot into `dir` is taken, that every filesystem
/// involved has room for it: its copies where the snapshot goes (an
/// estimate: each database's file and `-wal`, each tree's bytes) and, with
/// `restore`, the same again beside the live data, where an undo stages
/// them while the failed data is still there; plus [`HEADROOM`] on each.
/// A deploy checks this before it stops the service, so a full disk
/// refuses it with the service untouched instead of failing half way.
pub fn check_space(
    dir: &Path,
    dbs: &[PathBuf],
    files: &[PathBuf],
    restore: bool,
) -> Result<(), SnapshotError> {
    let mut sizes = Vec::new();
    for db in dbs {
        let size = file_size(db)? + file_size(&with_suffix(db, "-wal"))?;
        sizes.push((db.as_path(), size));
    }
    for tree in files {
        let size = match exists(tree)? {
            true => tree_bytes(tree)?,
            false => 0,
        };
        sizes.push((tree.as_path(), size));
    }
    if sizes.is_empty() {
        return Ok(());
    }
    // Bytes needed per filesystem (by device), with a path on it.
    let mut needs: Vec<(u64, PathBuf, u64)> = Vec::new();
    let mut need = |path: &Path, bytes: u64| -> Result<(), SnapshotError> {
        let on = existing_ancestor(path);
        let dev = fs::metadata(&on)
            .map_err(io_err(format!("read {}", on.display())))?
            .dev();
        match needs.iter_mut().find(|(d, ..)| *d == dev) {
            Some((_, _, n)) => *n += bytes,
            None => needs.push((dev, on, bytes)),
        }
        Ok(())
    };
    let total: u64 = sizes.iter().map(|(_, size)| size).sum();
    need(dir, total)?;
    if restore {
        for (path, size) in &sizes {
            need(path, *size)?;
        }
    }
    for (_, path, bytes) in needs {
        let needed = bytes + HEADROOM;
        let free = free_bytes(&path)?;
        if free < needed {
            return Err(SnapshotError::NoSpace {
                mount: mount_point(&path),
                path,
                what: if restore {
                    "a snapshot of the data and a restore of it"
                } else {
                    "a snapshot of the data"
                },
                needed,
                free,
            });
        }
    }
    Ok(())
}

fn file_size(path: &Path) -> Result<u64, SnapshotError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// `path`, or its nearest ancestor that exists (a snapshot's directory is
/// made only when it is taken).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_owned()
}

/// The top of the filesystem `path` is on: its highest ancestor on the
/// same device.
fn mount_point(path: &Path) -> PathBuf {
    let dev = |p: &Path| fs::metadata(p).ok().map(|m| m.dev());
    let own = dev(path);
    let mut top = path.to_owned();
    for p in path.ancestors().skip(1) {
        if dev(p) != own {
            break;
        }
        top = p.to_owned();
    }
    top
}

/// The bytes an unprivileged user may still write on `path`'s filesystem.
fn free_bytes(path: &Path) -> Result<u64, SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let what = || format!("read the free space of {}", path.display());
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io_err(what())(io::Error::other(e)))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `st` is written by statvfs before
    // it is read, only when it returns 0.
    let st = unsafe {
        if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(io_err(what())(io::Error::last_os_error()));
        }
        st.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // u32 or u64, by platform
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

fn sql_err(what: &'static str, path: &Path) -> impl FnOnce(rusqlite::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Sqlite { what, path, source }
}

/// Is `path` an SQLite database? Ok(false) if it exists and its first 16
/// bytes are not "SQLite format 3\0"; Ok(true) if it is one OR does not
/// exist yet (a service's first deploy), and for an empty file, which SQLite
/// opens as an empty database; Err on an unreadable path.
pub fn check_sqlite(path: &Path) -> Result<bool, SnapshotError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
    };
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    file.take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut head)
        .map_err(io_err(format!("read {}", path.display())))?;
    Ok(head.is_empty() || head == SQLITE_HEADER)
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
    let made = fill(dir, id, service, base, dbs, files);
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

fn fill(
    dir: &Path,
    id: &str,
    service: &str,
    base: &Path,
    dbs: &[PathBuf],
    files: &[PathBuf],
) -> Result<Snapshot, SnapshotError> {
    // The umask may have taken bits off; it must be exactly 0700.
    fs::set_permissions(dir, Permissions::from_mode(0o700))
        .map_err(io_err(format!("set the mode of {}", dir.display())))?;
    let mut names = Names::new();
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
        complete: true,
    };
    write_manifest(dir, &snapshot)?;
    sync_dir(parent_dir(dir))?;
    Ok(snapshot)
}

/// Names of copies inside a snapshot: unique, also counting the files
/// SQLite keeps beside a copy (a copy named `x-wal` beside one named `x`
/// would be taken for its write-ahead log).
struct Names {
    taken: HashSet<String>,
}

impl Names {
    fn new() -> Names {
        Names {
            taken: [MANIFEST, MANIFEST_TMP].map(String::from).into(),
        }
    }

    fn take(&mut self, base: &Path, path: &Path) -> String {
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

fn snapshot_db(path: &Path, dir: &Path, file: String) -> Result<DbSnapshot, SnapshotError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(DbSnapshot {
                path: path.to_owned(),
                file,
                existed: false,
                size: 0,
                sha256: String::new(),
                user_version: 0,
                wal: false,
                mode: 0,
            })
        }
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let copy = dir.join(&file);
    backup(path, &copy)?;
    let wal = is_wal(&copy)?;
    let (user_version, size, sha256) = verify_copy(path, &copy)?;
    Ok(DbSnapshot {
        path: path.to_owned(),
        file,
        existed: true,
        size,
        sha256,
        user_version,
        wal,
        mode: meta.mode() & 0o7777,
    })
}

/// Copies the live database `path` to the new file `copy` with SQLite's
/// online backup API.
fn backup(path: &Path, copy: &Path) -> Result<(), SnapshotError> {
    // Read-write without create, but query_only: the backup only reads.
    // Not SQLITE_OPEN_READ_ONLY: on a WAL database whose service is stopped
    // such a connection creates `-wal` and `-shm` files and cannot remove
    // them again, while this one, closing last, cleans up as the service
    // would. (SQLite opens a file it may not write read-only by itself.)
    let src = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err("open", path))?;
    src.busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| src.pragma_update(None, "query_only", true))
        .map_err(sql_err("set up a connection to", path))?;
    let mut dst = Connection::open_with_flags(
        copy,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err("create", copy))?;
    // No journal and no syncs while the copy is written: it is checked and
    // fsynced afterwards, and a crash before that leaves an incomplete
    // snapshot, never a used one.
    dst.pragma_update_and_check(None, "journal_mode", "OFF", |r| r.get::<_, String>(0))
        .map_err(sql_err("set up", copy))?;
    dst.pragma_update(None, "synchronous", "OFF")
        .map_err(sql_err("set up", copy))?;
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let flusher = s.spawn(|| write_behind(copy, &done));
        let backed_up = backup_whole(&src, &mut dst, path);
        done.store(true, Ordering::Relaxed);
        flusher.thread().unpark();
        joined(flusher);
        backed_up
    })?;
    dst.close().map_err(|(_, e)| sql_err("write", copy)(e))?;
    src.close().map_err(|(_, e)| sql_err("close", path)(e))
}

/// Has the kernel write the copy to disk while the backup makes it, a chunk
/// at a time, until `done`.
///
/// Only to spread the I/O: left to the final fsync, a GiB of dirty pages
/// goes out in one burst, and on ext4 the service's own fsyncs (at each WAL
/// checkpoint) wait behind it, stalling its commits for as long. Errors are
/// left to that fsync, which still runs.
fn write_behind(copy: &Path, done: &AtomicBool) {
    let Ok(file) = File::open(copy) else {
        return;
    };
    let mut flushed = 0;
    while !done.load(Ordering::Relaxed) {
        thread::park_timeout(WRITE_BEHIND_EVERY);
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return;
        };
        if len >= flushed + WRITE_BEHIND_CHUNK {
            write_out(&file, flushed, len - flushed);
            flushed = len;
        }
    }
}

/// Writes a file's range to disk and waits for it, without its metadata.
#[cfg(target_os = "linux")]
fn write_out(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain system call on an open descriptor.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags);
    }
}

#[cfg(not(target_os = "linux"))]
fn write_out(_file: &File, _offset: u64, _len: u64) {}

/// Runs SQLite's online backup from `src` to `dst` in one step of all pages.
///
/// One step reads every page within one read transaction, so the copy is
/// one point in time and, in WAL mode, the service's writers go on
/// committing meanwhile. A backup stepped a few pages at a time restarts
/// whenever another connection writes, and may never finish under a busy
/// service.
fn backup_whole(src: &Connection, dst: &mut Connection, path: &Path) -> Result<(), SnapshotError> {
    use rusqlite::backup::{Backup, StepResult};
    let backup = Backup::new(src, dst).map_err(sql_err("start a backup of", path))?;
    let mut retries = 0;
    loop {
        match backup.step(-1).map_err(sql_err("back up", path))? {
            StepResult::Done => return Ok(()),
            // Not expected with -1 (all pages); step again.
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked if retries < BUSY_RETRIES => {
                retries += 1;
                thread::sleep(BUSY_PAUSE);
            }
            _ => return Err(SnapshotError::Busy(path.to_owned())),
        }
    }
}

/// Whether a database file's header says WAL mode (file format 2). An
/// empty database has no header yet.
fn is_wal(path: &Path) -> Result<bool, SnapshotError> {
    let mut head = Vec::with_capacity(20);
    File::open(path)
        .and_then(|f| f.take(20).read_to_end(&mut head))
        .map_err(io_err(format!("read {}", path.display())))?;
    Ok(head.get(18..20) == Some(&[2, 2]))
}

/// Makes the fresh copy one self-contained file, checks it, syncs it, and
/// returns its user_version, size and sha256. `path` is the live database,
/// for messages.
fn verify_copy(path: &Path, copy: &Path) -> Result<(i64, u64, String), SnapshotError> {
    let conn = Connection::open_with_flags(
        copy,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql_err("open", copy))?;
    // The backup copied the live header, so a WAL database's copy would
    // open in WAL mode and grow -wal and -shm files. No sync here: the
    // whole file is synced below, beside the checks.
    let mode: String = conn
        .pragma_update(None, "synchronous", "OFF")
        .and_then(|()| conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0)))
        .map_err(sql_err("leave WAL mode in", copy))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(SnapshotError::CheckFailed {
            path: path.to_owned(),
            report: format!("its journal mode stayed {mode}"),
        });
    }
    let file = File::open(copy).map_err(io_err(format!("open {}", copy.display())))?;
    file.set_permissions(Permissions::from_mode(0o600))
        .map_err(io_err(format!("set the mode of {}", copy.display())))?;
    // From here the file no longer changes: SQLite checks it while it is
    // hashed and written to disk, so the total is about the longest of the
    // three rather than their sum.
    let (checked, hashed, synced) = thread::scope(|s| {
        let hashing = s.spawn(|| hash_file(copy));
        let syncing = s.spawn(|| file.sync_all());
        let checked = quick_check(&conn, path, copy).and_then(|()| {
            conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
                .map_err(sql_err("read the user_version of", copy))
        });
        (checked, joined(hashing), joined(syncing))
    });
    let user_version = checked?;
    let (size, sha256) = hashed.map_err(io_err(format!("read {}", copy.display())))?;
    synced.map_err(io_err(format!("sync {}", copy.display())))?;
    conn.close().map_err(|(_, e)| sql_err("close", copy)(e))?;
    for suffix in SIDECARS {
        let side = with_suffix(copy, suffix);
        if exists(&side)? {
            return Err(SnapshotError::CheckFailed {
                path: path.to_owned(),
                report: format!("{} was left beside the copy", side.display()),
            });
        }
    }
    sync_dir(parent_dir(copy))?;
    Ok((user_version, size, sha256))
}

/// A scoped thread's result; its panic goes on in this thread.
fn joined<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn quick_check(conn: &Connection, path: &Path, copy: &Path) -> Result<(), SnapshotError> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(sql_err("check", copy))?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sql_err("check", copy))?;
    if lines == ["ok"] {
        return Ok(());
    }
    let mut report = lines.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    if lines.len() > 5 {
        report.push_str(&format!("; and {} more", lines.len() - 5));
    }
    Err(SnapshotError::CheckFailed {
        path: path.to_owned(),
        report,
    })
}

fn snapshot_files(path: &Path, dir: &Path, copy: String) -> Result<FilesSnapshot, SnapshotError> {
    if !exists(path)? {
        return Ok(FilesSnapshot {
            path: path.to_owned(),
            copy,
            existed: false,
            bytes: 0,
        });
    }
    let bytes = copy_tree(path, &dir.join(&copy))?;
    Ok(FilesSnapshot {
        path: path.to_owned(),
        copy,
        existed: true,
        bytes,
    })
}

/// Copies a file, a directory tree or a symbolic link from `src` to the new
/// path `dst`, keeping permission bits and file times, syncing what it
/// writes. Returns the bytes of regular files copied. Sockets, pipes and
/// devices are left out.
fn copy_tree(src: &Path, dst: &Path) -> Result<u64, SnapshotError> {
    let meta = fs::symlink_metadata(src).map_err(io_err(format!("read {}", src.display())))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .map_err(io_err(format!("create {}", dst.display())))?;
        let mut entries = fs::read_dir(src)
            .and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
            .map_err(io_err(format!("list {}", src.display())))?;
        entries.sort_by_key(|e| e.file_name());
        let mut bytes = 0;
        for entry in entries {
            bytes += copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        // Last, as it may take away our own write permission.
        fs::set_permissions(dst, Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err(format!("set the mode of {}", dst.display())))?;
        sync_dir(dst)?;
        Ok(bytes)
    } else if kind.is_file() {
        let mut from = File::open(src).map_err(io_err(format!("open {}", src.display())))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dst)
            .map_err(io_err(format!("create {}", dst.display())))?;
        let bytes = io::copy(&mut from, &mut to).map_err(io_err(format!(
            "copy {} to {}",
            src.display(),
            dst.display()
        )))?;
        let times = FileTimes::new()
            .set_accessed(meta.accessed().unwrap_or(SystemTime::now()))
            .set_modified(meta.modified().unwrap_or(SystemTime::now()));
        to.set_permissions(Permissions::from_mode(meta.mode() & 0o7777))
            .and_then(|()| to.set_times(times))
            .and_then(|()| to.sync_all())
            .map_err(io_err(format!("write {}", dst.display())))?;
        Ok(bytes)
    } else if kind.is_symlink() {
        fs::read_link(src)
            .and_then(|target| std::os::unix::fs::symlink(target, dst))
            .map_err(io_err(format!("copy the link {}", src.display())))?;
        Ok(0)
    } else {
        tracing::warn!(
            "left {} out of the snapshot: not a file, directory or symbolic link",
            src.display()
        );
        Ok(0)
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

/// Every complete snapshot under `snapshots_dir`, newest first (by
/// `created`, then id). A missing `snapshots_dir` holds none.
pub fn list(snapshots_dir: &Path) -> Result<Vec<Snapshot>, SnapshotError> {
    let mut snapshots: Vec<Snapshot> = scan(snapshots_dir)?
        .into_iter()
        .filter_map(|entry| entry.snapshot)
        .collect();
    snapshots.sort_by(newest_first);
    Ok(snapshots)
}

fn newest_first(a: &Snapshot, b: &Snapshot) -> std::cmp::Ordering {
    (b.created, &b.id).cmp(&(a.created, &a.id))
}

/// A directory under `snapshots/`, with its snapshot when it is complete.
struct Entry {
    name: String,
    path: PathBuf,
    snapshot: Option<Snapshot>,
}

fn scan(snapshots_dir: &Path) -> Result<Vec<Entry>, SnapshotError> {
    let listing = match fs::read_dir(snapshots_dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("list {}", snapshots_dir.display()))(e)),
    };
    let mut entries = Vec::new();
    for item in listing {
        let item = item.map_err(io_err(format!("list {}", snapshots_dir.display())))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        if name.starts_with('.') || !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let snapshot = match read(&path) {
            Ok(snapshot) if snapshot.complete => Some(snapshot),
            Ok(_) | Err(SnapshotError::Incomplete(_)) => None,
            Err(e @ SnapshotError::Manifest { .. }) => {
                tracing::warn!("{e}: taking it for an incomplete snapshot");
                None
            }
            Err(e) => return Err(e),
        };
        entries.push(Entry {
            name,
            path,
            snapshot,
        });
    }
    Ok(entries)
}

/// Deletes all but the `keep` newest complete snapshots and any incomplete
/// ones older than an hour, never one whose id (or directory name) is in
/// `protect`. Returns the ids removed (directory names for incomplete
/// ones).
pub fn prune(
    snapshots_dir: &Path,
    keep: usize,
    protect: &[&str],
) -> Result<Vec<String>, SnapshotError> {
    let (mut complete, incomplete): (Vec<_>, Vec<_>) = scan(snapshots_dir)?
        .into_iter()
        .partition(|e| e.snapshot.is_some());
    complete.sort_by(|a, b| match (&a.snapshot, &b.snapshot) {
        (Some(a), Some(b)) => newest_first(a, b),
        _ => std::cmp::Ordering::Equal,
    });
    let protected =
        |entry: &Entry, id: &str| protect.contains(&id) || protect.contains(&&*entry.name);
    let mut removed = Vec::new();
    for entry in complete.iter().skip(keep) {
        let id = entry.snapshot.as_ref().map_or("", |s| s.id.as_str());
        if protected(entry, id) {
            continue;
        }
        // Its description first: a removal cut short leaves an incomplete
        // snapshot, not one that looks complete and is not.
        let manifest = entry.path.join(MANIFEST);
        fs::remove_file(&manifest)
            .and_then(|()| remove_any(&entry.path))
            .map_err(io_err(format!("remove {}", entry.path.display())))?;
        removed.push(id.to_owned());
    }
    for entry in &incomplete {
        if protected(entry, &entry.name) || idle_for(&entry.path)? < INCOMPLETE_GRACE {
            continue;
        }
        remove_any(&entry.path).map_err(io_err(format!("remove {}", entry.path.display())))?;
        removed.push(entry.name.clone());
    }
    Ok(removed)
}

/// How long since anything in the snapshot directory `dir` last changed: a
/// database copy in progress keeps its file's time moving.
fn idle_for(dir: &Path) -> Result<Duration, SnapshotError> {
    let what = || format!("read {}", dir.display());
    let mut newest = fs::symlink_metadata(dir)
        .and_then(|m| m.modified())
        .map_err(io_err(what()))?;
    for item in fs::read_dir(dir).map_err(io_err(what()))? {
        let modified = item
            .and_then(|i| i.metadata())
            .and_then(|m| m.modified())
            .map_err(io_err(what()))?;
        newest = newest.max(modified);
    }
    Ok(SystemTime::now()
        .duration_since(newest)
        .unwrap_or(Duration::ZERO))
}

/// Puts the snapshot back. The caller has stopped the service. `failed_tag`
/// (e.g. the failed deploy's id) names what is kept beside: each database's
/// current file becomes `<db>.failed-<tag>`, its `-wal` and `-journal`
/// `<db>.failed-<tag>-wal` and `-journal` (so the failed state stays
/// inspectable), its `-shm` is removed; each file tree's current one becomes
/// `<path>.failed-<tag>`.
///
/// Every copy is verified (sha256 for databases, size for file trees) and
/// put in a temporary file beside its destination before anything live is
/// touched; an error until then leaves all as it was. An error while the
/// copies are moved into place leaves those before it restored.
pub fn restore(dir: &Path, failed_tag: &str) -> Result<Snapshot, SnapshotError> {
    restore_with(dir, failed_tag, false)
}

/// Finishes a restore under `failed_tag` that a dead agent began: a
/// database or tree already moved aside as `.failed-<tag>` with a copy back
/// in its place was restored, and is left as it is; the rest is restored.
pub fn resume_restore(dir: &Path, failed_tag: &str) -> Result<Snapshot, SnapshotError> {
    restore_with(dir, failed_tag, true)
}

fn restore_with(dir: &Path, failed_tag: &str, resume: bool) -> Result<Snapshot, SnapshotError> {
    check_tag(failed_tag)?;
    let mut snapshot = read(dir)?;
    if !snapshot.complete {
        return Err(SnapshotError::Incomplete(dir.to_owned()));
    }
    verify_copies(dir, &snapshot)?;
    let whole = snapshot.clone();
    if resume {
        let restored = |live: &Path| {
            let aside = with_suffix(live, &format!(".failed-{failed_tag}"));
            Ok::<_, SnapshotError>(exists(live)? && exists(&aside)?)
        };
        let mut dbs = Vec::new();
        for db in std::mem::take(&mut snapshot.databases) {
            if !restored(&db.path)? {
                dbs.push(db);
            }
        }
        snapshot.databases = dbs;
        let mut trees = Vec::new();
        for tree in std::mem::take(&mut snapshot.files) {
            if !restored(&tree.path)? {
                trees.push(tree);
            }
        }
        snapshot.files = trees;
    }
    refuse_to_overwrite(&snapshot, failed_tag)?;

    // Stage every copy beside its destination.
    let mut staged: Vec<PathBuf> = Vec::new();
    let prepared = (|| {
        let mut db_tmps = Vec::new();
        for db in &snapshot.databases {
            let tmp = match db.existed {
                true => Some(stage_db(&dir.join(&db.file), db, failed_tag, &mut staged)?),
                false => None,
            };
            db_tmps.push(tmp);
        }
        let mut file_tmps = Vec::new();
        for tree in &snapshot.files {
            let tmp = match tree.existed {
                true => Some(stage_files(
                    &dir.join(&tree.copy),
                    tree,
                    failed_tag,
                    &mut staged,
                )?),
                false => None,
            };
            file_tmps.push(tmp);
        }
        Ok((db_tmps, file_tmps))
    })();
    let swapped = prepared.and_then(|(db_tmps, file_tmps)| {
        for (db, tmp) in snapshot.databases.iter().zip(&db_tmps) {
            swap_db(db, tmp.as_deref(), failed_tag)?;
        }
        for (tree, tmp) in snapshot.files.iter().zip(&file_tmps) {
            swap_files(tree, tmp.as_deref(), failed_tag)?;
        }
        Ok(())
    });
    if swapped.is_err() {
        for tmp in &staged {
            if let Err(e) = remove_any(tmp) {
                tracing::warn!("could not remove {}: {e}", tmp.display());
            }
        }
    }
    swapped.map(|()| whole)
}

fn check_tag(tag: &str) -> Result<(), SnapshotError> {
    let fine = !tag.is_empty()
        && !tag.starts_with('.')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match fine {
        true => Ok(()),
        false => Err(SnapshotError::BadTag(tag.to_owned())),
    }
}

fn verify_copies(dir: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    for db in snapshot.databases.iter().filter(|db| db.existed) {
        let copy = dir.join(&db.file);
        let (size, sha256) = match hash_file(&copy) {
            Ok(hashed) => hashed,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::Damaged {
                    copy,
                    why: "it is missing".into(),
                })
            }
            Err(e) => return Err(io_err(format!("read {}", copy.display()))(e)),
        };
        if sha256 != db.sha256 || size != db.size {
            return Err(SnapshotError::Damaged {
                copy,
                why: format!(
                    "it has {size} bytes and sha256 {sha256}, {} bytes and sha256 {} were recorded",
                    db.size, db.sha256
                ),
            });
        }
    }
    for tree in snapshot.files.iter().filter(|t| t.existed) {
        let copy = dir.join(&tree.copy);
        if !exists(&copy)? {
            return Err(SnapshotError::Damaged {
                copy,
                why: "it is missing".into(),
            });
        }
        let bytes = tree_bytes(&copy)?;
        if bytes != tree.bytes {
            return Err(SnapshotError::Damaged {
                copy,
                why: format!("it holds {bytes} bytes, {} were recorded", tree.bytes),
            });
        }
    }
    Ok(())
}

fn tree_bytes(path: &Path) -> Result<u64, SnapshotError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(format!("read {}", path.display())))?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    let mut bytes = 0;
    for item in fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))? {
        let item = item.map_err(io_err(format!("list {}", path.display())))?;
        bytes += tree_bytes(&item.path())?;
    }
    Ok(bytes)
}

/// Where a database's files go when they are moved aside as failed.
fn db_aside(db: &Path, tag: &str) -> Vec<(PathBuf, PathBuf)> {
    let failed = with_suffix(db, &format!(".failed-{tag}"));
    let mut moves: Vec<_> = ["-wal", "-journal"]
        .iter()
        .map(|s| (with_suffix(db, s), with_suffix(&failed, s)))
        .collect();
    moves.push((db.to_owned(), failed));
    moves
}

fn refuse_to_overwrite(snapshot: &Snapshot, tag: &str) -> Result<(), SnapshotError> {
    let db_moves = snapshot
        .databases
        .iter()
        .flat_map(|db| db_aside(&db.path, tag));
    let tree_moves = snapshot.files.iter().map(|t| {
        (
            t.path.clone(),
            with_suffix(&t.path, &format!(".failed-{tag}")),
        )
    });
    for (from, to) in db_moves.chain(tree_moves) {
        if exists(&from)? && exists(&to)? {
            return Err(SnapshotError::FailedExists(to));
        }
    }
    Ok(())
}

/// Copies a verified database copy to a temporary file beside the live
/// database, with the live one's owner and mode, and WAL mode if the live
/// one had it. Returns the temporary file.
fn stage_db(
    copy: &Path,
    db: &DbSnapshot,
    tag: &str,
    staged: &mut Vec<PathBuf>,
) -> Result<PathBuf, SnapshotError> {
    let tmp = with_suffix(&db.path, &format!(".restore-{tag}"));
    let parent = parent_dir(&db.path);
    fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    let (owner, mode) = match fs::metadata(&db.path) {
        Ok(meta) => (Some((meta.uid(), meta.gid())), meta.mode() & 0o7777),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            (None, if db.mode == 0 { 0o600 } else { db.mode })
        }
        Err(e) => return Err(io_err(format!("read {}", db.path.display()))(e)),
    };
    // Left over from an interrupted restore with the same tag.
    for path in std::iter::once(tmp.clone()).chain(SIDECARS.map(|s| with_suffix(&tmp, s))) {
        remove_any(&path).map_err(io_err(format!("remove {}", path.display())))?;
    }
    let mut from = File::open(copy).map_err(io_err(format!("open {}", copy.display())))?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(format!("create {}", tmp.display())))?;
    staged.push(tmp.clone());
    // Hashed again on the way: what goes back is what was verified.
    let (_, sha256) = copy_hashing(&mut from, &mut to).map_err(io_err(format!(
        "copy {} to {}",
        copy.display(),
        tmp.display()
    )))?;
    if sha256 != db.sha256 {
        return Err(SnapshotError::Damaged {
            copy: copy.to_owned(),
            why: "it changed while being restored".into(),
        });
    }
    drop(to);
    if db.wal {
        let conn = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err("open", &tmp))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            .map_err(sql_err("put back WAL mode in", &tmp))?;
        conn.close().map_err(|(_, e)| sql_err("close", &tmp)(e))?;
    }
    let file = File::open(&tmp).map_err(io_err(format!("open {}", tmp.display())))?;
    set_owner(&file, &tmp, owner)?;
    file.set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.sync_all())
        .map_err(io_err(format!("write {}", tmp.display())))?;
    Ok(tmp)
}

/// Gives `file` the owner `owner`; a user who is not root can only keep its
/// own, and may keep its own group when it is not in the wanted one.
fn set_owner(file: &File, path: &Path, owner: Option<(u32, u32)>) -> Result<(), SnapshotError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let meta = file
        .metadata()
        .map_err(io_err(format!("read {}", path.display())))?;
    if (meta.uid(), meta.gid()) == (uid, gid) {
        return Ok(());
    }
    match std::os::unix::fs::fchown(file, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && uid == meta.uid() => {
            tracing::warn!(
                "{} keeps group {} instead of {gid}: this user is not in that group",
                path.display(),
                meta.gid()
            );
            Ok(())
        }
        Err(source) => Err(SnapshotError::Owner {
            path: path.to_owned(),
            uid,
            gid,
            source,
        }),
    }
}

fn stage_files(
    copy: &Path,
    tree: &FilesSnapshot,
    tag: &str,
    staged: &mut Vec<PathBuf>,
) -> Result<PathBuf, SnapshotError> {
    let tmp = with_suffix(&tree.path, &format!(".restore-{tag}"));
    let parent = parent_dir(&tree.path);
    fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    remove_any(&tmp).map_err(io_err(format!("remove {}", tmp.display())))?;
    staged.push(tmp.clone());
    copy_tree(copy, &tmp)?;
    Ok(tmp)
}

fn swap_db(db: &DbSnapshot, tmp: Option<&Path>, tag: &str) -> Result<(), SnapshotError> {
    // The -wal before the database: a WAL left beside the restored file
    // would be replayed over it.
    for (from, to) in db_aside(&db.path, tag) {
        rename_if_exists(&from, &to)?;
    }
    let shm = with_suffix(&db.path, "-shm");
    remove_any(&shm).map_err(io_err(format!("remove {}", shm.display())))?;
    if let Some(tmp) = tmp {
        rename(tmp, &db.path)?;
    }
    sync_dir(parent_dir(&db.path))
}

fn swap_files(tree: &FilesSnapshot, tmp: Option<&Path>, tag: &str) -> Result<(), SnapshotError> {
    rename_if_exists(
        &tree.path,
        &with_suffix(&tree.path, &format!(".failed-{tag}")),
    )?;
    if let Some(tmp) = tmp {
        rename(tmp, &tree.path)?;
    }
    sync_dir(parent_dir(&tree.path))
}

fn rename(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    fs::rename(from, to).map_err(io_err(format!(
        "rename {} to {}",
        from.display(),
        to.display()
    )))
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(io_err(format!(
            "rename {} to {}",
            from.display(),
            to.display()
        ))),
    }
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use rusqlite::config::DbConfig;

    /// A service directory with a WAL database `data/app.db` holding
    /// `rows` rows, user_version 7.
    fn service(rows: i64, payload: usize) -> (tempfile::TempDir, PathBuf, PathBuf) {
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
    struct Writer {
        stop: Arc<AtomicBool>,
        committed: Arc<AtomicI64>,
        thread: thread::JoinHandle<()>,
    }

    impl Writer {
        fn start(db: &Path) -> Writer {
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

        fn committed(&self) -> i64 {
            self.committed.load(Ordering::Relaxed)
        }

        fn wait_for(&self, n: i64) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.committed() < n {
                assert!(Instant::now() < deadline, "the writer is stuck");
                thread::sleep(Duration::from_millis(1));
            }
        }

        fn stop(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().unwrap();
        }
    }

    /// Rows of `t` (count, max id, the counter) and a digest of all rows.
    fn contents(db: &Path) -> (i64, i64, i64, String) {
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

    fn journal_mode(db: &Path) -> String {
        let conn = Connection::open(db).unwrap();
        conn.pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    /// Writes rows with checkpoints off and closes without one, as a
    /// service killed mid-run leaves its database: `-wal` (holding the
    /// rows) and `-shm` beside it.
    fn write_into_wal(db: &Path, rows: i64) {
        let conn = Connection::open(db).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta(n INTEGER NOT NULL);
             INSERT INTO meta SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM meta);
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {rows})
               INSERT INTO t(payload) SELECT randomblob(100) FROM c;
             UPDATE meta SET n = n + {rows};"
        ))
        .unwrap();
        drop(conn);
        assert!(with_suffix(db, "-wal").exists());
        assert!(with_suffix(db, "-shm").exists());
    }

    /// Every name in `dir` with its size, mode, modification time and
    /// sha256, to show nothing changed.
    fn listing(dir: &Path) -> BTreeMap<String, (u64, u32, SystemTime, String)> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                let sha = if meta.is_file() {
                    hash_file(&e.path()).unwrap().1
                } else {
                    String::new()
                };
                let name = e.file_name().to_string_lossy().into_owned();
                (
                    name,
                    (meta.len(), meta.mode(), meta.modified().unwrap(), sha),
                )
            })
            .collect()
    }

    #[test]
    fn create_copies_a_point_in_time_while_a_writer_commits() {
        let (tmp, base, db) = service(20_000, 1000);
        let writer = Writer::start(&db);
        writer.wait_for(50);
        let before = writer.committed();
        let dir = base.join("snapshots/d1");
        let snap = create(&dir, "d1", "app", &base, std::slice::from_ref(&db), &[]).unwrap();
        let after = writer.committed();
        writer.stop();
        assert!(
            after > before,
            "the writer committed nothing during the snapshot"
        );

        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(snap.databases.len(), 1);
        let copy_meta = &snap.databases[0];
        assert_eq!(copy_meta.file, "data__app.db");
        assert!(copy_meta.existed && copy_meta.wal);
        assert_eq!(copy_meta.user_version, 7);
        let copy = dir.join(&copy_meta.file);
        assert_eq!(
            hash_file(&copy).unwrap(),
            (copy_meta.size, copy_meta.sha256.clone())
        );
        for suffix in SIDECARS {
            assert!(
                !with_suffix(&copy, suffix).exists(),
                "{suffix} beside the copy"
            );
        }
        // Checked before SQLite opens it again.
        assert!(!is_wal(&copy).unwrap());

        let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let check: String = conn
            .pragma_query_value(None, "quick_check", |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(conn);
        let (count, max, n, _) = contents(&copy);
        assert_eq!(count, max, "ids have gaps: not one point in time");
        assert_eq!(n, count, "the counter disagrees with the rows");
        assert!(n >= 20_000 + before && n <= 20_000 + after, "{n} rows");
        assert_eq!(journal_mode(&copy), "delete");
        assert_eq!(read(&dir).unwrap(), snap);
        drop(tmp);
    }

    #[test]
    fn create_reads_a_closed_wal_database_without_leaving_files() {
        let (_tmp, base, db) = service(100, 10);
        // Closed cleanly: no -wal or -shm beside it, yet in WAL mode.
        for suffix in SIDECARS {
            assert!(!with_suffix(&db, suffix).exists());
        }
        let snap = create(
            &base.join("snapshots/a"),
            "a",
            "app",
            &base,
            std::slice::from_ref(&db),
            &[],
        )
        .unwrap();
        assert!(snap.databases[0].wal);
        for suffix in SIDECARS {
            assert!(
                !with_suffix(&db, suffix).exists(),
                "{suffix} left beside the live db"
            );
        }
    }

    #[test]
    fn restore_puts_back_exactly_the_snapshot_and_keeps_the_failed_state() {
        let (_tmp, base, db) = service(5_000, 500);
        fs::set_permissions(&db, Permissions::from_mode(0o640)).unwrap();
        let writer = Writer::start(&db);
        writer.wait_for(20);
        let dir = base.join("snapshots/d1");
        let snap = create(&dir, "d1", "app", &base, std::slice::from_ref(&db), &[]).unwrap();
        let taken = contents(&dir.join(&snap.databases[0].file));
        writer.wait_for(writer.committed() + 200);
        writer.stop();
        // The failed version's last writes are in the WAL only.
        write_into_wal(&db, 300);
        let failed_contents = contents(&db);
        assert!(failed_contents.0 >= taken.0 + 500);

        let restored = restore(&dir, "d2").unwrap();
        assert_eq!(restored, snap);

        for suffix in SIDECARS {
            assert!(
                !with_suffix(&db, suffix).exists(),
                "{suffix} left beside the db"
            );
        }
        assert_eq!(mode_of(&db), 0o640);
        assert!(is_wal(&db).unwrap(), "WAL mode not put back");
        assert!(!base.join("data/app.db.restore-d2").exists());
        assert_eq!(contents(&db), taken);
        let failed = base.join("data/app.db.failed-d2");
        assert!(base.join("data/app.db.failed-d2-wal").exists());
        assert_eq!(contents(&failed), failed_contents);
        assert_eq!(journal_mode(&db), "wal");

        // The same tag again would overwrite the failed state.
        assert!(matches!(
            restore(&dir, "d2"),
            Err(SnapshotError::FailedExists(p)) if p == failed
        ));
        assert!(matches!(
            restore(&dir, "../x"),
            Err(SnapshotError::BadTag(_))
        ));
    }

    #[test]
    fn a_restore_a_dead_agent_began_is_finished_not_redone() {
        let (_tmp, base, db) = service(1_000, 100);
        let dir = base.join("snapshots/d1");
        let snap = create(&dir, "d1", "app", &base, std::slice::from_ref(&db), &[]).unwrap();
        let taken = contents(&dir.join(&snap.databases[0].file));
        write_into_wal(&db, 50);
        // Killed after moving the `-wal` aside, before the database.
        fs::rename(
            with_suffix(&db, "-wal"),
            base.join("data/app.db.failed-d1-wal"),
        )
        .unwrap();
        assert_eq!(resume_restore(&dir, "d1").unwrap(), snap);
        assert_eq!(contents(&db), taken);
        assert!(base.join("data/app.db.failed-d1").exists());
        // The previous release ran again and wrote on the restored data:
        // done already, so left as it is, and not refused.
        write_into_wal(&db, 20);
        let since = contents(&db);
        assert!(since.0 > taken.0);
        // (A plain restore would refuse: it would overwrite the failed state.)
        assert!(matches!(
            restore(&dir, "d1"),
            Err(SnapshotError::FailedExists(_))
        ));
        assert_eq!(resume_restore(&dir, "d1").unwrap(), snap);
        assert_eq!(contents(&db), since);
    }

    #[test]
    fn the_space_check_names_the_filesystem_and_what_is_needed() {
        let (_tmp, base, db) = service(1_000, 100);
        let dir = base.join("snapshots/d1");
        check_space(&dir, std::slice::from_ref(&db), &[], true).unwrap();
        assert!(!dir.exists(), "the check made the snapshot's directory");
        let mount = mount_point(&base);
        assert!(base.starts_with(&mount), "{}", mount.display());
        let err = SnapshotError::NoSpace {
            path: base.join("snapshots"),
            mount: mount.clone(),
            what: "a snapshot of the data and a restore of it",
            needed: 3 << 20,
            free: 1 << 19,
        };
        assert_eq!(
            err.to_string(),
            format!(
                "not enough free space on {} (the filesystem mounted at {}): a snapshot of the \
                 data and a restore of it need 3.0 MiB, 0.5 MiB is free",
                base.join("snapshots").display(),
                mount.display()
            )
        );
        assert!(err.hint().unwrap().contains(&mount.display().to_string()));
    }

    #[test]
    fn restore_refuses_a_damaged_copy_and_touches_nothing() {
        let (_tmp, base, db) = service(1_000, 100);
        let dir = base.join("snapshots/d1");
        let snap = create(&dir, "d1", "app", &base, std::slice::from_ref(&db), &[]).unwrap();
        write_into_wal(&db, 10);
        let copy = dir.join(&snap.databases[0].file);
        let mut bytes = fs::read(&copy).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        fs::write(&copy, bytes).unwrap();
        let live = listing(db.parent().unwrap());

        let err = restore(&dir, "d2").unwrap_err();
        assert!(matches!(err, SnapshotError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("nothing was restored"), "{err}");
        assert_eq!(listing(db.parent().unwrap()), live);
    }

    #[test]
    fn restore_moves_aside_a_database_the_failed_version_created() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("svc");
        let db = base.join("data/app.db");
        let dir = base.join("snapshots/d1");
        let snap = create(&dir, "d1", "app", &base, std::slice::from_ref(&db), &[]).unwrap();
        assert!(!snap.databases[0].existed);
        assert!(!dir.join(&snap.databases[0].file).exists());

        fs::create_dir_all(db.parent().unwrap()).unwrap();
        write_into_wal(&db, 10);
        restore(&dir, "d1").unwrap();
        for suffix in [""].iter().chain(&SIDECARS) {
            assert!(!with_suffix(&db, suffix).exists(), "{suffix}");
        }
        let failed = base.join("data/app.db.failed-d1");
        assert!(base.join("data/app.db.failed-d1-wal").exists());
        assert!(!base.join("data/app.db.failed-d1-shm").exists());
        assert_eq!(contents(&failed).0, 10);
    }

    #[test]
    fn check_sqlite_tells_databases_from_other_files() {
        let tmp = tempfile::tempdir().unwrap();
        let text = tmp.path().join("notes.txt");
        fs::write(&text, "SQLite format 2, or so this file says\n").unwrap();
        assert!(!check_sqlite(&text).unwrap());
        let short = tmp.path().join("short");
        fs::write(&short, "SQLite").unwrap();
        assert!(!check_sqlite(&short).unwrap());
        assert!(check_sqlite(&tmp.path().join("missing.db")).unwrap());
        let empty = tmp.path().join("empty.db");
        fs::write(&empty, "").unwrap();
        assert!(check_sqlite(&empty).unwrap());
        let (_svc, _, db) = service(1, 1);
        assert!(check_sqlite(&db).unwrap());
        // A directory cannot be read.
        assert!(check_sqlite(tmp.path()).is_err());

        let base = tmp.path().to_owned();
        let dir = base.join("snapshots/x");
        let err = create(&dir, "x", "app", &base, std::slice::from_ref(&text), &[]).unwrap_err();
        assert!(matches!(err, SnapshotError::NotSqlite(p) if p == text));
        assert!(!dir.exists());
        let err = create(&dir, "x", "app", &base, &[PathBuf::from("app.db")], &[]).unwrap_err();
        assert!(matches!(err, SnapshotError::NotAbsolute(_)));
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
    fn an_empty_database_file_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        let db = base.join("empty.db");
        fs::write(&db, "").unwrap();
        let dir = base.join("snapshots/e");
        let snap = create(&dir, "e", "app", &base, std::slice::from_ref(&db), &[]).unwrap();
        assert!(snap.databases[0].existed && !snap.databases[0].wal);
        fs::write(&db, "junk the failed version wrote").unwrap();
        restore(&dir, "f").unwrap();
        assert_eq!(
            fs::read(&db).unwrap(),
            fs::read(dir.join("empty.db")).unwrap()
        );
        assert!(base.join("empty.db.failed-f").exists());
    }

    #[test]
    fn files_are_snapshotted_and_restored() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("svc");
        let uploads = base.join("uploads");
        fs::create_dir_all(uploads.join("sub")).unwrap();
        fs::write(uploads.join("a.txt"), "alpha").unwrap();
        fs::write(uploads.join("sub/b.bin"), [0u8, 1, 2, 3]).unwrap();
        fs::set_permissions(uploads.join("sub/b.bin"), Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(uploads.join("sub"), Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("a.txt", uploads.join("link")).unwrap();
        let config = base.join("config.toml");
        fs::write(&config, "x = 1\n").unwrap();
        let later = base.join("cache");

        let dir = base.join("snapshots/d1");
        let paths = [uploads.clone(), config.clone(), later.clone()];
        let snap = create(&dir, "d1", "app", &base, &[], &paths).unwrap();
        let copies: Vec<_> = snap
            .files
            .iter()
            .map(|f| (f.copy.as_str(), f.existed, f.bytes))
            .collect();
        assert_eq!(
            copies,
            [
                ("uploads", true, 9),
                ("config.toml", true, 6),
                ("cache", false, 0)
            ]
        );

        // The failed version changes everything.
        fs::write(uploads.join("a.txt"), "changed").unwrap();
        fs::write(uploads.join("c.txt"), "new").unwrap();
        fs::set_permissions(uploads.join("sub"), Permissions::from_mode(0o700)).unwrap();
        fs::remove_dir_all(uploads.join("sub")).unwrap();
        fs::write(&config, "x = 2\n").unwrap();
        fs::create_dir_all(&later).unwrap();

        restore(&dir, "d2").unwrap();
        assert_eq!(fs::read_to_string(uploads.join("a.txt")).unwrap(), "alpha");
        assert!(!uploads.join("c.txt").exists());
        assert_eq!(fs::read(uploads.join("sub/b.bin")).unwrap(), [0, 1, 2, 3]);
        assert_eq!(mode_of(&uploads.join("sub/b.bin")), 0o600);
        assert_eq!(mode_of(&uploads.join("sub")), 0o750);
        assert_eq!(
            fs::read_link(uploads.join("link")).unwrap(),
            Path::new("a.txt")
        );
        assert_eq!(fs::read_to_string(&config).unwrap(), "x = 1\n");
        assert!(!later.exists());
        assert!(base.join("cache.failed-d2").is_dir());
        let failed = base.join("uploads.failed-d2");
        assert_eq!(fs::read_to_string(failed.join("a.txt")).unwrap(), "changed");
        assert!(failed.join("c.txt").exists());
        assert_eq!(
            fs::read_to_string(base.join("config.toml.failed-d2")).unwrap(),
            "x = 2\n"
        );
        assert!(!base.join("uploads.restore-d2").exists());
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

    fn set_age(path: &Path, age: Duration) {
        let when = SystemTime::now() - age;
        let times = FileTimes::new().set_modified(when).set_accessed(when);
        File::open(path).unwrap().set_times(times).unwrap();
    }

    #[test]
    fn prune_keeps_the_newest_and_the_protected() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        let snapshots = base.join("snapshots");
        for id in ["s1", "s2", "s3", "s4", "s5"] {
            create(&snapshots.join(id), id, "app", &base, &[], &[]).unwrap();
        }
        let old = snapshots.join("old-incomplete");
        fs::create_dir(&old).unwrap();
        fs::write(old.join("data__app.db"), "partial").unwrap();
        set_age(&old.join("data__app.db"), Duration::from_secs(7200));
        set_age(&old, Duration::from_secs(7200));
        let fresh = snapshots.join("fresh-incomplete");
        fs::create_dir(&fresh).unwrap();
        // Old directory, but its copy is still being written.
        let busy = snapshots.join("busy-incomplete");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("data__app.db"), "growing").unwrap();
        set_age(&busy, Duration::from_secs(7200));
        // A read-only tree inside must not stop the removal.
        let locked = snapshots.join("s2/uploads");
        fs::create_dir(&locked).unwrap();
        fs::write(locked.join("f"), "x").unwrap();
        fs::set_permissions(&locked, Permissions::from_mode(0o500)).unwrap();

        let mut removed = prune(&snapshots, 2, &["s1"]).unwrap();
        removed.sort();
        assert_eq!(removed, ["old-incomplete", "s2", "s3"]);
        let mut left: Vec<_> = fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["busy-incomplete", "fresh-incomplete", "s1", "s4", "s5"]
        );
        assert!(prune(&snapshots, 2, &["s1"]).unwrap().is_empty());
        assert!(prune(&base.join("none"), 2, &[]).unwrap().is_empty());
    }

    #[test]
    fn list_and_read_round_trip() {
        let (_tmp, base, db) = service(10, 10);
        let snapshots = base.join("snapshots");
        let uploads = base.join("uploads");
        fs::create_dir(&uploads).unwrap();
        fs::write(uploads.join("a"), "a").unwrap();
        let first = create(
            &snapshots.join("d1"),
            "d1",
            "app",
            &base,
            std::slice::from_ref(&db),
            std::slice::from_ref(&uploads),
        )
        .unwrap();
        let second = create(
            &snapshots.join("d2"),
            "d2",
            "app",
            &base,
            std::slice::from_ref(&db),
            std::slice::from_ref(&uploads),
        )
        .unwrap();
        fs::create_dir(snapshots.join("d3")).unwrap();
        fs::write(snapshots.join("stray-file"), "").unwrap();
        assert_eq!(list(&snapshots).unwrap(), [second.clone(), first.clone()]);
        assert_eq!(read(&snapshots.join("d1")).unwrap(), first);
        assert!(matches!(
            read(&snapshots.join("d3")),
            Err(SnapshotError::Incomplete(_))
        ));
        assert!(matches!(
            create(&snapshots.join("d1"), "d1", "app", &base, &[], &[]),
            Err(SnapshotError::Exists(_))
        ));
        assert!(list(&base.join("none")).unwrap().is_empty());
        // What snapshot.json holds, for anyone reading it by hand.
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(snapshots.join("d1/snapshot.json")).unwrap()).unwrap();
        assert_eq!(json["databases"][0]["file"], "data__app.db");
        assert_eq!(json["files"][0]["copy"], "uploads");
        assert_eq!(json["complete"], true);
    }
}

/// The benchmark recorded in BENCHMARKS.md ("App snapshots"); run it with
/// `bench/snapshot/run`, which documents its settings.
#[cfg(test)]
mod bench {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    fn setting(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
            })
            .unwrap_or(default)
    }

    /// A WAL database of about `mib` MiB: rows of 1000 to 4000 random bytes.
    fn build(db: &Path, mib: u64) {
        let conn = Connection::open(db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, at INTEGER NOT NULL, payload BLOB NOT NULL);
             CREATE INDEX t_at ON t(at);",
        )
        .unwrap();
        let bytes = |conn: &Connection| -> u64 {
            conn.query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64
        };
        while bytes(&conn) < mib << 20 {
            conn.execute_batch(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10000)
                   INSERT INTO t(at, payload)
                   SELECT random(), randomblob(1000 + abs(random()) % 3000) FROM c;",
            )
            .unwrap();
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }

    /// A service committing one small row every millisecond; each commit's
    /// start and latency.
    struct Writer {
        stop: Arc<AtomicBool>,
        thread: thread::JoinHandle<Vec<(Instant, Duration)>>,
    }

    impl Writer {
        fn start(db: &Path) -> Writer {
            let conn = Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = thread::spawn(move || {
                let mut stmt = conn
                    .prepare("INSERT INTO t(at, payload) VALUES (?1, randomblob(200))")
                    .unwrap();
                let mut commits = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    stmt.execute([start.elapsed().as_nanos() as i64]).unwrap();
                    commits.push((start, start.elapsed()));
                    thread::sleep(Duration::from_millis(1));
                }
                commits
            });
            Writer { stop, thread }
        }

        fn stop(self) -> Vec<(Instant, Duration)> {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().unwrap()
        }
    }

    fn timed<T>(f: impl FnOnce() -> T) -> (Duration, Window, T) {
        let start = Instant::now();
        let out = f();
        let end = Instant::now();
        (end - start, (start, end), out)
    }

    type Window = (Instant, Instant);

    /// Syncs everything written so far and pauses, so that one
    /// measurement's I/O does not land in the next one's window.
    fn settle(dir: &Path) {
        use std::os::fd::AsRawFd;
        let dir = File::open(dir).unwrap();
        // SAFETY: a plain system call on an open descriptor.
        assert_eq!(unsafe { libc::syncfs(dir.as_raw_fd()) }, 0);
        thread::sleep(Duration::from_secs(1));
    }

    fn median(mut xs: Vec<Duration>) -> Duration {
        xs.sort();
        xs[xs.len() / 2]
    }

    fn secs(d: Duration) -> String {
        format!("{:.3} s", d.as_secs_f64())
    }

    fn ms(d: Duration) -> String {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }

    fn spread(xs: &[Duration]) -> String {
        format!(
            "{} ({}–{})",
            secs(median(xs.to_vec())),
            secs(*xs.iter().min().unwrap()),
            secs(*xs.iter().max().unwrap())
        )
    }

    /// The writer's commits that started within `windows`: how many, the
    /// worst latency, p99, and how many took over 50 ms.
    fn writer_in(commits: &[(Instant, Duration)], windows: &[Window]) -> String {
        let mut lat: Vec<Duration> = commits
            .iter()
            .filter(|(at, _)| windows.iter().any(|(s, e)| at >= s && at < e))
            .map(|(_, l)| *l)
            .collect();
        if lat.is_empty() {
            return "no commits".into();
        }
        lat.sort();
        let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
        let slow = lat
            .iter()
            .filter(|l| **l > Duration::from_millis(50))
            .count();
        format!(
            "{} commits, worst {}, p99 {}, {} over 50 ms",
            lat.len(),
            ms(*lat.last().unwrap()),
            ms(p99),
            slow
        )
    }

    #[test]
    #[ignore = "a benchmark: run bench/snapshot/run"]
    fn bench_snapshot_1gib() {
        let mib = setting("BERTH_BENCH_DB_MIB", 1024);
        let runs = setting("BERTH_BENCH_RUNS", 3) as usize;
        let parent = std::env::var("BERTH_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
        let tmp = tempfile::Builder::new()
            .prefix("berth-snapshot-bench-")
            .tempdir_in(&parent)
            .unwrap();
        let base = tmp.path().join("svc");
        let db = base.join("data/app.db");
        fs::create_dir_all(db.parent().unwrap()).unwrap();
        let (took, _, ()) = timed(|| build(&db, mib));
        let size = fs::metadata(&db).unwrap().len();
        eprintln!(
            "built {} ({} MiB) in {}",
            db.display(),
            size >> 20,
            secs(took)
        );
        settle(tmp.path());

        let writer = Writer::start(&db);
        thread::sleep(Duration::from_millis(500));
        let (_, idle, ()) = timed(|| thread::sleep(Duration::from_secs(3)));
        let (mut cp, mut cp_sync, mut snap) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cp_windows, mut sync_windows, mut snap_windows) = (vec![], vec![], vec![]);
        let plain = tmp.path().join("cp-copy.db");
        for run in 0..runs {
            // Alternated, so neither always goes first.
            settle(tmp.path());
            let (took, window, status) = timed(|| {
                Command::new("cp")
                    .arg("--reflink=never")
                    .arg(&db)
                    .arg(&plain)
                    .status()
                    .unwrap()
            });
            assert!(status.success());
            cp.push(took);
            cp_windows.push(window);
            let (synced, window, ()) = timed(|| File::open(&plain).unwrap().sync_all().unwrap());
            cp_sync.push(took + synced);
            sync_windows.push(window);
            fs::remove_file(&plain).unwrap();

            settle(tmp.path());
            let dir = base.join(format!("snapshots/run{run}"));
            let (took, window, made) = timed(|| {
                create(&dir, "run", "app", &base, std::slice::from_ref(&db), &[]).unwrap()
            });
            snap.push(took);
            snap_windows.push(window);
            eprintln!(
                "run {}: cp {}, cp + fsync {}, snapshot {} ({} MiB copy)",
                run + 1,
                secs(cp[run]),
                secs(cp_sync[run]),
                secs(took),
                made.databases[0].size >> 20
            );
            remove_any(&dir).unwrap();
        }
        // One more snapshot, in its parts, for reading the total.
        settle(tmp.path());
        let copy = tmp.path().join("parts.db");
        let (backup_took, backup_window, ()) = timed(|| backup(&db, &copy).unwrap());
        let (verify_took, verify_window, _) = timed(|| verify_copy(&db, &copy).unwrap());
        let (hash_took, _, _) = timed(|| hash_file(&copy).unwrap());
        let conn = Connection::open(&copy).unwrap();
        let (check_took, _, ()) = timed(|| quick_check(&conn, &db, &copy).unwrap());
        drop(conn);
        let commits = writer.stop();

        let (cp_med, snap_med) = (median(cp.clone()), median(snap.clone()));
        let rows = [
            (
                "database".to_owned(),
                format!(
                    "{} MiB, WAL mode; {runs} runs of each, alternated; medians (min–max)",
                    size >> 20
                ),
            ),
            ("`cp --reflink=never` of it".into(), spread(&cp)),
            ("`cp`, then fsync of its copy".into(), spread(&cp_sync)),
            ("`snapshot::create` of it".into(), spread(&snap)),
            (
                "ratio snapshot / `cp` (goal ≤ 1.5×)".into(),
                format!("{:.2}×", snap_med.as_secs_f64() / cp_med.as_secs_f64()),
            ),
            (
                "ratio snapshot / (`cp` + fsync)".into(),
                format!(
                    "{:.2}×",
                    snap_med.as_secs_f64() / median(cp_sync.clone()).as_secs_f64()
                ),
            ),
            (
                "writer during the snapshots".into(),
                writer_in(&commits, &snap_windows),
            ),
            (
                "writer during `cp`".into(),
                writer_in(&commits, &cp_windows),
            ),
            (
                "writer during the fsync of `cp`'s copy".into(),
                writer_in(&commits, &sync_windows),
            ),
            (
                "writer with nothing else running (3 s)".into(),
                writer_in(&commits, &[idle]),
            ),
            (
                "one more snapshot, part 1: backup step (with write-behind)".into(),
                format!(
                    "{}; writer: {}",
                    secs(backup_took),
                    writer_in(&commits, &[backup_window])
                ),
            ),
            (
                "part 2: out of WAL mode, then quick_check, sha256 and fsync side by side".into(),
                format!(
                    "{}; writer: {}",
                    secs(verify_took),
                    writer_in(&commits, &[verify_window])
                ),
            ),
            (
                "for reading part 2, each alone: quick_check / sha256".into(),
                format!("{} / {}", secs(check_took), secs(hash_took)),
            ),
        ];
        println!();
        println!("| | |");
        println!("| --- | --- |");
        for (what, value) in rows {
            println!("| {what} | {value} |");
        }
    }
}
