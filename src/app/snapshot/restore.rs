//! Putting a snapshot back after a failed deploy: every copy verified and
//! staged beside its destination before anything live is touched, then
//! swapped in with the failed state kept beside as `.failed-<tag>`; and
//! finishing a restore a dead agent began.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::files::{copy_tree, tree_bytes};
use super::{
    copy_hashing, exists, hash_file, io_err, parent_dir, read, remove_any, rename, sql_err,
    sync_dir, with_suffix, DbSnapshot, FilesSnapshot, Snapshot, SnapshotError, SIDECARS,
};

/// Puts the snapshot's SQLite databases and file trees back (its
/// PostgreSQL dumps are [`super::data::restore`]'s). The caller has stopped
/// the service. `failed_tag` (e.g. the failed deploy's id) names what is
/// kept beside: each database's current file becomes `<db>.failed-<tag>`,
/// its `-wal` and `-journal` `<db>.failed-<tag>-wal` and `-journal` (so the
/// failed state stays inspectable), its `-shm` is removed; each file tree's
/// current one becomes `<path>.failed-<tag>`.
///
/// Every copy is verified (sha256 for databases, size for file trees) and
/// put in a temporary file beside its destination before anything live is
/// touched; an error until then leaves all as it was. An error while the
/// copies are moved into place leaves those before it restored.
///
/// With `resume`, it finishes a restore under `failed_tag` that a dead
/// agent began: a database or tree already moved aside as `.failed-<tag>`
/// with a copy back in its place was restored, and is left as it is; the
/// rest is restored.
pub(super) fn restore_with(
    dir: &Path,
    failed_tag: &str,
    resume: bool,
) -> Result<Snapshot, SnapshotError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use rusqlite::config::DbConfig;

    use crate::app::snapshot::create;
    use crate::app::snapshot::sqlite::is_wal;
    use crate::app::snapshot::tests::{contents, journal_mode, mode_of, service, Writer};

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

        let restored = restore_with(&dir, "d2", false).unwrap();
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
            restore_with(&dir, "d2", false),
            Err(SnapshotError::FailedExists(p)) if p == failed
        ));
        assert!(matches!(
            restore_with(&dir, "../x", false),
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
        assert_eq!(restore_with(&dir, "d1", true).unwrap(), snap);
        assert_eq!(contents(&db), taken);
        assert!(base.join("data/app.db.failed-d1").exists());
        // The previous release ran again and wrote on the restored data:
        // done already, so left as it is, and not refused.
        write_into_wal(&db, 20);
        let since = contents(&db);
        assert!(since.0 > taken.0);
        // (A plain restore would refuse: it would overwrite the failed state.)
        assert!(matches!(
            restore_with(&dir, "d1", false),
            Err(SnapshotError::FailedExists(_))
        ));
        assert_eq!(restore_with(&dir, "d1", true).unwrap(), snap);
        assert_eq!(contents(&db), since);
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

        let err = restore_with(&dir, "d2", false).unwrap_err();
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
        restore_with(&dir, "d1", false).unwrap();
        for suffix in [""].iter().chain(&SIDECARS) {
            assert!(!with_suffix(&db, suffix).exists(), "{suffix}");
        }
        let failed = base.join("data/app.db.failed-d1");
        assert!(base.join("data/app.db.failed-d1-wal").exists());
        assert!(!base.join("data/app.db.failed-d1-shm").exists());
        assert_eq!(contents(&failed).0, 10);
    }
}
