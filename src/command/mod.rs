//! One module per command: its clap arguments and its `run`.

pub mod agent;
pub mod app;
pub mod ci_gate;
pub mod completions;
pub mod converge;
pub mod deploy;
pub mod exec;
pub mod history;
pub mod keys;
pub mod lab;
pub mod lock;
pub mod logs;
pub mod man;
mod nodes;
pub mod plan;
pub mod rollback;
pub mod smoke;
pub mod snapshot;
pub mod status;
