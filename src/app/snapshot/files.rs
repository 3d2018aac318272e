//! Declared file trees (`data.files`) in a snapshot: the copy, which keeps
//! modes, times and symbolic links, and the byte count a restore checks it
//! by.

use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use super::{exists, io_err, sync_dir, FilesSnapshot, SnapshotError};

pub(super) fn snapshot_files(
    path: &Path,
    dir: &Path,
    copy: String,
) -> Result<FilesSnapshot, SnapshotError> {
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
pub(super) fn copy_tree(src: &Path, dst: &Path) -> Result<u64, SnapshotError> {
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

pub(super) fn tree_bytes(path: &Path) -> Result<u64, SnapshotError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::snapshot::create;
    use crate::app::snapshot::restore::restore_with;
    use crate::app::snapshot::tests::mode_of;

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

        restore_with(&dir, "d2", false).unwrap();
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
}
