//! Hosts berth works on: one [`Host`] trait, reached over SSH ([`SshHost`])
//! or being this machine ([`LocalHost`]).

mod local;
mod ssh;
pub mod tailscale;

pub use local::LocalHost;
pub use ssh::{ConnectError, Destination, SshHost, SshSettings, UnsupportedSshOption};

use std::path::Path;

use async_trait::async_trait;

use crate::nix::StorePath;
use crate::process::{Cmd, CommandError, JobLog, Output};

/// A machine berth runs commands on and copies closures to.
#[async_trait]
pub trait Host: Send + Sync {
    /// The name used in messages and logs.
    fn name(&self) -> &str;

    /// This host's recent output, for showing the last lines on failure.
    fn log(&self) -> &JobLog;

    /// Runs `cmd` on the host to the end, whatever its exit status.
    async fn output(&self, cmd: &Cmd) -> Result<Output, CommandError>;

    /// Starts `cmd` (not as root) on the host, to run until it ends or the
    /// returned [`Background`] is dropped; its lines go to `log` as they
    /// come. `None` where the host cannot (this machine, for `converge`).
    fn start(&self, _cmd: Cmd, _log: JobLog) -> Option<Background> {
        None
    }

    /// Copies `paths` and their closures into the host's Nix store.
    async fn copy_closure(&self, paths: &[StorePath]) -> Result<(), CommandError>;

    /// Copies derivations (`.drv`) and their closures, to build there.
    async fn copy_derivations(&self, drvs: &[StorePath]) -> Result<(), CommandError>;

    /// Signs `paths` and their closures in the host's store with the
    /// secret key in `key_file`, a file on this machine. Here, this runs
    /// on the host itself; [`SshHost`] signs from this machine instead, so
    /// the key never leaves it.
    async fn sign_closure(&self, key_file: &Path, paths: &[StorePath]) -> Result<(), CommandError> {
        self.run(&crate::nix::sign(key_file, paths, None)).await?;
        Ok(())
    }

    /// Runs `cmd` on the host; a non-zero exit is an error.
    async fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        self.output(cmd).await?.check()
    }

    /// The contents of a file on the host.
    async fn read_file(&self, path: &Path) -> Result<Vec<u8>, CommandError> {
        Ok(self.run(&Cmd::new("cat").arg("--").arg(path)).await?.stdout)
    }
}

/// A command running on a host in the background (a peer cache): stopped,
/// its channel closed, when this is dropped.
pub struct Background(tokio::task::JoinHandle<Result<Output, CommandError>>);

impl Background {
    pub fn spawn(
        run: impl std::future::Future<Output = Result<Output, CommandError>> + Send + 'static,
    ) -> Background {
        Background(tokio::spawn(run))
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        !self.0.is_finished()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}
