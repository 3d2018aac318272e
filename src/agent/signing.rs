//! What the agent does with a system before root runs any of it for a user
//! who may not be trusted (a deploy user through sudo): add the
//! signatures the deployer sent to the paths this host already has, and
//! dry-activate only a system that passes the same check as `activate`.

use super::system::{Agent, AgentError};
use crate::nix::signatures::{self, SignedPath};
use crate::nix::{dry_activate, StorePath};
use crate::process::{self, Via};

/// How many paths one `nix store copy-sigs` names.
const CHUNK: usize = 500;

/// What `dry-activate` found: the script's output, or why it did not run.
#[derive(Debug, serde::Serialize)]
pub struct DryActivation {
    /// Why the system was refused (its signatures), if it was.
    pub refused: Option<String>,
    pub succeeded: bool,
    /// What `switch-to-configuration dry-activate` printed, both streams.
    pub output: String,
}

impl Agent {
    /// Adds `paths`' signatures to those of them this host has: through a
    /// binary cache of their narinfos only, from which `nix store
    /// copy-sigs` takes a signature only for a path whose NAR hash, size
    /// and references match. Whether a key this host trusts made it is
    /// checked where it counts, by `activate`. Returns how many paths
    /// were offered.
    pub(super) async fn add_signatures(&self, paths: &[SignedPath]) -> Result<usize, AgentError> {
        for path in paths {
            path.check().map_err(|err| AgentError::Io {
                what: "read the signatures given".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string()),
            })?;
        }
        let here: Vec<&SignedPath> = paths
            .iter()
            .filter(|p| std::path::Path::new(p.path.as_str()).exists())
            .collect();
        if here.is_empty() {
            return Ok(0);
        }
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| AgentError::Io { what, source }
        };
        let cache = tempfile::tempdir().map_err(io("make a temporary directory"))?;
        signatures::write_cache(cache.path(), here.iter().copied())
            .map_err(io("write the narinfos"))?;
        let names: Vec<&StorePath> = here.iter().map(|p| &p.path).collect();
        for chunk in names.chunks(CHUNK) {
            self.run(&signatures::copy_sigs_cmd(cache.path(), chunk))
                .await?;
        }
        Ok(here.len())
    }

    /// `switch-to-configuration dry-activate` of `path`, once it passes
    /// the signature check `activate` makes (it runs the system's own
    /// script as root), `signatures` added first as `activate` adds them.
    pub async fn dry_activate(
        &self,
        path: &StorePath,
        signatures: &[SignedPath],
    ) -> Result<DryActivation, AgentError> {
        self.add_signatures(signatures).await?;
        if let Some(why) = self.verify("-", path).await? {
            return Ok(DryActivation {
                refused: Some(why),
                succeeded: false,
                output: String::new(),
            });
        }
        let out =
            process::output(&dry_activate::dry_activate_cmd(path), Via::Local, &self.log).await?;
        Ok(DryActivation {
            refused: None,
            succeeded: out.status.success(),
            output: format!(
                "{}{}",
                out.stdout_str(),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}
