//! Writing a store path as a NAR (Nix ARchive), the form a binary cache
//! serves and Nix hashes: berth's peer cache streams it straight from the
//! filesystem, so serving a path costs no `nix-store --dump` process.
//!
//! The format: every string is its length as a little-endian u64, its
//! bytes, and zeros up to a multiple of 8. A node is `(`, `type`, then a
//! regular file (`regular`, `executable` and an empty string if its owner
//! may execute it, `contents` and the bytes), a symlink (`symlink`,
//! `target` and the target) or a directory (`directory`, then per entry in
//! byte order `entry ( name NAME node NODE )`), then `)`; the archive is
//! `nix-archive-1` and the root node. Nix checks the NAR hash and size the
//! narinfo carries against what arrives, so a mistake here fails the copy,
//! it never corrupts one.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes the NAR of `path` to `out`; returns how many bytes it wrote.
pub fn dump(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    let mut out = Counting {
        inner: out,
        bytes: 0,
    };
    string(&mut out, b"nix-archive-1")?;
    node(path, &mut out)?;
    Ok(out.bytes)
}

fn node(path: &Path, out: &mut impl Write) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let kind = meta.file_type();
    string(out, b"(")?;
    string(out, b"type")?;
    if kind.is_symlink() {
        string(out, b"symlink")?;
        string(out, b"target")?;
        string(out, fs::read_link(path)?.as_os_str().as_bytes())?;
    } else if kind.is_file() {
        string(out, b"regular")?;
        if meta.permissions().mode() & 0o100 != 0 {
            string(out, b"executable")?;
            string(out, b"")?;
        }
        string(out, b"contents")?;
        contents(path, meta.len(), out)?;
    } else if kind.is_dir() {
        string(out, b"directory")?;
        let mut entries = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in entries {
            string(out, b"entry")?;
            string(out, b"(")?;
            string(out, b"name")?;
            string(out, name.as_bytes())?;
            string(out, b"node")?;
            node(&path.join(&name), out)?;
            string(out, b")")?;
        }
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a file, a directory or a symlink", path.display()),
        ));
    }
    string(out, b")")
}

/// A file's bytes as a NAR string, read as it is written; a file whose
/// length changed while it was read is an error.
fn contents(path: &Path, len: u64, out: &mut impl Write) -> io::Result<()> {
    out.write_all(&len.to_le_bytes())?;
    let copied = io::copy(&mut fs::File::open(path)?.take(len), out)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} changed while it was read", path.display()),
        ));
    }
    pad(len, out)
}

fn string(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(bytes)?;
    pad(bytes.len() as u64, out)
}

fn pad(len: u64, out: &mut impl Write) -> io::Result<()> {
    let rest = (8 - len % 8) % 8;
    out.write_all(&[0u8; 8][..rest as usize])
}

struct Counting<'a, W> {
    inner: &'a mut W,
    bytes: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NAR `nix-store --dump` writes of the same tree, when this
    /// machine has Nix (it does where berth's tests run: scripts/test
    /// installs it).
    #[test]
    fn the_same_bytes_as_nix_store_dump() {
        let Some(nix_store) = crate::process::find_program("nix-store") else {
            panic!("nix-store is not installed: run scripts/install-deps");
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("share/empty")).unwrap();
        fs::write(root.join("bin/run"), "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("share/data"), vec![7u8; 8 * 1024 + 3]).unwrap();
        fs::write(root.join("share/Zeta"), "").unwrap();
        fs::write(root.join("share/alpha"), "1234567").unwrap();
        std::os::unix::fs::symlink("../share/data", root.join("bin/link")).unwrap();
        let mut ours = Vec::new();
        let written = dump(&root, &mut ours).unwrap();
        assert_eq!(written, ours.len() as u64);
        let theirs = std::process::Command::new(nix_store)
            .arg("--dump")
            .arg(&root)
            .output()
            .unwrap();
        assert!(theirs.status.success());
        assert_eq!(ours, theirs.stdout);
    }

    #[test]
    fn a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = dump(dir.path(), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("is not a file"), "{err}");
    }
}
