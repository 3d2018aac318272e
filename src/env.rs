//! Every environment variable berth reads, declared once.

/// An ssh_config file for every SSH use, berth's own and `nix copy`'s
/// (`--ssh-config`). Lets lab aliases such as `h1` work as a target host.
pub const BERTH_SSH_CONFIG: &str = "BERTH_SSH_CONFIG";

/// Where `berth lab` keeps what it made (`--lab-dir`).
pub const BERTH_LAB_DIR: &str = "BERTH_LAB_DIR";

/// Any value turns colour off unless `--color always` is given
/// (<https://no-color.org>).
pub const NO_COLOR: &str = "NO_COLOR";

/// A `tracing` filter; overrides `-v`.
pub const RUST_LOG: &str = "RUST_LOG";

/// Extra options Nix passes to `ssh`; berth sets it for `nix copy` so the copy
/// rides the host's multiplexed connection.
pub const NIX_SSHOPTS: &str = "NIX_SSHOPTS";
