//! [`LocalHost`]: this machine, as a deploy target.

use async_trait::async_trait;

use super::Host;
use crate::nix::StorePath;
use crate::process::{self, Cmd, CommandError, JobLog, Output, Via};

/// This machine. Its store is the deployer's, so copying is a no-op.
#[derive(Debug, Default)]
pub struct LocalHost {
    log: JobLog,
}

impl LocalHost {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Host for LocalHost {
    fn name(&self) -> &str {
        "localhost"
    }

    fn log(&self) -> &JobLog {
        &self.log
    }

    async fn output(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        process::output(cmd, Via::Local, &self.log).await
    }

    async fn copy_closure(&self, _paths: &[StorePath]) -> Result<(), CommandError> {
        Ok(())
    }

    async fn copy_derivations(&self, _drvs: &[StorePath]) -> Result<(), CommandError> {
        Ok(())
    }
}
