//! The environment guard: a node (`berth.deployment.stage`) or a service
//! (its manifest's `stage`) declares which stage it belongs to, such as
//! `production` or `staging`, and `--stage` refuses to deploy one that
//! declares another stage, or none. Without `--stage` nothing is checked.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a stage name may hold, for error messages.
pub const STAGE_RULE: &str = "a stage is lowercase letters, digits, `-` and `_`, starts with a \
     letter or digit, and is at most 64 characters long";

/// The name of a stage: one plain word, so it compares exactly and prints
/// as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Stage(String);

/// A stage name that breaks [`STAGE_RULE`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{}` is not a valid stage: {STAGE_RULE}", crate::error::printable(.0))]
pub struct InvalidStage(pub String);

impl Stage {
    pub fn new(text: impl Into<String>) -> Result<Stage, InvalidStage> {
        let text = text.into();
        let first_ok = text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if first_ok && rest_ok && text.len() <= 64 {
            Ok(Stage(text))
        } else {
            Err(InvalidStage(text))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Stage {
    type Error = InvalidStage;
    fn try_from(text: String) -> Result<Stage, InvalidStage> {
        Stage::new(text)
    }
}

impl From<Stage> for String {
    fn from(stage: Stage) -> String {
        stage.0
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// For clap: `--stage`.
pub fn parse_stage(text: &str) -> Result<Stage, InvalidStage> {
    Stage::new(text)
}

/// A deploy the guard refused. Nothing was changed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    #[error("{what} declares stage `{declared}`, not `{asked}`: refusing to deploy it with --stage {asked}")]
    Mismatch {
        what: String,
        declared: Stage,
        asked: Stage,
    },
    #[error("{what} declares no stage: refusing to deploy it with --stage {asked}")]
    Undeclared {
        what: String,
        asked: Stage,
        /// Where the stage is declared, e.g. `berth.deployment.stage`.
        option: String,
    },
}

impl crate::error::Diagnose for StageError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: Some(self.hint()),
            usage: true,
        }
    }
}

impl StageError {
    pub fn hint(&self) -> String {
        match self {
            StageError::Mismatch {
                declared, asked, ..
            } => format!(
                "check the target: it belongs to `{declared}`, so a deploy for `{asked}` \
                 should not reach it (deploy with --stage {declared} if it should)"
            ),
            StageError::Undeclared { option, asked, .. } => format!(
                "declare it with `{option} = \"{asked}\";` in the host's NixOS configuration \
                 (or deploy without --stage)"
            ),
        }
    }
}

/// The guard: `Ok` without `asked`, or when `declared` is `asked`.
/// `what` names the node or service, `option` where its stage is declared.
pub fn check(
    what: &str,
    option: &str,
    declared: Option<&Stage>,
    asked: Option<&Stage>,
) -> Result<(), StageError> {
    let Some(asked) = asked else {
        return Ok(());
    };
    match declared {
        Some(declared) if declared == asked => Ok(()),
        Some(declared) => Err(StageError::Mismatch {
            what: what.to_owned(),
            declared: declared.clone(),
            asked: asked.clone(),
        }),
        None => Err(StageError::Undeclared {
            what: what.to_owned(),
            asked: asked.clone(),
            option: option.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(s: &str) -> Stage {
        Stage::new(s).unwrap()
    }

    #[test]
    fn stage_names_are_plain_words() {
        for good in ["production", "staging", "eu-west_2", "0"] {
            assert_eq!(stage(good).as_str(), good);
        }
        for bad in [
            "",
            "Production",
            "-x",
            "_x",
            "a b",
            "prod;rm",
            "é",
            &"a".repeat(65),
        ] {
            assert!(Stage::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Stage::new("Prod").unwrap_err().to_string(),
            format!("`Prod` is not a valid stage: {STAGE_RULE}")
        );
    }

    #[test]
    fn reads_from_json_and_refuses_bad_names() {
        let s: Stage = serde_json::from_str("\"staging\"").unwrap();
        assert_eq!(s, stage("staging"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"staging\"");
        assert!(serde_json::from_str::<Stage>("\"Staging\"").is_err());
    }

    #[test]
    fn without_stage_nothing_is_checked() {
        let o = "berth.deployment.stage";
        assert_eq!(check("node web1", o, None, None), Ok(()));
        assert_eq!(
            check("node web1", o, Some(&stage("production")), None),
            Ok(())
        );
    }

    #[test]
    fn the_same_stage_passes() {
        let s = stage("staging");
        assert_eq!(check("node web1", "x", Some(&s), Some(&s)), Ok(()));
    }

    #[test]
    fn another_stage_is_refused_naming_both() {
        let err = check(
            "node web1",
            "berth.deployment.stage",
            Some(&stage("production")),
            Some(&stage("staging")),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node web1 declares stage `production`, not `staging`: \
             refusing to deploy it with --stage staging"
        );
        assert!(err.hint().contains("--stage production"), "{}", err.hint());
    }

    #[test]
    fn no_declared_stage_is_refused_too() {
        let err = check(
            "service `web`",
            "berth.services.web.stage",
            None,
            Some(&stage("staging")),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service `web` declares no stage: refusing to deploy it with --stage staging"
        );
        assert_eq!(
            err.hint(),
            "declare it with `berth.services.web.stage = \"staging\";` in the host's NixOS \
             configuration (or deploy without --stage)"
        );
    }
}
