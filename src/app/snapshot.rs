//! SQLite snapshots (to be written).
