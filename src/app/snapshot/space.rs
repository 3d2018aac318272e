//! The free-space check a deploy makes before it takes a snapshot: room
//! for the copies, and with an undo for staging them again beside the live
//! data, on every filesystem involved.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::files::tree_bytes;
use super::{exists, io_err, with_suffix, SnapshotError};

/// What a filesystem keeps free for the state database's writes and the
/// copies' journal switch, beyond the copies themselves.
const HEADROOM: u64 = 1 << 20;

/// Checks, before a snapshot into `dir` is taken, that every filesystem
/// involved has room for it: its copies where the snapshot goes (an
/// estimate: each database's file and `-wal`, each tree's bytes) and, with
/// `restore`, the same again beside the live data, where an undo stages
/// them while the failed data is still there; plus [`HEADROOM`] on each.
/// `dumps` is what PostgreSQL dumps add where the snapshot goes (PostgreSQL
/// stages a restore in its own data directory, which is not the agent's to
/// see).
/// A deploy checks this before it stops the service, so a full disk
/// refuses it with the service untouched instead of failing half way.
pub fn check_space(
    dir: &Path,
    dbs: &[PathBuf],
    files: &[PathBuf],
    dumps: u64,
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
    if sizes.is_empty() && dumps == 0 {
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
    let total: u64 = sizes.iter().map(|(_, size)| size).sum::<u64>() + dumps;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::snapshot::tests::service;

    #[test]
    fn the_space_check_names_the_filesystem_and_what_is_needed() {
        let (_tmp, base, db) = service(1_000, 100);
        let dir = base.join("snapshots/d1");
        check_space(&dir, std::slice::from_ref(&db), &[], 0, true).unwrap();
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
    fn postgresql_dumps_count_where_the_snapshot_goes() {
        let (_tmp, base, _) = service(1_000, 100);
        let dir = base.join("snapshots/d1");
        let free = free_bytes(&base).unwrap();
        check_space(&dir, &[], &[], free / 2, false).unwrap();
        match check_space(&dir, &[], &[], free + 1, false) {
            Err(SnapshotError::NoSpace { needed, what, .. }) => {
                assert_eq!(needed, free + 1 + HEADROOM);
                assert_eq!(what, "a snapshot of the data");
            }
            other => panic!("{other:?}"),
        }
    }
}
