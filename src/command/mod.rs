//! One module per command: its clap arguments and its `run`.

pub mod completions;
pub mod lab;
pub mod man;
