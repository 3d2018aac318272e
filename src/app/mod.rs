//! App deploys: an app whose code lives in git, released on its host as one
//! transaction that the agent runs (lock, exact revision, SQLite snapshot,
//! release swap, health, restore and rollback).

pub mod changes;
pub mod manifest;
pub mod release;
pub mod snapshot;
pub mod transaction;
pub mod unit;
