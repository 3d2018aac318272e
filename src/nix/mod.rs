//! Nix: store paths and the `nix` commands berth runs, as pure builders.

pub mod diff;
pub mod dry_activate;
pub mod profile;
mod store_path;

pub use store_path::{InvalidStorePath, StorePath};

use crate::process::Cmd;

/// The profile that holds a NixOS host's system generations.
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// `nix` with the `nix-command` feature on, so berth works whatever the
/// machine's nix.conf says.
fn nix() -> Cmd {
    Cmd::new("nix").args(["--extra-experimental-features", "nix-command"])
}

/// `nix copy` of `paths` and their closures to `store` (for example
/// `ssh-ng://h1`). Signatures are not required: the deployer built these
/// paths itself and copies them as a trusted user (as deploy-rs does); the
/// destination may substitute what it can from its own caches.
pub fn copy_to(store: &str, paths: &[StorePath], ssh_opts: Option<&str>) -> Cmd {
    let cmd = nix()
        .args([
            "copy",
            "--no-check-sigs",
            "--substitute-on-destination",
            "--to",
            store,
        ])
        .args(paths.iter().map(StorePath::as_str));
    match ssh_opts {
        Some(opts) => cmd.env(crate::env::NIX_SSHOPTS, opts),
        None => cmd,
    }
}

/// Points `profile` at `path`, creating a new generation.
pub fn set_profile(profile: &str, path: &StorePath) -> Cmd {
    Cmd::new("nix-env")
        .args(["-p", profile, "--set"])
        .arg(path.as_str())
}

/// Builds the `out` output of each derivation in one process, in the store
/// the command runs against (here, on a build host or on the target).
/// nix-store prints one path per argument, in argument order, in every Nix
/// version; `!out` keeps it to one even for a derivation with several
/// outputs.
pub fn realise(drvs: &[StorePath]) -> Cmd {
    Cmd::new("nix-store")
        .arg("--realise")
        .args(drvs.iter().map(|drv| format!("{drv}!out")))
}

/// `nix copy` of `paths` from one store straight to another (from a build
/// host to a target): the closure streams through, nothing lands in this
/// machine's store.
pub fn copy_between(from: &str, to: &str, paths: &[StorePath], ssh_opts: &str) -> Cmd {
    nix()
        .args([
            "copy",
            "--no-check-sigs",
            "--substitute-on-destination",
            "--from",
            from,
            "--to",
            to,
        ])
        .args(paths.iter().map(StorePath::as_str))
        .env(crate::env::NIX_SSHOPTS, ssh_opts)
}

/// Whether `path` is valid in the store the command runs against.
pub fn is_valid(path: &StorePath) -> Cmd {
    Cmd::new("nix-store").args(["--check-validity", path.as_str()])
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-berth";

    #[test]
    fn copy_argv() {
        let path = StorePath::new(P).unwrap();
        let cmd = copy_to("ssh-ng://h1", &[path], Some("-F /lab/ssh_config"));
        assert_eq!(
            cmd.argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--no-check-sigs",
                "--substitute-on-destination",
                "--to",
                "ssh-ng://h1",
                P
            ]
        );
        assert_eq!(
            cmd.get_env(),
            [("NIX_SSHOPTS".into(), "-F /lab/ssh_config".into())]
        );
    }

    #[test]
    fn profile_argv() {
        let path = StorePath::new(P).unwrap();
        assert_eq!(
            set_profile(SYSTEM_PROFILE, &path).argv(),
            ["nix-env", "-p", SYSTEM_PROFILE, "--set", P]
        );
        assert_eq!(is_valid(&path).argv(), ["nix-store", "--check-validity", P]);
    }
}
