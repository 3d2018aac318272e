//! One module per command: its clap arguments and its `run`; and the list
//! of error types the renderer can ask for more ([`diagnose`]).

use std::error::Error as StdError;

use crate::diagnostics::Catalog;
use crate::error::{Diagnose, Diagnosis};

pub mod agent;
pub mod app;
pub mod ci_gate;
pub mod completions;
pub mod converge;
pub mod deploy;
pub mod exec;
pub mod history;
pub mod keys;
pub mod lab;
pub mod lock;
pub mod logs;
pub mod man;
mod nodes;
pub mod plan;
pub mod rollback;
pub mod smoke;
pub mod snapshot;
pub mod status;

/// What an error of a chain tells the renderer beyond its message, for
/// every error type that tells anything: the one list of them, here at
/// the top, so that the renderer knows no error type and the error types
/// do not know the renderer.
pub fn diagnose(err: &(dyn StdError + 'static)) -> Option<Diagnosis> {
    fn of<T: Diagnose + 'static>(err: &(dyn StdError + 'static)) -> Option<Diagnosis> {
        err.downcast_ref::<T>().map(Diagnose::diagnosis)
    }
    const KNOWN: &[Catalog] = &[
        of::<crate::error::UsageError>,
        of::<crate::error::RemoteError>,
        of::<crate::app::manifest::ManifestError>,
        of::<crate::app::snapshot::SnapshotError>,
        of::<crate::app::transaction::AppError>,
        of::<crate::lab::LabError>,
        of::<crate::host::ConnectError>,
        of::<crate::flake::FlakeError>,
        of::<crate::stage::StageError>,
        of::<crate::host::tailscale::TailscaleError>,
        of::<crate::journal::JournalError>,
        |err| {
            err.downcast_ref::<crate::process::CommandError>()
                .and_then(crate::process::CommandError::escalation)
                .map(Diagnose::diagnosis)
        },
    ];
    KNOWN.iter().find_map(|known| known(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::render;
    use crate::error::Exit;
    use crate::lab::LabError;

    #[test]
    fn domain_errors_render_with_their_hints_and_exit_codes() {
        let err = anyhow::Error::new(LabError::NotRoot).context("cannot start the lab");
        let (text, exit) = render(&err, false, diagnose);
        assert_eq!(
            text,
            "error: cannot start the lab\n  \
             caused by: the lab needs root: it makes network namespaces, mounts and containers\n\
             hint: run it as root, e.g. `sudo berth lab up`\n"
        );
        assert_eq!(exit, Exit::USAGE);
        let stage = crate::stage::StageError::Undeclared {
            what: "node web1".into(),
            asked: crate::stage::Stage::new("staging").unwrap(),
            option: "berth.deployment.stage".into(),
        };
        let (text, exit) = render(&anyhow::Error::new(stage), false, diagnose);
        assert!(text.contains("hint: declare it with"), "{text}");
        assert_eq!(exit, Exit::USAGE);
        let plain = anyhow::anyhow!("disk on fire");
        assert_eq!(render(&plain, false, diagnose).1, Exit::FAILURE);
    }
}
