//! The one error renderer (`error: …`, its causes, `hint: …`) and berth's
//! exit codes, documented in docs/cli.md.

use std::error::Error as StdError;
use std::fmt::Write;

use crate::flake::FlakeError;
use crate::host::tailscale::TailscaleError;
use crate::host::ConnectError;
use crate::lab::LabError;
use crate::output::{paint, Style};

/// A process exit code with a meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exit(pub u8);

impl Exit {
    pub const SUCCESS: Exit = Exit(0);
    /// The operation failed (a deploy failed and was rolled back).
    pub const FAILURE: Exit = Exit(1);
    /// Usage or configuration error: bad flags or input, missing
    /// prerequisites. Nothing was changed.
    pub const USAGE: Exit = Exit(2);
    /// Rolled back, but the host needs attention.
    pub const ATTENTION: Exit = Exit(3);
    /// A lock is held by someone else (`berth lock`, `berth app deploy`).
    pub const HELD: Exit = Exit(2);
    /// Waited for a lock and it was not let go in time.
    pub const TIMED_OUT: Exit = Exit(4);
    /// Interrupted (Ctrl-C).
    pub const INTERRUPTED: Exit = Exit(130);
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.0)
    }
}

/// `text` as it may appear in a message: control characters escaped
/// (`\n`, `\u{1b}`), so that input cannot break the message's lines or
/// drive the terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One character of refused input, for a message: `'$'`, `'\n'`, and
/// with its code point when it is not ASCII, so that a lookalike shows
/// (`'е' (U+0435)` is not an `e`).
pub fn character(c: char) -> String {
    if c.is_ascii() {
        format!("{c:?}")
    } else {
        format!("{c:?} (U+{:04X})", u32::from(c))
    }
}

/// An error in how berth was called, with what to do instead.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    pub message: String,
    pub hint: Option<String>,
}

impl UsageError {
    pub fn new(message: impl Into<String>) -> Self {
        UsageError {
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// An error the agent on a host reported (its `error:` text, and hint).
#[derive(Debug, thiserror::Error)]
#[error("on {host}: {message}")]
pub struct RemoteError {
    pub host: String,
    pub message: String,
    pub hint: Option<String>,
    /// The agent exited 2: bad input, nothing changed.
    pub usage: bool,
}

impl RemoteError {
    /// From what the agent wrote on stderr (rendered by [`render`]).
    pub fn from_agent(host: &str, stderr: &[u8], code: Option<i32>) -> RemoteError {
        let text = String::from_utf8_lossy(stderr);
        let mut message = Vec::new();
        let mut hint = None;
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("hint: ") {
                hint = Some(h.to_owned());
            } else if let Some(m) = line.strip_prefix("error: ") {
                message.push(m.to_owned());
            } else if !message.is_empty() {
                message.push(line.to_owned());
            }
        }
        if message.is_empty() {
            message.push(format!(
                "the berth agent failed ({}): {}",
                code.map_or("killed".into(), |c| format!("exit {c}")),
                text.trim()
            ));
        }
        RemoteError {
            host: host.to_owned(),
            message: message.join("\n"),
            hint,
            usage: code == Some(i32::from(Exit::USAGE.0)),
        }
    }
}

/// What berth knows about one error in a chain: a hint, and whether it is a
/// usage error.
fn diagnose(err: &(dyn StdError + 'static)) -> (Option<String>, bool) {
    if let Some(e) = err.downcast_ref::<UsageError>() {
        return (e.hint.clone(), true);
    }
    if let Some(e) = err.downcast_ref::<RemoteError>() {
        return (e.hint.clone(), e.usage);
    }
    if let Some(e) = err.downcast_ref::<crate::app::manifest::ManifestError>() {
        return (e.hint(), true);
    }
    if let Some(e) = err.downcast_ref::<crate::app::snapshot::SnapshotError>() {
        return (e.hint(), false);
    }
    if let Some(e) = err.downcast_ref::<crate::app::transaction::AppError>() {
        return (e.hint(), e.is_usage());
    }
    if let Some(e) = err.downcast_ref::<LabError>() {
        return (e.hint(), e.is_usage());
    }
    if let Some(e) = err.downcast_ref::<ConnectError>() {
        return (e.hint(), false);
    }
    if let Some(e) = err.downcast_ref::<FlakeError>() {
        return (e.hint(), e.is_usage());
    }
    if let Some(e) = err.downcast_ref::<crate::stage::StageError>() {
        return (Some(e.hint()), true);
    }
    if let Some(e) = err.downcast_ref::<TailscaleError>() {
        return (e.hint(), e.is_usage());
    }
    if let Some(e) = err.downcast_ref::<crate::journal::JournalError>() {
        return (e.hint(), e.is_usage());
    }
    (None, false)
}

/// Renders `err` as berth prints it, and the exit code it maps to.
pub fn render(err: &anyhow::Error, color: bool) -> (String, Exit) {
    let mut out = String::new();
    let mut hints = Vec::new();
    let mut exit = Exit::FAILURE;
    for (i, cause) in err.chain().enumerate() {
        let (hint, usage) = diagnose(cause);
        hints.extend(hint);
        if usage {
            exit = Exit::USAGE;
        }
        let text = indent(&cause.to_string());
        if i == 0 {
            let _ = writeln!(out, "{} {text}", paint("error:", Style::Error, color));
        } else {
            let _ = writeln!(out, "  caused by: {text}");
        }
    }
    for hint in hints {
        let _ = writeln!(
            out,
            "{} {}",
            paint("hint:", Style::Hint, color),
            indent(&hint)
        );
    }
    (out, exit)
}

/// Continuation lines of a multi-line message, indented under its first.
fn indent(text: &str) -> String {
    text.trim_end().replace('\n', "\n  ")
}

/// The causes of `err` below itself, joined, for a one-line report.
pub fn causes(err: &(dyn StdError + 'static)) -> String {
    let mut out = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push(cause.to_string().trim().replace('\n', " "));
        source = cause.source();
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn error_causes_then_hint() {
        let err = anyhow::Error::new(LabError::NotRoot).context("cannot start the lab");
        let (text, exit) = render(&err, false);
        assert_eq!(
            text,
            "error: cannot start the lab\n  \
             caused by: the lab needs root: it makes network namespaces, mounts and containers\n\
             hint: run it as root, e.g. `sudo berth lab up`\n"
        );
        assert_eq!(exit, Exit::USAGE);
    }

    #[test]
    fn plain_errors_fail_with_one() {
        let err = Err::<(), _>(std::io::Error::other("disk on fire"))
            .context("could not write state")
            .unwrap_err();
        let (text, exit) = render(&err, false);
        assert_eq!(
            text,
            "error: could not write state\n  caused by: disk on fire\n"
        );
        assert_eq!(exit, Exit::FAILURE);
    }

    #[test]
    fn multi_line_messages_stay_under_their_label() {
        let err = anyhow::Error::new(UsageError::new("two\nlines").hint("do\nthis"));
        let (text, _) = render(&err, false);
        assert_eq!(text, "error: two\n  lines\nhint: do\n  this\n");
    }

    #[test]
    fn colour_only_when_asked() {
        let err = anyhow::anyhow!("x");
        assert!(render(&err, true)
            .0
            .starts_with("\x1b[1;31merror:\x1b[0m x"));
        assert!(!render(&err, false).0.contains('\x1b'));
    }
}
