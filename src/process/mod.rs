//! The one place berth starts processes, on this machine or on a host.
//!
//! Everything else describes a command with [`Cmd`] (pure, unit-tested on its
//! exact argv) and hands it to [`exec`]. Remote commands stay argv: each word
//! is escaped by [`quote`] and nothing else.

mod escalation;
mod exec;
mod quote;
mod spec;

pub use escalation::{
    read_password, Escalation, EscalationError, Secret, SudoMode, SudoPassword, SudoRefusal,
};
pub use exec::{output, spawn_detached, CommandError, ExitStatus, JobLog, Output, Stream, Via};
pub use quote::{quote, quote_line};
pub use spec::{Cmd, StdioMode};

use std::path::{Path, PathBuf};

/// Where `program` is: itself if it holds a slash, else the first executable
/// of that name on `PATH`, `/usr/sbin` or `/sbin` (daemons live there).
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Reads `/proc/PID/stat`: the process state letter and parent pid.
pub(crate) fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name sits in parentheses and may hold anything.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// When `pid` started, in clock ticks since boot (`/proc/PID/stat` field
/// 22): with the pid, it names one process even after pids wrap around.
pub fn start_time(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // Fields after the name start at field 3 (the state).
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether the process `pid` that started at `start` (from [`start_time`])
/// still runs: a recycled pid has another start time.
pub fn alive_since(pid: u32, start: Option<u64>) -> bool {
    alive(pid) && (start.is_none() || start_time(pid) == start)
}

/// Reaps `pid` if it is a finished child of this process.
fn reap(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG only inspects our own children.
    unsafe {
        libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
    }
}

/// Whether `pid` exists and has not exited (a zombie has exited).
pub fn alive(pid: u32) -> bool {
    reap(pid);
    matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}
