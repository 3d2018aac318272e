//! Per-host progress: a spinner line per host on a terminal, plain
//! `host: message` lines otherwise (and nothing extra with `--json`).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Printer;

/// Progress of a fleet.
pub struct Progress {
    multi: Option<MultiProgress>,
    printer: Printer,
}

impl Progress {
    /// Spinners only when a person watches stderr and no NDJSON is wanted.
    pub fn new(printer: Printer) -> Progress {
        let multi = (!printer.json() && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { multi, printer }
    }

    /// The progress line of one host.
    pub fn host(&self, name: &str) -> HostProgress {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
                    .expect("a valid template"),
            );
            bar.set_prefix(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        HostProgress {
            bar,
            name: name.to_owned(),
            printer: self.printer,
        }
    }
}

/// One host's line.
pub struct HostProgress {
    bar: Option<ProgressBar>,
    name: String,
    printer: Printer,
}

impl HostProgress {
    pub fn phase(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_owned()),
            None => self.printer.line(format!("{}: {message}", self.name)),
        }
    }

    /// Leaves the line with how it ended.
    pub fn finish(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(message.to_owned());
        }
    }
}
