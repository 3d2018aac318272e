//! Where berth's output goes: NDJSON events on stdout with `--json`, lines
//! for humans on stderr, colour only when wanted.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// `--color`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour on a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour text written to stderr.
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::env::var_os(crate::env::NO_COLOR).is_none_or(|v| v.is_empty())
                    && std::io::stderr().is_terminal()
            }
        }
    }
}

/// A style for a word on stderr; text never depends on it to be understood.
#[derive(Clone, Copy)]
pub enum Style {
    Error,
    Warning,
    Hint,
    Bold,
}

/// `text` in `style` if `color`, else as it is.
/// A commit's name as people read it (and as an app's health answer must
/// carry it): its first 12 characters, or all of a shorter name.
pub fn short_commit(name: &str) -> &str {
    name.get(..12).unwrap_or(name)
}

pub fn paint(text: &str, style: Style, color: bool) -> String {
    if !color {
        return text.to_owned();
    }
    let code = match style {
        Style::Error => "1;31",
        Style::Warning => "1;33",
        Style::Hint => "1;36",
        Style::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The one writer of berth's user-facing output.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    json: bool,
    color: bool,
}

impl Printer {
    pub fn new(json: bool, color: bool) -> Self {
        Printer { json, color }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    pub fn color(&self) -> bool {
        self.color
    }

    /// With `--json`, writes `{"event": name, ...data}` as one line on stdout.
    pub fn event<T: Serialize>(&self, name: &str, data: &T) {
        if !self.json {
            return;
        }
        let mut object = serde_json::Map::new();
        object.insert("event".into(), name.into());
        match serde_json::to_value(data) {
            Ok(serde_json::Value::Object(fields)) => object.extend(fields),
            Ok(other) => {
                object.insert("data".into(), other);
            }
            Err(err) => {
                object.insert("error".into(), err.to_string().into());
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, &object);
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
    }

    /// A line of what a host printed (`berth logs`, `berth exec`), on
    /// stdout where data goes; an error once stdout is closed (`| head`).
    pub fn data(&self, text: &str) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.write_all(b"\n")?;
        stdout.flush()
    }

    /// A line for humans, on stderr.
    pub fn line(&self, text: impl AsRef<str>) {
        let _ = writeln!(std::io::stderr().lock(), "{}", text.as_ref());
    }

    pub fn warn(&self, text: impl AsRef<str>) {
        self.line(format!(
            "{} {}",
            paint("warning:", Style::Warning, self.color),
            text.as_ref()
        ));
    }

    pub fn bold(&self, text: &str) -> String {
        paint(text, Style::Bold, self.color)
    }
}
