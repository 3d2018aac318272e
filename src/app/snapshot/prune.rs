//! The snapshots under a service's `snapshots/`: listing the complete
//! ones, and pruning all but the newest and the incomplete ones left
//! behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{io_err, read, remove_any, Snapshot, SnapshotError, MANIFEST};

/// An incomplete snapshot younger than this may still be in the making.
const INCOMPLETE_GRACE: Duration = Duration::from_secs(3600);

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, FileTimes, Permissions};
    use std::os::unix::fs::PermissionsExt;

    use crate::app::snapshot::create;
    use crate::app::snapshot::tests::service;

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
