//! Getting the signatures of a closure to a host whether or not it already
//! has the paths. `nix copy` skips a path the host has, signatures and all,
//! so a path that got there unsigned (an unsigned deploy refused before, a
//! build, another copy) would stay unsigned for ever. The deployer reads
//! each path's signatures here ([`closure_cmd`], [`parse`]); the host's
//! agent writes them as a binary cache of `.narinfo` files only
//! ([`write_cache`]) and has `nix store copy-sigs` take them from it
//! ([`copy_sigs_cmd`]): Nix adds a signature only to a path whose NAR hash,
//! size and references match, and trusts it only if a trusted key made it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::diff::{path_infos, DiffError};
use super::StorePath;
use crate::process::Cmd;

/// One path's identity and signatures, as `nix path-info --json --sigs`
/// gives them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedPath {
    pub path: StorePath,
    /// `sha256:<base32>` (Nix up to 2.18) or `sha256-<base64>` (SRI).
    pub nar_hash: String,
    pub nar_size: u64,
    /// Base names of the paths it refers to.
    pub references: Vec<String>,
    pub signatures: Vec<String>,
}

/// Something in a [`SignedPath`] that would not be one line of a narinfo.
#[derive(Debug, thiserror::Error)]
#[error("the signatures given for {path} are not usable: {why}")]
pub struct InvalidSignedPath {
    path: String,
    why: String,
}

impl SignedPath {
    /// Checks every field is what Nix prints for it, so that none can add
    /// a line of its own to the narinfo it goes into.
    pub fn check(&self) -> Result<(), InvalidSignedPath> {
        let bad = |why: String| InvalidSignedPath {
            path: self.path.to_string(),
            why,
        };
        let hash_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=:-".contains(c))
        };
        if !hash_ok(&self.nar_hash) {
            return Err(bad(format!("narHash `{}`", self.nar_hash.escape_debug())));
        }
        for reference in &self.references {
            if StorePath::new(format!("/nix/store/{reference}")).is_err() {
                return Err(bad(format!("reference `{}`", reference.escape_debug())));
            }
        }
        for sig in &self.signatures {
            let ok = sig.split_once(':').is_some_and(|(name, value)| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    && hash_ok(value)
            });
            if !ok {
                return Err(bad(format!("signature `{}`", sig.escape_debug())));
            }
        }
        Ok(())
    }

    /// The narinfo of a binary cache that holds only this path's metadata:
    /// enough for `nix store copy-sigs`, which never fetches the NAR.
    pub fn narinfo(&self) -> String {
        let mut text = format!(
            "StorePath: {}\nURL: nar/{}.nar\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: {}\n",
            self.path,
            self.path.hash_part(),
            self.nar_hash,
            self.nar_size,
            self.references.join(" ")
        );
        for sig in &self.signatures {
            text.push_str(&format!("Sig: {sig}\n"));
        }
        text
    }
}

/// `nix path-info --json --sigs --recursive PATH`, where it runs.
pub fn closure_cmd(path: &StorePath) -> Cmd {
    super::diff::path_info_cmd(path).arg("--sigs")
}

/// Reads what [`closure_cmd`] printed: the signed paths only.
pub fn parse(json: &[u8]) -> Result<Vec<SignedPath>, DiffError> {
    let value: Value = serde_json::from_slice(json).map_err(DiffError::Json)?;
    let mut signed = Vec::new();
    for (path, info) in path_infos(&value)? {
        let strings = |key: &str| -> Vec<String> {
            info.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let signatures = strings("signatures");
        if signatures.is_empty() {
            continue;
        }
        let (Some(nar_hash), Some(nar_size)) = (
            info.get("narHash").and_then(Value::as_str),
            info.get("narSize").and_then(Value::as_u64),
        ) else {
            return Err(DiffError::Shape(format!(
                "`{path}` has no \"narHash\" or \"narSize\""
            )));
        };
        let references = strings("references")
            .into_iter()
            .map(|r| r.rsplit('/').next().unwrap_or_default().to_owned())
            .collect();
        signed.push(SignedPath {
            path: StorePath::new(path)?,
            nar_hash: nar_hash.to_owned(),
            nar_size,
            references,
            signatures,
        });
    }
    Ok(signed)
}

/// Writes `paths` as a binary cache in `dir` (which must be empty).
pub fn write_cache<'a>(
    dir: &Path,
    paths: impl IntoIterator<Item = &'a SignedPath>,
) -> std::io::Result<()> {
    std::fs::write(
        dir.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 99\n",
    )?;
    for p in paths {
        std::fs::write(
            dir.join(format!("{}.narinfo", p.path.hash_part())),
            p.narinfo(),
        )?;
    }
    Ok(())
}

/// `nix store copy-sigs` from the cache in `dir` to the store where it
/// runs, for `paths`.
pub fn copy_sigs_cmd(dir: &Path, paths: &[&StorePath]) -> Cmd {
    Cmd::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(["store", "copy-sigs", "--substituter"])
        .arg(format!("file://{}", dir.display()))
        .args(paths.iter().map(|p| p.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-nixos-system-web1";
    const DEP: &str = "/nix/store/0c0z3dvi8w5plfbqhx4p0dr5hnqkbs3b-dep";
    const SIG: &str = "ops:4Gpc7Y0aWDnD2yIuT4bi3ReqDtYbvvAjqw95Lt5EfGpSmNU6vE3PvXjbnGXGd3CCvkXpAUn/bORX0GkXLqmbAw==";

    #[test]
    fn both_shapes_give_the_signed_paths_only() {
        let old = format!(
            r#"[{{"path":"{P}","narHash":"sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s","narSize":120,"references":["{DEP}","{P}"],"signatures":["{SIG}"],"valid":true}},
               {{"path":"{DEP}","narHash":"sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s","narSize":8,"references":[],"valid":true}}]"#
        );
        let new = format!(
            r#"{{"{P}":{{"narHash":"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","narSize":120,"references":["{DEP}","{P}"],"signatures":["{SIG}"]}},"{DEP}":{{"narHash":"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","narSize":8,"references":[],"signatures":[]}}}}"#
        );
        for json in [old, new] {
            let signed = parse(json.as_bytes()).unwrap();
            assert_eq!(signed.len(), 1);
            let s = &signed[0];
            assert_eq!(s.path.as_str(), P);
            assert_eq!(
                s.references,
                [&DEP["/nix/store/".len()..], &P["/nix/store/".len()..]]
            );
            s.check().unwrap();
            let text = s.narinfo();
            assert!(text.starts_with(&format!(
                "StorePath: {P}\nURL: nar/67gmyx5vdbg0dv7csdd6gh406z3bs23w.nar\nCompression: none\nNarHash: "
            )));
            assert!(text.ends_with(&format!("Sig: {SIG}\n")), "{text}");
        }
    }

    #[test]
    fn nothing_that_would_add_a_line_passes() {
        let good = SignedPath {
            path: StorePath::new(P).unwrap(),
            nar_hash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
            nar_size: 1,
            references: vec![],
            signatures: vec![SIG.into()],
        };
        good.check().unwrap();
        let mut bad = good.clone();
        bad.nar_hash.push_str("\nSig: evil:x");
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.references = vec!["x y".into()];
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.signatures = vec![format!("{SIG}\nReferences: x")];
        assert!(bad.check().is_err());
        let mut bad = good;
        bad.signatures = vec!["nokey".into()];
        assert!(bad.check().is_err());
    }

    #[test]
    fn copy_sigs_argv() {
        let path = StorePath::new(P).unwrap();
        assert_eq!(
            copy_sigs_cmd(Path::new("/tmp/c"), &[&path]).argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "store",
                "copy-sigs",
                "--substituter",
                "file:///tmp/c",
                P
            ]
        );
    }
}
