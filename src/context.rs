//! What every command runs with: where its output goes, how it reaches
//! hosts, and which agent it calls there. `cli` makes it from the global
//! flags and the environment; commands only read it.

use crate::host::SshSettings;
use crate::output::Printer;

/// What every command gets: where output goes and how to reach hosts.
#[derive(Debug)]
pub struct Context {
    pub printer: Printer,
    pub ssh: SshSettings,
    /// The agent on the hosts.
    pub agent: crate::agent::Program,
    /// `--ask-sudo-password`: read it from the terminal before reaching a
    /// host whose user is not root.
    pub ask_sudo_password: bool,
}
