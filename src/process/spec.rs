//! [`Cmd`]: what to run, built by pure functions and checked on its argv.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
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
    /// As [`StdioMode::Capture`], but stdout lines go only to the job's
    /// log and its watcher and are not kept: for a command that runs until
    /// it is stopped (`journalctl --follow`). Stderr is still captured.
    Stream,
}

/// A command to run: program, arguments, environment, working directory.
#[derive(Clone, PartialEq, Eq)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    stdio: StdioMode,
    timeout: Option<Duration>,
    root: bool,
}

/// Everything but stdin's bytes, which may hold a password.
impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmd")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("cwd", &self.cwd)
            .field(
                "stdin",
                &self.stdin.as_ref().map(|b| format!("<{} bytes>", b.len())),
            )
            .field("stdio", &self.stdio)
            .field("timeout", &self.timeout)
            .field("root", &self.root)
            .finish()
    }
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
            root: false,
        }
    }

    /// Marks the command as one that must run as root on the host: a host
    /// reached as another user puts its escalation (sudo) in front.
    pub fn as_root(mut self) -> Self {
        self.root = true;
        self
    }

    pub fn needs_root(&self) -> bool {
        self.root
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

    /// Sets a variable; `key` is a variable name (a `=` in it would split
    /// the pair elsewhere: the manifest checks the names it gives).
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
    /// `env` reads every word holding `=` before the program as a variable,
    /// so a program whose name holds one is started by `sh -c 'exec "$@"'`.
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
            if self.program.as_bytes().contains(&b'=') {
                argv.extend(["sh", "-c", "exec \"$@\"", "sh"].map(OsString::from));
            }
        }
        argv.extend(self.argv().into_iter().map(OsStr::to_owned));
        argv
    }

    /// Which part of the command holds a NUL byte, which no process can be
    /// given (in its argv, environment or working directory).
    pub fn nul_byte(&self) -> Option<String> {
        let has_nul = |s: &OsStr| s.as_bytes().contains(&0);
        if has_nul(&self.program) {
            return Some("the program".into());
        }
        if let Some(i) = self.args.iter().position(|a| has_nul(a)) {
            return Some(format!("argument {}", i + 1));
        }
        if let Some((k, _)) = self.env.iter().find(|(k, v)| has_nul(k) || has_nul(v)) {
            return Some(format!("the variable {}", k.to_string_lossy()));
        }
        if self.cwd.as_deref().is_some_and(|d| has_nul(d.as_os_str())) {
            return Some("the working directory".into());
        }
        None
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
    use std::os::unix::ffi::OsStringExt;

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
    fn a_program_with_an_equals_sign_in_its_name_is_not_a_variable() {
        // Without env, the shell would read `A=b` as an assignment; with
        // env, env would.
        assert_eq!(Cmd::new("A=b").arg("x").remote_line(), "'A=b' x");
        assert_eq!(
            Cmd::new("A=b").arg("x").env("K", "v").remote_line(),
            "env -- K=v sh -c 'exec \"$@\"' sh A=b x"
        );
        assert_eq!(Cmd::new("if").remote_line(), "'if'");
    }

    /// What came out on the "host" when `shell -c LINE` ran a helper: its
    /// `$0` and arguments, working directory and environment.
    struct Seen {
        argv: Vec<Vec<u8>>,
        cwd: Vec<u8>,
        env: Vec<Vec<u8>>,
    }

    /// Runs `cmd.remote_line()` as sshd does (`$SHELL -c LINE`), with
    /// `bin` first on PATH; the program is a helper script there that
    /// writes what it was given into `out`.
    fn run_remote_line(shell: &str, cmd: &Cmd, bin: &Path, out: &Path) -> Result<Seen, String> {
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let run = std::process::Command::new(shell)
            .arg("-c")
            .arg(cmd.remote_line())
            .env("PATH", path)
            .current_dir("/")
            .output()
            .unwrap();
        if !run.status.success() {
            return Err(format!(
                "{shell} -c {:?}: {}",
                cmd.remote_line(),
                String::from_utf8_lossy(&run.stderr)
            ));
        }
        let line = cmd.remote_line();
        let read = |name: &str| {
            std::fs::read(out.join(name))
                .map_err(|e| format!("{shell} -c {line:?} did not run the helper: {e}"))
        };
        let fields = |bytes: Vec<u8>| {
            let mut v: Vec<Vec<u8>> = bytes.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
            v.pop();
            v
        };
        let mut cwd = read("cwd")?;
        cwd.pop(); // pwd's newline
        Ok(Seen {
            argv: fields(read("argv")?),
            cwd,
            env: fields(read("env")?),
        })
    }

    /// A helper script named `name` in `bin` that writes into `out`.
    fn helper(bin: &Path, name: &[u8], out: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let out = super::super::quote(out.as_os_str());
        let out = out.to_str().unwrap();
        let script = format!(
            "#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" > {out}/argv\npwd -P > {out}/cwd\nenv -0 > {out}/env\n"
        );
        let path = bin.join(OsStr::from_bytes(name));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A name a file can have: not empty, `.` or `..`, without `/`.
    fn file_name() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::strategy::Strategy;
        crate::testing::prop::bytes(20).prop_filter("a file name", |n| {
            !n.is_empty() && n != b"." && n != b".." && !n.contains(&b'/')
        })
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(128))]

        /// What goes through `remote_line` comes out on the host as the
        /// same words, variables and directory, for any bytes but NUL, in
        /// dash and in bash.
        #[test]
        fn prop_remote_line_reaches_the_host_word_for_word(
            name in file_name(),
            by_path in proptest::bool::ANY,
            args in proptest::collection::vec(crate::testing::prop::bytes(16), 0..5),
            env in proptest::collection::btree_map("BT_[A-Z0-9_]{0,6}", crate::testing::prop::bytes(16), 0..3),
            cwd in proptest::option::of(file_name()),
            bash in proptest::bool::ANY,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().canonicalize().unwrap();
            let (bin, out) = (root.join("bin"), root.join("out"));
            std::fs::create_dir(&bin).unwrap();
            std::fs::create_dir(&out).unwrap();
            // Found on PATH by a name no builtin has, or by its path.
            let name = if by_path { name } else { [&b"berth_t_"[..], &name].concat() };
            let script = helper(&bin, &name, &out);
            let program = if by_path { script.clone().into_os_string() } else { OsStr::from_bytes(&name).to_owned() };
            let mut cmd = Cmd::new(&program).args(args.iter().map(|a| OsStr::from_bytes(a)));
            for (k, v) in &env {
                cmd = cmd.env(k, OsStr::from_bytes(v));
            }
            let dir = cwd.map(|d| root.join(OsStr::from_bytes(&d)));
            if let Some(dir) = &dir {
                std::fs::create_dir(dir).unwrap();
                cmd = cmd.cwd(dir);
            }
            let shell = if bash { "bash" } else { "sh" };
            let seen = run_remote_line(shell, &cmd, &bin, &out).map_err(proptest::test_runner::TestCaseError::fail)?;
            let mut want = vec![script.into_os_string().into_vec()];
            want.extend(args);
            proptest::prop_assert_eq!(seen.argv, want);
            let want_cwd = dir.unwrap_or_else(|| PathBuf::from("/"));
            proptest::prop_assert_eq!(seen.cwd, want_cwd.into_os_string().into_vec());
            for (k, v) in env {
                let pair = [k.as_bytes(), b"=", &v].concat();
                proptest::prop_assert!(seen.env.contains(&pair), "{:?} not in the environment", String::from_utf8_lossy(&pair));
            }
        }
    }

    #[test]
    fn display_quotes_hostile_words() {
        let cmd = Cmd::new("echo").arg("$(id)").arg("");
        assert_eq!(cmd.to_string(), "echo '$(id)' ''");
    }
}
