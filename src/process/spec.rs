//! [`Cmd`]: what to run, built by pure functions and checked on its argv.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::quote::quote_line;

/// Where the child's stdin, stdout and stderr go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdioMode {
    /// Captured, and streamed line by line to tracing and the job's log.
    #[default]
    Capture,
    /// Shared with berth's own terminal (interactive `lab ssh`).
    Inherit,
}

/// A command to run: program, arguments, environment, working directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    stdio: StdioMode,
    timeout: Option<Duration>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            stdio: StdioMode::Capture,
            timeout: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Bytes written to the child's stdin, which is then closed.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn stdio(mut self, mode: StdioMode) -> Self {
        self.stdio = mode;
        self
    }

    /// How long the command may run: past it, the executor stops its whole
    /// process group (SIGTERM, then SIGKILL) and returns
    /// [`super::CommandError::TimedOut`]. Run locally, such a command is
    /// also killed when berth dies (`PR_SET_PDEATHSIG`); over SSH the
    /// remote command is abandoned when its channel is dropped.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    pub fn get_env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    pub fn get_cwd(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    pub fn get_stdin(&self) -> Option<&[u8]> {
        self.stdin.as_deref()
    }

    pub fn get_stdio(&self) -> StdioMode {
        self.stdio
    }

    /// Program and arguments, as a process would see them in `argv`.
    pub fn argv(&self) -> Vec<&OsStr> {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(OsString::as_os_str))
            .collect()
    }

    /// The argv to run on a remote host, where environment and working
    /// directory travel as `env [-C DIR] -- [KEY=VALUE]... PROGRAM ARGS...`.
    pub fn remote_argv(&self) -> Vec<OsString> {
        let mut argv = Vec::new();
        if !self.env.is_empty() || self.cwd.is_some() {
            argv.push(OsString::from("env"));
            if let Some(cwd) = &self.cwd {
                argv.push("-C".into());
                argv.push(cwd.into());
            }
            argv.push("--".into());
            for (key, value) in &self.env {
                let mut pair = key.clone();
                pair.push("=");
                pair.push(value);
                argv.push(pair);
            }
        }
        argv.extend(self.argv().into_iter().map(OsStr::to_owned));
        argv
    }

    /// The line a remote login shell runs: [`Cmd::remote_argv`], each word
    /// escaped by [`super::quote`].
    pub fn remote_line(&self) -> OsString {
        quote_line(self.remote_argv())
    }
}

/// The command as a shell would read it, for messages and logs.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote_line(self.argv()).to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_program_then_args() {
        let cmd = Cmd::new("nix").arg("copy").args(["--to", "ssh-ng://h1"]);
        assert_eq!(cmd.argv(), ["nix", "copy", "--to", "ssh-ng://h1"]);
        assert_eq!(cmd.to_string(), "nix copy --to ssh-ng://h1");
    }

    #[test]
    fn remote_argv_without_env_is_argv() {
        let cmd = Cmd::new("printf").arg("%s").arg("a b");
        assert_eq!(cmd.remote_argv(), ["printf", "%s", "a b"]);
        assert_eq!(cmd.remote_line(), "printf %s 'a b'");
    }

    #[test]
    fn remote_argv_carries_env_and_cwd_through_env() {
        let cmd = Cmd::new("git")
            .arg("status")
            .env("GIT_DIR", "/var/lib/my app/repo.git")
            .cwd("/var/lib/my app");
        assert_eq!(
            cmd.remote_argv(),
            [
                "env",
                "-C",
                "/var/lib/my app",
                "--",
                "GIT_DIR=/var/lib/my app/repo.git",
                "git",
                "status"
            ]
        );
        assert_eq!(
            cmd.remote_line(),
            "env -C '/var/lib/my app' -- 'GIT_DIR=/var/lib/my app/repo.git' git status"
        );
    }

    #[test]
    fn display_quotes_hostile_words() {
        let cmd = Cmd::new("echo").arg("$(id)").arg("");
        assert_eq!(cmd.to_string(), "echo '$(id)' ''");
    }
}
