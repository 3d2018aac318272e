//! What goes wrong in an app deploy, and the hints the CLI shows.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("revision {revision} of {service} was rolled back before ({why}): it is blocked")]
    Blocked {
        service: String,
        revision: String,
        why: String,
    },
    #[error("{} is not an SQLite database", .0.display())]
    NotSqlite(PathBuf),
    #[error("{service} has no kept release {wanted}{}", kept_list(.kept))]
    NoSuchRelease {
        service: String,
        wanted: String,
        kept: Vec<String>,
    },
    #[error("{0}")]
    Nothing(String),
    #[error("no snapshot {id} of {service}")]
    NoSuchSnapshot { service: String, id: String },
    #[error("revision {wanted} of {service} is not blocked{}", blocked_list(.blocked))]
    NotBlocked {
        service: String,
        wanted: String,
        blocked: Vec<String>,
    },
    #[error("{wanted} names more than one blocked revision of {service}: {}", .matches.join(", "))]
    AmbiguousBlocked {
        service: String,
        wanted: String,
        matches: Vec<String>,
    },
    #[error(
        "refusing to skip the snapshot of {service} in CI (CI is set): {} would not be protected",
        .data.join(", ")
    )]
    SkipSnapshotInCi { service: String, data: Vec<String> },
    #[error("{message}")]
    Scale { message: String, hint: String },
}

pub(super) fn blocked_list(blocked: &[String]) -> String {
    if blocked.is_empty() {
        " (none is)".into()
    } else {
        format!(" (blocked: {})", blocked.join(", "))
    }
}

pub(super) fn kept_list(kept: &[String]) -> String {
    if kept.is_empty() {
        " (none are kept)".into()
    } else {
        format!(" (kept: {})", kept.join(", "))
    }
}

impl crate::error::Diagnose for AppError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: self.is_usage(),
        }
    }
}

impl AppError {
    pub fn hint(&self) -> Option<String> {
        match self {
            AppError::Blocked { .. } => Some(
                "fix it in a new commit, or pass --force to deploy this revision anyway".into(),
            ),
            AppError::NotBlocked { .. } => {
                Some("`berth app status` lists the service's blocked revisions".into())
            }
            AppError::AmbiguousBlocked { .. } => {
                Some("give more of the commit's hash, or all of it".into())
            }
            AppError::SkipSnapshotInCi { service, .. } => Some(format!(
                "drop --skip-snapshot; or, if losing that data on a failed deploy is acceptable, \
                 pass --allow-skip-snapshot-in-ci too, or set \
                 `berth.services.{service}.allowSkipSnapshot = true;` on the host"
            )),
            AppError::Release(e) => e.hint(),
            AppError::Snapshot(e) => e.hint(),
            AppError::Scale { hint, .. } => Some(hint.clone()),
            AppError::NotSqlite(_) => Some(
                "list only SQLite files in data.sqlite (or --db); declare other data in data.files"
                    .into(),
            ),
            _ => None,
        }
    }

    /// Bad input: nothing was touched.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AppError::Blocked { .. }
                | AppError::NotSqlite(_)
                | AppError::NoSuchRelease { .. }
                | AppError::NoSuchSnapshot { .. }
                | AppError::NotBlocked { .. }
                | AppError::AmbiguousBlocked { .. }
                | AppError::SkipSnapshotInCi { .. }
                | AppError::Nothing(_)
                | AppError::Scale { .. }
        ) || matches!(
            self,
            AppError::Release(
                ReleaseError::BadRevision(_)
                    | ReleaseError::BadName { .. }
                    | ReleaseError::NotFound { .. }
                    | ReleaseError::NotOnBranch { .. }
                    | ReleaseError::NoRepository
            )
        )
    }
}
