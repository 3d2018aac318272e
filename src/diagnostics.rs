//! The one error renderer: `error: …`, its causes, `hint: …`, and the exit
//! code (docs/cli.md). It knows errors only through [`Diagnose`]; which
//! types implement it is the command layer's list.

use std::error::Error as StdError;
use std::fmt::Write;

use crate::error::{Diagnosis, Exit};
use crate::output::{paint, Style};

/// Finds what an error of a chain tells beyond its message, if its type
/// tells anything ([`crate::error::Diagnose`]).
pub type Catalog = fn(&(dyn StdError + 'static)) -> Option<Diagnosis>;

/// Renders `err` as berth prints it, and the exit code it maps to;
/// `diagnose` says what each error of its chain tells beyond its message.
pub fn render(err: &anyhow::Error, color: bool, diagnose: Catalog) -> (String, Exit) {
    let mut out = String::new();
    let mut hints = Vec::new();
    let mut exit = Exit::FAILURE;
    for (i, cause) in err.chain().enumerate() {
        let Diagnosis { hint, usage } = diagnose(cause).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    use crate::error::{Diagnose, UsageError};

    /// A catalog that knows [`UsageError`] only.
    fn usage(err: &(dyn StdError + 'static)) -> Option<Diagnosis> {
        err.downcast_ref::<UsageError>().map(Diagnose::diagnosis)
    }

    #[test]
    fn error_causes_then_hint() {
        let err = anyhow::Error::new(UsageError::new("no such lab").hint("run berth lab up"))
            .context("cannot reach h1");
        let (text, exit) = render(&err, false, usage);
        assert_eq!(
            text,
            "error: cannot reach h1\n  caused by: no such lab\nhint: run berth lab up\n"
        );
        assert_eq!(exit, Exit::USAGE);
    }

    #[test]
    fn plain_errors_fail_with_one() {
        let err = Err::<(), _>(std::io::Error::other("disk on fire"))
            .context("could not write state")
            .unwrap_err();
        let (text, exit) = render(&err, false, usage);
        assert_eq!(
            text,
            "error: could not write state\n  caused by: disk on fire\n"
        );
        assert_eq!(exit, Exit::FAILURE);
    }

    #[test]
    fn multi_line_messages_stay_under_their_label() {
        let err = anyhow::Error::new(UsageError::new("two\nlines").hint("do\nthis"));
        let (text, _) = render(&err, false, usage);
        assert_eq!(text, "error: two\n  lines\nhint: do\n  this\n");
    }

    #[test]
    fn colour_only_when_asked() {
        let err = anyhow::anyhow!("x");
        assert!(render(&err, true, usage)
            .0
            .starts_with("\x1b[1;31merror:\x1b[0m x"));
        assert!(!render(&err, false, usage).0.contains('\x1b'));
    }
}
