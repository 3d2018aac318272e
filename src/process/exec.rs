//! The executor: starts a [`Cmd`] on this machine or over a host's SSH
//! connection, streams its output lines to tracing and the job's log, and
//! captures them.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::spec::{Cmd, StdioMode};

/// How many lines of stderr a failure carries.
const STDERR_TAIL_LINES: usize = 20;
/// How long a timed-out command's process group has between SIGTERM and
/// SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How many lines a job's log keeps for "what happened just before it failed".
const JOB_LOG_LINES: usize = 200;

/// Where a command runs.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// On this machine.
    Local,
    /// On a host, over its multiplexed SSH connection.
    Ssh {
        session: &'a openssh::Session,
        host: &'a str,
    },
}

impl Via<'_> {
    fn host(&self) -> Option<&str> {
        match self {
            Via::Local => None,
            Via::Ssh { host, .. } => Some(host),
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(code) => Some(code),
            ExitStatus::Signal(_) => None,
        }
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(status: std::process::ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exited with status {code}"),
            ExitStatus::Signal(signal) => write!(f, "was killed by signal {signal}"),
        }
    }
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a finished command left behind.
#[derive(Clone, Debug)]
pub struct Output {
    /// The command as a shell would read it.
    pub command: String,
    /// The host it ran on, `None` for this machine.
    pub host: Option<String>,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// The output if the command succeeded, else [`CommandError::Failed`].
    pub fn check(self) -> Result<Output, CommandError> {
        if self.status.success() {
            return Ok(self);
        }
        Err(CommandError::Failed {
            stderr_tail: tail(&self.stderr, STDERR_TAIL_LINES),
            on: On(self.host),
            command: self.command,
            status: self.status,
        })
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// " on HOST", or nothing for this machine.
#[derive(Clone, Debug, Default)]
pub struct On(pub Option<String>);

impl fmt::Display for On {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(host) => write!(f, " on {host}"),
            None => Ok(()),
        }
    }
}

/// A command that could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `{command}`{on}")]
    Spawn {
        command: String,
        on: On,
        #[source]
        source: io::Error,
    },
    #[error("`{command}`{on} {status}{}", render_tail(.stderr_tail))]
    Failed {
        command: String,
        on: On,
        status: ExitStatus,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    #[error("`{command}`{on} did not finish within {}s: stopped it", .limit.as_secs())]
    TimedOut {
        command: String,
        on: On,
        limit: Duration,
    },
    /// The host would not run it as root (sudo refused); nothing ran.
    #[error(transparent)]
    Escalation(super::EscalationError),
    #[error("the SSH connection{on} failed while running `{command}` (or it exited with 255)")]
    Ssh {
        command: String,
        on: On,
        #[source]
        source: openssh::Error,
    },
}

impl CommandError {
    /// The exit status of a command that ran and failed.
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            CommandError::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Why the host would not run it as root, if that is what happened.
    pub fn escalation(&self) -> Option<&super::EscalationError> {
        match self {
            CommandError::Escalation(err) => Some(err),
            _ => None,
        }
    }
}

fn render_tail(tail: &str) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut out = String::from("; its stderr ended with:");
    for line in tail.lines() {
        out.push_str("\n    ");
        out.push_str(line);
    }
    out
}

/// The last `n` lines of `bytes`, lossily decoded.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The recent output of one job (a host's deploy, a lab host's start), kept
/// so a failure can show its last lines rather than the whole log.
#[derive(Clone, Default)]
pub struct JobLog {
    lines: Arc<Mutex<VecDeque<String>>>,
    /// Sees each line as it comes (a live view of an agent's events).
    watcher: Arc<Mutex<Option<Watcher>>>,
}

type Watcher = Box<dyn Fn(Stream, &str) + Send + Sync>;

impl fmt::Debug for JobLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobLog")
            .field("lines", &self.lines)
            .finish()
    }
}

impl JobLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `watch` with every line pushed from now on (replacing an
    /// earlier watcher).
    pub fn watch(&self, watch: impl Fn(Stream, &str) + Send + Sync + 'static) {
        *self.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(watch));
    }

    pub fn push(&self, stream: Stream, line: &str) {
        if let Some(watch) = &*self.watcher.lock().unwrap_or_else(|e| e.into_inner()) {
            watch(stream, line);
        }
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == JOB_LOG_LINES {
            lines.pop_front();
        }
        let marker = match stream {
            Stream::Stdout => "",
            Stream::Stderr => "! ",
        };
        lines.push_back(format!("{marker}{line}"));
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// Runs `cmd` to the end, whatever its exit status; [`Output::check`] turns
/// a failure into an error.
pub async fn output(cmd: &Cmd, via: Via<'_>, log: &JobLog) -> Result<Output, CommandError> {
    let command = cmd.to_string();
    let on = On(via.host().map(str::to_owned));
    if let Some(part) = cmd.nul_byte() {
        return Err(CommandError::Spawn {
            command,
            on,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{part} holds a NUL byte, which no process can be given"),
            ),
        });
    }
    tracing::debug!(host = via.host(), "running {command}");
    let timed_out = |limit| CommandError::TimedOut {
        command: command.clone(),
        on: on.clone(),
        limit,
    };
    let (status, stdout, stderr) = match via {
        Via::Local => match run_local(cmd, log).await {
            Ok(finished) => finished,
            Err(Local::TimedOut(limit)) => return Err(timed_out(limit)),
            Err(Local::Io(source)) => {
                return Err(CommandError::Spawn {
                    command: command.clone(),
                    on: on.clone(),
                    source,
                })
            }
        },
        Via::Ssh { session, host } => {
            let run = run_ssh(cmd, session, host, log);
            let finished = match cmd.get_timeout() {
                // Dropping the remote command closes its channel.
                Some(limit) => tokio::time::timeout(limit, run)
                    .await
                    .map_err(|_| timed_out(limit))?,
                None => run.await,
            };
            finished.map_err(|source| CommandError::Ssh {
                command: command.clone(),
                on: on.clone(),
                source,
            })?
        }
    };
    tracing::debug!(host = via.host(), "{command} {status}");
    Ok(Output {
        command,
        host: on.0,
        status,
        stdout,
        stderr,
    })
}

type Finished = (ExitStatus, Vec<u8>, Vec<u8>);

/// Why a local command has no output.
enum Local {
    Io(io::Error),
    TimedOut(Duration),
}

async fn run_local(cmd: &Cmd, log: &JobLog) -> Result<Finished, Local> {
    let mut command = tokio::process::Command::new(cmd.program());
    command
        .args(cmd.get_args())
        .envs(cmd.get_env().iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    if let Some(cwd) = cmd.get_cwd() {
        command.current_dir(cwd);
    }
    if cmd.get_stdio() == StdioMode::Inherit {
        let status = command.status().await.map_err(Local::Io)?;
        return Ok((status.into(), Vec::new(), Vec::new()));
    }
    command
        .stdin(if cmd.get_stdin().is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if cmd.get_timeout().is_some() {
        // Its own group, so that what it started stops with it; and it dies
        // with berth, so that a berth killed mid-way (an agent in a switch)
        // leaves nothing running beside whoever rolls back after it.
        command.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe, and the closure
        // allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // berth died before the line above: go with it.
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().map_err(Local::Io)?;
    let pid = child.id();
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let finish = async {
        let (_, stdout, stderr) = tokio::try_join!(
            feed(stdin, cmd.get_stdin()),
            pump(stdout, Stream::Stdout, keeps_stdout(cmd), None, log),
            pump(stderr, Stream::Stderr, true, None, log),
        )?;
        let status = child.wait().await?;
        Ok::<_, io::Error>((status.into(), stdout, stderr))
    };
    let Some(limit) = cmd.get_timeout() else {
        return finish.await.map_err(Local::Io);
    };
    if let Ok(finished) = tokio::time::timeout(limit, finish).await {
        return finished.map_err(Local::Io);
    }
    if let Some(pid) = pid {
        stop_group(pid).await;
    }
    Err(Local::TimedOut(limit))
}

/// Stops the process group `pgid`: SIGTERM, then SIGKILL to whatever is
/// left after [`STOP_GRACE`].
async fn stop_group(pgid: u32) {
    let signal_group = |signal| {
        // SAFETY: kill(2) has no memory effects; the group is one this
        // executor made for a child it started.
        unsafe { libc::kill(-(pgid as libc::pid_t), signal) == 0 }
    };
    if !signal_group(libc::SIGTERM) {
        return;
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    // Signal 0 only asks whether any member is left.
    while signal_group(0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(libc::SIGKILL);
}

async fn run_ssh(
    cmd: &Cmd,
    session: &openssh::Session,
    host: &str,
    log: &JobLog,
) -> Result<Finished, openssh::Error> {
    let mut command = session.raw_command(cmd.remote_line());
    command
        .stdin(if cmd.get_stdin().is_some() {
            openssh::Stdio::piped()
        } else {
            openssh::Stdio::null()
        })
        .stdout(openssh::Stdio::piped())
        .stderr(openssh::Stdio::piped());
    let mut child = command.spawn().await?;
    let (_, stdout, stderr) = tokio::try_join!(
        feed(child.stdin().take(), cmd.get_stdin()),
        pump(
            child.stdout().take(),
            Stream::Stdout,
            keeps_stdout(cmd),
            Some(host),
            log
        ),
        pump(child.stderr().take(), Stream::Stderr, true, Some(host), log),
    )
    .map_err(openssh::Error::ChildIo)?;
    let status = child.wait().await?;
    Ok((status.into(), stdout, stderr))
}

async fn feed<W: AsyncWrite + Unpin>(stdin: Option<W>, bytes: Option<&[u8]>) -> io::Result<()> {
    if let (Some(mut stdin), Some(bytes)) = (stdin, bytes) {
        stdin.write_all(bytes).await?;
        stdin.shutdown().await?;
    }
    Ok(())
}

/// Whether the command's stdout is kept, not only streamed.
fn keeps_stdout(cmd: &Cmd) -> bool {
    cmd.get_stdio() != StdioMode::Stream
}

/// Reads a stream to its end, logging each line and returning every byte
/// (or nothing, unless `keep`).
async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    stream: Stream,
    keep: bool,
    host: Option<&str>,
    log: &JobLog,
) -> io::Result<Vec<u8>> {
    let Some(reader) = reader else {
        return Ok(Vec::new());
    };
    let mut reader = BufReader::new(reader);
    let mut captured = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(captured);
        }
        if keep {
            captured.extend_from_slice(&line);
        }
        let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line));
        tracing::trace!(host, ?stream, "{text}");
        log.push(stream, &text);
    }
}

/// Starts a long-lived process (a lab host's sshd or container) in its own
/// process group, detached from berth's terminal, with stdout and stderr
/// appended to `log_file`. Returns its pid; the caller records it and later
/// stops exactly that process.
pub fn spawn_detached(cmd: &Cmd, log_file: &Path) -> Result<u32, CommandError> {
    let spawn_error = |source| CommandError::Spawn {
        command: cmd.to_string(),
        on: On(None),
        source,
    };
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(spawn_error)?;
    let mut command = std::process::Command::new(cmd.program());
    command
        .args(cmd.get_args())
        .envs(cmd.get_env().iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(spawn_error)?)
        .stderr(log)
        .process_group(0);
    if let Some(cwd) = cmd.get_cwd() {
        command.current_dir(cwd);
    }
    let child = command.spawn().map_err(spawn_error)?;
    tracing::debug!(pid = child.id(), "started {cmd} in the background");
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cmd: Cmd) -> Result<Output, CommandError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { output(&cmd, Via::Local, &JobLog::new()).await })
    }

    #[test]
    fn a_command_past_its_timeout_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "sleep 300 & echo $! > {0}; trap '' TERM; sleep 300 & echo $! >> {0}; wait",
            pids.display()
        );
        let started = std::time::Instant::now();
        let err = run(Cmd::new("sh")
            .args(["-c", &script])
            .timeout(Duration::from_millis(500)))
        .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("did not finish within 0s: stopped it"),
            "{err}"
        );
        // The shell ignores SIGTERM, so it took SIGKILL after the grace.
        assert!(started.elapsed() < STOP_GRACE + Duration::from_secs(3));
        for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while crate::process::alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                !crate::process::alive(pid),
                "pid {pid} outlived the timeout"
            );
        }
    }

    #[test]
    fn a_command_within_its_timeout_finishes_as_usual() {
        let out = run(Cmd::new("sh")
            .args(["-c", "echo done"])
            .timeout(Duration::from_secs(10)))
        .unwrap();
        assert_eq!(out.stdout, b"done\n");
    }

    #[test]
    fn a_streamed_command_shows_its_lines_and_keeps_only_stderr() {
        let log = JobLog::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines = seen.clone();
        log.watch(move |stream, line| lines.lock().unwrap().push((stream, line.to_owned())));
        let cmd = Cmd::new("sh")
            .args(["-c", "echo one; echo two; echo oops >&2"])
            .stdio(StdioMode::Stream);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt
            .block_on(async { output(&cmd, Via::Local, &log).await })
            .unwrap();
        assert!(out.stdout.is_empty());
        assert_eq!(out.stderr, b"oops\n");
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            [
                (Stream::Stdout, "one".to_owned()),
                (Stream::Stdout, "two".to_owned()),
                (Stream::Stderr, "oops".to_owned()),
            ]
        );
    }

    #[test]
    fn captures_stdout_stderr_and_status() {
        let out = run(Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status, ExitStatus::Code(3));
    }

    #[test]
    fn failure_carries_command_status_and_stderr_tail() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 4";
        let err = run(Cmd::new("sh").args(["-c", script]))
            .unwrap()
            .check()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("`sh -c 'for i in"), "{text}");
        assert!(
            text.contains("exited with status 4; its stderr ended with:"),
            "{text}"
        );
        assert!(text.contains("\n    line30"), "{text}");
        assert!(text.contains("\n    line11\n"), "{text}");
        assert!(!text.contains("line10\n"), "{text}");
        assert_eq!(err.status(), Some(ExitStatus::Code(4)));
    }

    #[test]
    fn signal_is_reported() {
        let out = run(Cmd::new("sh").args(["-c", "kill -9 $$"])).unwrap();
        assert_eq!(out.status, ExitStatus::Signal(9));
        assert_eq!(
            out.check().unwrap_err().to_string(),
            "`sh -c 'kill -9 $$'` was killed by signal 9"
        );
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run(Cmd::new("/nonexistent/berth-test")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
        assert_eq!(err.to_string(), "could not start `/nonexistent/berth-test`");
    }

    /// argv cannot carry a NUL: the command is refused before anything
    /// starts, naming the part that holds it (locally and over SSH alike).
    #[test]
    fn a_nul_byte_is_refused_naming_where_it_is() {
        let cases = [
            (Cmd::new("printf").args(["%s", "a\0b"]), "argument 2"),
            (Cmd::new("print\0f"), "the program"),
            (Cmd::new("true").env("X", "a\0b"), "the variable X"),
            (Cmd::new("true").cwd("/tmp/a\0b"), "the working directory"),
        ];
        for (cmd, part) in cases {
            let err = run(cmd).unwrap_err();
            assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
            let cause = std::error::Error::source(&err).unwrap().to_string();
            assert_eq!(
                cause,
                format!("{part} holds a NUL byte, which no process can be given")
            );
        }
        assert_eq!(Cmd::new("printf").arg("ok").nul_byte(), None);
    }

    #[test]
    fn stdin_env_and_cwd_reach_the_child() {
        let cmd = Cmd::new("sh")
            .args(["-c", "cat; printf ' %s %s' \"$X\" \"$(pwd)\""])
            .env("X", "y z")
            .cwd("/tmp")
            .stdin("hello");
        assert_eq!(run(cmd).unwrap().stdout, b"hello y z /tmp");
    }

    #[test]
    fn job_log_keeps_the_last_lines() {
        let log = JobLog::new();
        for i in 0..(JOB_LOG_LINES + 5) {
            log.push(Stream::Stdout, &format!("l{i}"));
        }
        log.push(Stream::Stderr, "boom");
        assert_eq!(
            log.tail(2),
            [format!("l{}", JOB_LOG_LINES + 4), "! boom".into()]
        );
        assert_eq!(log.tail(1000).len(), JOB_LOG_LINES);
    }
}
