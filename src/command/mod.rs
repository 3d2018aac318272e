//! One module per command: its clap arguments and its `run`.

pub mod agent;
pub mod completions;
pub mod deploy;
pub mod history;
pub mod lab;
pub mod man;
mod nodes;
pub mod plan;
pub mod rollback;
pub mod status;
