//! [`StorePath`]: a path directly under `/nix/store`, checked once.

use std::fmt;
use std::path::Path;

const STORE_DIR: &str = "/nix/store/";
const HASH_LEN: usize = 32;
/// Nix's base-32 alphabet (no e, o, u, t).
const HASH_CHARS: &str = "0123456789abcdfghijklmnpqrsvwxyz";

/// A top-level Nix store path such as `/nix/store/<hash>-<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct StorePath(String);

#[derive(Debug, thiserror::Error)]
#[error("`{path}` is not a Nix store path: {why}")]
pub struct InvalidStorePath {
    path: String,
    why: &'static str,
}

impl StorePath {
    pub fn new(path: impl Into<String>) -> Result<Self, InvalidStorePath> {
        let path = path.into();
        let invalid = |why| InvalidStorePath {
            path: path.clone(),
            why,
        };
        let Some(base) = path.strip_prefix(STORE_DIR) else {
            return Err(invalid("it is not under /nix/store"));
        };
        if base.len() < HASH_LEN + 2 || base.as_bytes()[HASH_LEN] != b'-' {
            return Err(invalid(
                "it does not start with a 32-character hash and a dash",
            ));
        }
        let (hash, name) = (&base[..HASH_LEN], &base[HASH_LEN + 1..]);
        if !hash.chars().all(|c| HASH_CHARS.contains(c)) {
            return Err(invalid(
                "its hash has characters outside Nix's base-32 alphabet",
            ));
        }
        if name.starts_with('.')
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c))
        {
            return Err(invalid("its name has characters Nix does not allow"));
        }
        Ok(StorePath(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hash, the name of the path's `.narinfo` in a binary cache.
    pub fn hash_part(&self) -> &str {
        &self.0[STORE_DIR.len()..STORE_DIR.len() + HASH_LEN]
    }

    /// The part after the hash, e.g. `hello-2.12`.
    pub fn name(&self) -> &str {
        &self.0[STORE_DIR.len() + HASH_LEN + 1..]
    }
}

/// Read back through [`StorePath::new`], so a path from JSON is checked too.
impl<'de> serde::Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StorePath::new(text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for StorePath {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for StorePath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_paths() {
        let p = StorePath::new("/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-berth").unwrap();
        assert_eq!(p.name(), "hello-berth");
        StorePath::new("/nix/store/6pbbnljgq1id46qm7g7kb1iqxl67wah9-hello-berth.drv").unwrap();
    }

    #[test]
    fn rejects_what_is_not_a_store_path() {
        for bad in [
            "",
            "/nix/store/",
            "/tmp/67gmyx5vdbg0dv7csdd6gh406z3bs23w-x",
            "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w",
            "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23wx-x",
            "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x",
            "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-a b",
            "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-x/bin/sh",
            "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-.hidden",
        ] {
            assert!(StorePath::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn error_names_the_path_and_the_reason() {
        let err = StorePath::new("/tmp/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`/tmp/x` is not a Nix store path: it is not under /nix/store"
        );
    }
}
