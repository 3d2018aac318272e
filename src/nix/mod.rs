//! Nix: store paths and the `nix` commands berth runs, as pure builders.

pub mod diff;
pub mod dry_activate;
pub mod keys;
pub mod nar;
pub mod profile;
pub mod signatures;
mod store_path;

pub use store_path::{InvalidStorePath, StorePath};

use std::path::Path;

use crate::process::Cmd;
use keys::PublicKey;

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

/// `nix-store --realise` of `paths` from the binary caches at `urls` only
/// (a host's peers), each path that one of them has (`--keep-going`: one
/// that none has does not stop the others), with signatures required: Nix takes a path
/// only if its narinfo is signed by one of `keys` (or, with `extra`, by
/// those or a key this host's Nix already trusts) and the NAR it gets
/// hashes to what was signed. A cache that fails is left for the next one
/// (`fallback`), quickly (one retry, short timeouts): a peer that died
/// costs seconds, not the retries meant for a distant cache.
pub fn substitute(paths: &[StorePath], urls: &[String], keys: &[PublicKey], extra: bool) -> Cmd {
    let keys: Vec<&str> = keys.iter().map(PublicKey::as_str).collect();
    let option = |cmd: Cmd, name: &str, value: &str| cmd.args(["--option", name, value]);
    let mut cmd = Cmd::new("nix-store")
        .args(["--realise", "--keep-going"])
        .args(paths.iter().map(StorePath::as_str));
    if !keys.is_empty() || !extra {
        let name = if extra {
            "extra-trusted-public-keys"
        } else {
            "trusted-public-keys"
        };
        cmd = option(cmd, name, &keys.join(" "));
    }
    for (name, value) in [
        ("substituters", urls.join(" ")),
        ("require-sigs", "true".into()),
        ("fallback", "true".into()),
        ("connect-timeout", "5".into()),
        ("stalled-download-timeout", "15".into()),
        ("download-attempts", "2".into()),
        ("narinfo-cache-negative-ttl", "0".into()),
    ] {
        cmd = option(cmd, name, &value);
    }
    cmd
}

/// Whether `path` is valid in the store the command runs against.
pub fn is_valid(path: &StorePath) -> Cmd {
    Cmd::new("nix-store").args(["--check-validity", path.as_str()])
}

/// `nix store sign` of `paths` and their closures with the secret key in
/// `key_file`, in one process. `remote` is another store (`ssh-ng://…`)
/// and the `NIX_SSHOPTS` that reach it: the signatures are made here and
/// added there, so the secret key never leaves this machine.
pub fn sign(key_file: &Path, paths: &[StorePath], remote: Option<(&str, &str)>) -> Cmd {
    let cmd = nix()
        .args(["store", "sign", "--key-file"])
        .arg(key_file)
        .arg("--recursive");
    let cmd = match remote {
        Some((store, _)) => cmd.args(["--store", store]),
        None => cmd,
    };
    let cmd = cmd.args(paths.iter().map(StorePath::as_str));
    match remote {
        Some((_, ssh_opts)) => cmd.env(crate::env::NIX_SSHOPTS, ssh_opts),
        None => cmd,
    }
}

/// `nix` trusting exactly `keys`, whatever the machine's nix.conf says.
fn nix_trusting(keys: &[PublicKey]) -> Cmd {
    let keys: Vec<&str> = keys.iter().map(PublicKey::as_str).collect();
    nix().args(["--option", "trusted-public-keys", &keys.join(" ")])
}

/// Whether `path` itself carries a valid signature of one of `keys`. A
/// path built in this store counts as unsigned here (`--sigs-needed 1`):
/// only a key holder may say what a host runs. Contents are not hashed
/// (the closure check does that).
pub fn verify_signed(path: &StorePath, keys: &[PublicKey]) -> Cmd {
    nix_trusting(keys)
        .args(["store", "verify", "--no-contents", "--sigs-needed", "1"])
        .arg(path.as_str())
}

/// Whether every path of `path`'s closure is intact (its contents hash to
/// what its signature or build recorded) and trusted: built in this store,
/// or signed by one of `keys`.
pub fn verify_closure(path: &StorePath, keys: &[PublicKey]) -> Cmd {
    nix_trusting(keys)
        .args(["store", "verify", "--recursive"])
        .arg(path.as_str())
}

/// Writes a new signing key pair: the secret key to `secret`, the public
/// key (`NAME:BASE64`) to `public`. `nix-store --generate-binary-cache-key`
/// is in Nix 2.8 and current Nix alike.
pub fn generate_key(name: &str, secret: &Path, public: &Path) -> Cmd {
    Cmd::new("nix-store")
        .args(["--generate-binary-cache-key", name])
        .arg(secret)
        .arg(public)
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

    const KEY_A: &str = "a:w/rzCiwL440o8Yk+10KQh7PpLM4uJd0yxIMpe/U4zyI=";
    const KEY_B: &str = "b:DxIcoWimsWOE8sk8L8a6t6sssc+03/aPxXEu/9VQobQ=";

    #[test]
    fn sign_argv() {
        let path = StorePath::new(P).unwrap();
        let here = sign(Path::new("/k/a.secret"), std::slice::from_ref(&path), None);
        assert_eq!(
            here.argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "store",
                "sign",
                "--key-file",
                "/k/a.secret",
                "--recursive",
                P
            ]
        );
        assert!(here.get_env().is_empty());
        let there = sign(
            Path::new("/k/a.secret"),
            &[path.clone(), path],
            Some(("ssh-ng://root@h1", "-F /lab/ssh_config")),
        );
        assert_eq!(
            there.argv()[3..],
            [
                "store",
                "sign",
                "--key-file",
                "/k/a.secret",
                "--recursive",
                "--store",
                "ssh-ng://root@h1",
                P,
                P
            ]
        );
        assert_eq!(
            there.get_env(),
            [("NIX_SSHOPTS".into(), "-F /lab/ssh_config".into())]
        );
    }

    #[test]
    fn verify_argv() {
        let path = StorePath::new(P).unwrap();
        let keys = [
            PublicKey::parse(KEY_A).unwrap(),
            PublicKey::parse(KEY_B).unwrap(),
        ];
        let text = |cmd: Cmd| -> Vec<String> {
            cmd.argv()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let both = format!("{KEY_A} {KEY_B}");
        let trusting = [
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "--option",
            "trusted-public-keys",
            &both,
        ];
        let signed = text(verify_signed(&path, &keys));
        assert_eq!(signed[..6], trusting);
        assert_eq!(
            signed[6..],
            ["store", "verify", "--no-contents", "--sigs-needed", "1", P]
        );
        let closure = text(verify_closure(&path, &keys));
        assert_eq!(closure[..6], trusting);
        assert_eq!(closure[6..], ["store", "verify", "--recursive", P]);
    }

    #[test]
    fn generate_key_argv() {
        assert_eq!(
            generate_key("deploy-a", Path::new("/k/s"), Path::new("/k/p")).argv(),
            [
                "nix-store",
                "--generate-binary-cache-key",
                "deploy-a",
                "/k/s",
                "/k/p"
            ]
        );
    }
}
