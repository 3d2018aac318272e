//! Signing keys of closures (Nix's ed25519 binary-cache keys, `NAME:BASE64`)
//! and what `nix store verify` says about the paths it refuses.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why a key, a key's name or a key file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{0:?} is not a valid key name: use letters, digits, `.`, `-` and `_` (e.g. `deploy-1`)"
    )]
    Name(String),
    #[error("{0:?} is not a Nix public key: expected NAME:BASE64, like the line `berth keys generate` prints")]
    Public(String),
    #[error("could not read the signing key {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Nix secret key (expected one line NAME:BASE64, as `berth keys generate` writes)")]
    Secret { path: String },
}

/// The name a key signs under (the part before `:`).
pub fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Name(name.to_owned()))
    }
}

/// Whether `text` is standard base64 of exactly `bytes` bytes.
fn is_base64_of(text: &str, bytes: usize) -> bool {
    let len = bytes.div_ceil(3) * 4;
    let pad = (3 - bytes % 3) % 3;
    text.len() == len
        && text[..len - pad]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/')
        && text[len - pad..].chars().all(|c| c == '=')
}

/// Splits `NAME:BASE64`, the name checked.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let (name, key) = text.split_once(':')?;
    check_name(name).ok()?;
    Some((name, key))
}

/// A public key a host trusts, `NAME:BASE64` (32 bytes of ed25519 key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(String);

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        match split_key(text) {
            Some((_, key)) if is_base64_of(key, 32) => Ok(PublicKey(text.to_owned())),
            _ => Err(KeyError::Public(text.to_owned())),
        }
    }

    /// The key's name, which signatures carry (`NAME:SIG`).
    pub fn name(&self) -> &str {
        self.0.split_once(':').map_or("", |(name, _)| name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PublicKey {
    type Error = KeyError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        PublicKey::parse(&text)
    }
}

impl From<PublicKey> for String {
    fn from(key: PublicKey) -> String {
        key.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names of `keys`, comma-separated, for messages.
pub fn names(keys: &[PublicKey]) -> String {
    keys.iter()
        .map(PublicKey::name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `path` holds a Nix secret key (`NAME:BASE64` of 64 bytes)
/// and returns its name. The key itself never appears in an error.
pub fn check_secret_key_file(path: &Path) -> Result<String, KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    match split_key(text.trim()) {
        Some((name, key)) if is_base64_of(key, 64) => Ok(name.to_owned()),
        _ => Err(KeyError::Secret { path: shown }),
    }
}

/// The public key of the secret key in `path`: an ed25519 secret key in
/// Nix's form holds its public half in its last 32 bytes.
pub fn public_key_of(path: &Path) -> Result<PublicKey, KeyError> {
    use base64::Engine as _;
    let name = check_secret_key_file(path)?;
    let secret = || KeyError::Secret {
        path: path.display().to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|_| secret())?;
    let (_, key) = split_key(text.trim()).ok_or_else(secret)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| secret())?;
    let public = base64::engine::general_purpose::STANDARD.encode(&bytes[32..]);
    PublicKey::parse(&format!("{name}:{public}"))
}

/// A path `nix store verify` refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub path: String,
    /// `untrusted` (no valid signature of a trusted key) or `modified`
    /// (its contents are not what was signed).
    pub why: &'static str,
}

/// The paths `nix store verify` refused, from its stderr:
/// `path '…' is untrusted` and `path '…' was modified! expected hash …`
/// (the same words in Nix 2.8 and current Nix; some versions between
/// prefix them with `error: `).
pub fn refused_paths(stderr: &str) -> Vec<Refused> {
    let mut refused: Vec<Refused> = Vec::new();
    for line in stderr.lines() {
        // Some versions log it as an error: `error: path '…' is untrusted`.
        let Some(at) = line.find("path '") else {
            continue;
        };
        let rest = &line[at + "path '".len()..];
        let Some((path, tail)) = rest.split_once('\'') else {
            continue;
        };
        let why = if tail.starts_with(" is untrusted") {
            "untrusted"
        } else if tail.starts_with(" was modified") {
            "modified"
        } else {
            continue;
        };
        if !refused.iter().any(|r| r.path == path && r.why == why) {
            refused.push(Refused {
                path: path.to_owned(),
                why,
            });
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "deploy-a:w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zyI=";

    /// The public key Nix writes beside a secret key is the one read out
    /// of the secret key.
    #[test]
    fn public_key_of_a_secret_key_is_nixs() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = (dir.path().join("sk"), dir.path().join("pk"));
        let status = std::process::Command::new("nix-store")
            .args(["--generate-binary-cache-key", "fan-1"])
            .args([&secret, &public])
            .status()
            .expect("nix-store is installed (scripts/install-deps)");
        assert!(status.success());
        let expected = std::fs::read_to_string(&public).unwrap();
        assert_eq!(public_key_of(&secret).unwrap().as_str(), expected.trim());
        assert!(matches!(
            public_key_of(&public),
            Err(KeyError::Secret { .. })
        ));
    }

    #[test]
    fn public_keys() {
        let key = PublicKey::parse(KEY).unwrap();
        assert_eq!(key.name(), "deploy-a");
        assert_eq!(key.as_str(), KEY);
        for bad in [
            "",
            "deploy-a",
            "deploy-a:",
            ":w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zyI=",
            "deploy a:w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zyI=",
            "deploy-a:w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zyI",
            "deploy-a:w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zy*=",
            "deploy-a:w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zyI==",
        ] {
            assert!(PublicKey::parse(bad).is_err(), "{bad:?}");
        }
        let keys: Vec<PublicKey> = serde_json::from_str(&format!("[\"{KEY}\"]")).unwrap();
        assert_eq!(names(&keys), "deploy-a");
        assert!(serde_json::from_str::<Vec<PublicKey>>("[\"nope\"]").is_err());
    }

    #[test]
    fn key_names() {
        check_name("cache.example.org-1").unwrap();
        for bad in ["", "a:b", "a b", "ä", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secret_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let secret = format!("deploy-a:{}==\n", "A".repeat(86));
        std::fs::write(&good, secret).unwrap();
        assert_eq!(check_secret_key_file(&good).unwrap(), "deploy-a");
        let public = dir.path().join("public");
        std::fs::write(&public, KEY).unwrap();
        let err = check_secret_key_file(&public).unwrap_err().to_string();
        assert!(err.contains("is not a Nix secret key"), "{err}");
        assert!(!err.contains("w/rz"), "the key must not be shown: {err}");
        assert!(matches!(
            check_secret_key_file(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn refused_paths_from_verify() {
        let stderr = "checking '/nix/store/aaa-dep'...\n\
            path '/nix/store/bbb-top' is untrusted\n\
            path '/nix/store/aaa-dep' was modified! expected hash 'sha256:x', got 'sha256:y'\n\
            path '/nix/store/bbb-top' is untrusted\n\
            error: path '/nix/store/ccc-lib' is untrusted\n\
            error: 2 paths are untrusted\n";
        assert_eq!(
            refused_paths(stderr),
            [
                Refused {
                    path: "/nix/store/bbb-top".into(),
                    why: "untrusted"
                },
                Refused {
                    path: "/nix/store/aaa-dep".into(),
                    why: "modified"
                },
                Refused {
                    path: "/nix/store/ccc-lib".into(),
                    why: "untrusted"
                },
            ]
        );
        assert!(refused_paths("").is_empty());
    }
}
