//! What errors are made of, below every layer: berth's exit codes, the
//! errors of how berth was called and of what an agent reported, how
//! refused input is shown, and [`Diagnose`], what an error tells the
//! renderer (`diagnostics`) beyond its message. Domain code builds its
//! errors from this module and never from the renderer.

use std::error::Error as StdError;

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
    /// From what the agent wrote on stderr (berth's rendered error).
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

/// What an error tells beyond its message: what to do about it, and
/// whether it was bad input (exit 2, nothing changed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    pub hint: Option<String>,
    pub usage: bool,
}

/// An error that knows its [`Diagnosis`]. The command layer lists the
/// types that implement it (`command::diagnose`), so the renderer knows
/// this trait and no error type.
pub trait Diagnose: StdError {
    fn diagnosis(&self) -> Diagnosis;
}

impl Diagnose for UsageError {
    fn diagnosis(&self) -> Diagnosis {
        Diagnosis {
            hint: self.hint.clone(),
            usage: true,
        }
    }
}

impl Diagnose for RemoteError {
    fn diagnosis(&self) -> Diagnosis {
        Diagnosis {
            hint: self.hint.clone(),
            usage: self.usage,
        }
    }
}
