//! The host's own settings for its agent, `/etc/berth/agent.json`, written
//! by the NixOS module (`berth.agent`): which keys a system must be signed
//! with. Read from a fixed path, never from a flag or the environment, so
//! the deployer, who runs the agent, cannot point it elsewhere.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::nix::keys::PublicKey;

/// Where the NixOS module writes the agent's settings.
pub const AGENT_CONFIG: &str = "/etc/berth/agent.json";

/// What a system must carry before the agent activates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signatures {
    /// Nothing: no agent.json, or one that lists no keys.
    NotRequired,
    Required(Trust),
}

/// The keys a host trusts for system deploys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    /// One of these must sign the system (the toplevel) itself.
    pub keys: Vec<PublicKey>,
    /// Besides `keys`, the keys the host's Nix trusts
    /// (`nix.settings.trusted-public-keys`, e.g. cache.nixos.org's): each
    /// other path of the closure must be signed by one of either, or have
    /// been built on the host.
    pub nix_keys: Vec<PublicKey>,
}

impl Trust {
    /// `keys` then the `nix_keys` not among them: what the closure may be
    /// signed with.
    pub fn closure_keys(&self) -> Vec<PublicKey> {
        let mut all = self.keys.clone();
        for key in &self.nix_keys {
            if !all.contains(key) {
                all.push(key.clone());
            }
        }
        all
    }
}

/// A config the agent cannot use. It refuses to activate anything then:
/// a host that asked for signatures must not lose them to a broken file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    trusted_public_keys: Vec<PublicKey>,
    #[serde(default)]
    nix_trusted_public_keys: Vec<PublicKey>,
}

/// Reads the agent's config at `path`. No file at all (not even a dangling
/// link) means no requirement, as before signing existed; a file that is
/// there but cannot be read or parsed is an error.
pub fn load(path: &Path) -> Result<Signatures, ConfigError> {
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Signatures::NotRequired)
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
        Ok(_) => {}
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    })
}

fn parse(text: &str) -> Result<Signatures, String> {
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if file.trusted_public_keys.is_empty() {
        return Ok(Signatures::NotRequired);
    }
    Ok(Signatures::Required(Trust {
        keys: file.trusted_public_keys,
        nix_keys: file.nix_trusted_public_keys,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "deploy-a:w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zyI=";
    const CACHE: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    fn key(text: &str) -> PublicKey {
        PublicKey::parse(text).unwrap()
    }

    #[test]
    fn parses_what_the_module_writes() {
        let text =
            format!(r#"{{"trustedPublicKeys":["{A}"],"nixTrustedPublicKeys":["{CACHE}","{A}"]}}"#);
        let Signatures::Required(trust) = parse(&text).unwrap() else {
            panic!("keys are required")
        };
        assert_eq!(trust.keys, [key(A)]);
        assert_eq!(trust.closure_keys(), [key(A), key(CACHE)]);
        assert_eq!(
            parse(r#"{"trustedPublicKeys":[],"nixTrustedPublicKeys":[]}"#).unwrap(),
            Signatures::NotRequired
        );
        // A newer module's settings do not stop an older agent.
        assert!(matches!(
            parse(&format!(r#"{{"trustedPublicKeys":["{A}"],"later":1}}"#)).unwrap(),
            Signatures::Required(_)
        ));
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"trustedPublicKeys":"deploy-a"}"#,
            r#"{"trustedPublicKeys":["deploy-a"]}"#,
            r#"{"trustedPublicKeys":["deploy-a:short="]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn load_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        assert_eq!(load(&path).unwrap(), Signatures::NotRequired);
        // A dangling link is a config that broke, not a missing one.
        std::os::unix::fs::symlink(dir.path().join("gone"), &path).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("agent.json is not valid"), "{err}");
        std::fs::write(&path, format!(r#"{{"trustedPublicKeys":["{A}"]}}"#)).unwrap();
        assert!(matches!(load(&path).unwrap(), Signatures::Required(_)));
    }
}
