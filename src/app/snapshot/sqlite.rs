//! SQLite databases in a snapshot: telling a database from other files,
//! and the copy itself, made with SQLite's online backup API in one step,
//! written to disk behind the backup, then taken out of WAL mode, checked
//! (`quick_check`), hashed and synced.

use std::fs::{self, File, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{
    exists, hash_file, io_err, parent_dir, sql_err, sync_dir, with_suffix, DbSnapshot,
    SnapshotError, SIDECARS,
};

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
/// How long the backup waits for a lock on the live database (a writer in
/// rollback-journal mode holds one while it commits).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Further attempts when the backup still finds the database busy or locked.
const BUSY_RETRIES: u32 = 3;
const BUSY_PAUSE: Duration = Duration::from_millis(200);
/// How often, and from how many new bytes on, a copy in the making is
/// written to disk (see `write_behind`).
const WRITE_BEHIND_EVERY: Duration = Duration::from_millis(50);
const WRITE_BEHIND_CHUNK: u64 = 16 << 20;

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

pub(super) fn snapshot_db(
    path: &Path,
    dir: &Path,
    file: String,
) -> Result<DbSnapshot, SnapshotError> {
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
pub(super) fn backup(path: &Path, copy: &Path) -> Result<(), SnapshotError> {
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
pub(super) fn is_wal(path: &Path) -> Result<bool, SnapshotError> {
    let mut head = Vec::with_capacity(20);
    File::open(path)
        .and_then(|f| f.take(20).read_to_end(&mut head))
        .map_err(io_err(format!("read {}", path.display())))?;
    Ok(head.get(18..20) == Some(&[2, 2]))
}

/// Makes the fresh copy one self-contained file, checks it, syncs it, and
/// returns its user_version, size and sha256. `path` is the live database,
/// for messages.
pub(super) fn verify_copy(path: &Path, copy: &Path) -> Result<(i64, u64, String), SnapshotError> {
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

pub(super) fn quick_check(
    conn: &Connection,
    path: &Path,
    copy: &Path,
) -> Result<(), SnapshotError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::app::snapshot::restore::restore_with;
    use crate::app::snapshot::tests::{contents, journal_mode, mode_of, service, Writer};
    use crate::app::snapshot::{create, read};

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
    fn an_empty_database_file_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        let db = base.join("empty.db");
        fs::write(&db, "").unwrap();
        let dir = base.join("snapshots/e");
        let snap = create(&dir, "e", "app", &base, std::slice::from_ref(&db), &[]).unwrap();
        assert!(snap.databases[0].existed && !snap.databases[0].wal);
        fs::write(&db, "junk the failed version wrote").unwrap();
        restore_with(&dir, "f", false).unwrap();
        assert_eq!(
            fs::read(&db).unwrap(),
            fs::read(dir.join("empty.db")).unwrap()
        );
        assert!(base.join("empty.db.failed-f").exists());
    }
}
