//! berth: deploy NixOS hosts and the apps on them, with magic rollback.
//!
//! The binary is a thin shell over this library so that integration tests
//! drive the same code (the lab, hosts, the command runner) that users run.

pub mod agent;
pub mod app;
pub mod cli;
pub mod command;
pub mod context;
pub mod deploy;
pub mod diagnostics;
pub mod env;
pub mod error;
pub mod flake;
#[cfg(test)]
mod fuzz;
pub mod github;
pub mod host;
pub mod journal;
pub mod lab;
pub mod nix;
pub mod notify;
pub mod output;
pub mod process;
pub mod progress;
pub mod stage;
pub mod state;
#[cfg(test)]
mod testing;
