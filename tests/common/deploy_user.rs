//! A systemd lab host made a multi-user Nix host with a non-root deploy
//! user, as a NixOS host with `nix.settings.trusted-users = [ "root" ]` and
//! a deploy user in `berth.agent.deployUsers` is:
//!
//! - Debian's `nix-daemon` (nix-bin, Nix 2.8) runs as the unit
//!   `nix-daemon.service` in the container, over the host's own `/nix`
//!   (the lab binds it in; the daemon, root, owns the store), with the
//!   `nix.conf` of [`nix_conf`]: only root trusted, signatures required;
//! - the deploy user logs in with the lab's client key, is in
//!   `systemd-journal`, and reaches the store only through the daemon, as
//!   an untrusted user;
//! - sudo rules are installed as `/etc/sudoers.d/<file>` after
//!   `visudo -c -f` accepts them inside the container.
//!
//! Everything is written over the root SSH connection: the container's
//! root is an overlay of this machine's `/`, so writing to the machine's
//! `/etc` would not reach it (and would change the machine).
//!
//! Self-contained (only `berth::`, serde_json and std), so a test crate can use it as
//! `common::deploy_user` or include it alone with
//! `#[path = "common/deploy_user.rs"] mod deploy_user;`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth::host::{Destination, Host, SshHost};
use berth::lab::Lab;
use berth::process::{Cmd, Output};

/// The unit that runs the daemon, named as on NixOS.
pub const DAEMON_UNIT: &str = "nix-daemon.service";
/// Where the daemon listens; a non-root user's `store = auto` picks it.
pub const DAEMON_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";
/// Where the host's own name resolves (as NixOS writes `/etc/hosts`).
pub const OWN_NAME_ADDR: &str = "127.0.0.2";

/// The container's `/etc/nix/nix.conf`: a sandbox-less store (as in the
/// rest of the lab), no substituters, signatures required, only root
/// trusted, and `trusted_public_keys` (each `name:base64`) trusted.
pub fn nix_conf(trusted_public_keys: &[&str]) -> String {
    for key in trusted_public_keys {
        assert!(
            key.contains(':') && !key.contains(char::is_whitespace),
            "not a Nix public key: {key:?}"
        );
    }
    format!(
        "# written by tests/common/deploy_user.rs\n\
         experimental-features = nix-command flakes\n\
         sandbox = false\n\
         build-users-group =\n\
         substituters =\n\
         require-sigs = true\n\
         trusted-users = root\n\
         trusted-public-keys = {}\n",
        trusted_public_keys.join(" ")
    )
}

/// The daemon's unit: Debian's `/usr/bin/nix-daemon`, started at boot too
/// (a lab reboot keeps the container's root).
pub fn daemon_unit() -> &'static str {
    "# written by tests/common/deploy_user.rs\n\
     [Unit]\n\
     Description=Nix daemon (berth lab)\n\
     RequiresMountsFor=/nix/store\n\
     \n\
     [Service]\n\
     ExecStart=/usr/bin/nix-daemon\n\
     KillMode=process\n\
     \n\
     [Install]\n\
     WantedBy=multi-user.target\n"
}

/// Runs `script` with `sh -c` as root on the host, with `args` as `$1`…
/// and `stdin`; returns its stdout and panics (with its stderr) when it
/// fails.
pub async fn root_sh(root: &SshHost, script: &str, args: &[&str], stdin: &str) -> String {
    let out = root_sh_output(root, script, args, stdin).await;
    assert!(
        out.status.success(),
        "{script}\n{args:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout_str()
}

/// As [`root_sh`], whatever its exit status.
pub async fn root_sh_output(root: &SshHost, script: &str, args: &[&str], stdin: &str) -> Output {
    let cmd = Cmd::new("sh")
        .args(["-c", script, "sh"])
        .args(args)
        .stdin(stdin.as_bytes().to_vec());
    root.output(&cmd)
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Writes `text` to `path` on the host, owned by root with `mode`
/// (replaced whole: written beside, then renamed).
pub async fn write_file(root: &SshHost, path: &str, text: &str, mode: u32) {
    root_sh(
        root,
        r#"set -e; tmp="$1.tmp.$$"; cat > "$tmp"; chmod "$2" "$tmp"; mv -f "$tmp" "$1""#,
        &[path, &format!("{mode:o}")],
        text,
    )
    .await;
}

/// Lets the host resolve its own name, as a NixOS host's `/etc/hosts`
/// does. Without it, every sudo there begins its stderr with
/// `sudo: unable to resolve host h1: Temporary failure in name resolution`.
pub async fn resolve_own_name(root: &SshHost) {
    root_sh(
        root,
        r#"set -e; name=$(hostname)
grep -q "[[:space:]]$name\$" /etc/hosts || printf '%s\t%s\n' "$1" "$name" >> /etc/hosts"#,
        &[OWN_NAME_ADDR],
        "",
    )
    .await;
}

/// Writes [`nix_conf`] and [`daemon_unit`] into the container, starts the
/// daemon and waits for its socket, and has it create the store (`/nix`
/// is empty until a store is first opened). Run again, it rewrites the
/// config and restarts the daemon, which then reads it.
pub async fn run_nix_daemon(root: &SshHost, trusted_public_keys: &[&str]) {
    write_file(
        root,
        "/etc/nix/nix.conf",
        &nix_conf(trusted_public_keys),
        0o644,
    )
    .await;
    write_file(
        root,
        &format!("/etc/systemd/system/{DAEMON_UNIT}"),
        daemon_unit(),
        0o644,
    )
    .await;
    root_sh(
        root,
        r#"set -e
systemctl daemon-reload
systemctl enable --quiet "$1"
systemctl restart "$1"
i=0
until [ -S "$2" ]; do
  i=$((i + 1))
  if [ "$i" -gt 200 ]; then
    echo "no daemon socket at $2" >&2; systemctl status --no-pager "$1" >&2; exit 1
  fi
  sleep 0.05
done
nix store ping --store daemon >/dev/null
test -d /nix/store"#,
        &[DAEMON_UNIT, DAEMON_SOCKET],
        "",
    )
    .await;
}

/// The lab's client public key (`LABDIR/id_ed25519.pub`), the one the lab
/// puts in root's `authorized_keys` on every host.
pub fn client_public_key(lab: &Lab) -> String {
    let path = lab.dir().join("id_ed25519.pub");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Makes `user` (a home under /home, bash as its login shell, in
/// `systemd-journal`), who logs in with the lab's client key; with
/// `password`, that password (set with chpasswd), else the account has
/// none (`*`, locked for passwords, open for keys).
pub async fn add_user(lab: &Lab, root: &SshHost, user: &str, password: Option<&str>) {
    assert!(
        !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
            && !user.starts_with('-'),
        "not a plain user name: {user:?}"
    );
    if let Some(pw) = password {
        assert!(
            !pw.contains(['\n', ':']),
            "chpasswd reads user:password lines"
        );
    }
    root_sh(
        root,
        r#"set -e
id "$1" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --groups systemd-journal "$1"
usermod -p '*' "$1"
home=$(getent passwd "$1" | cut -d: -f6)
install -d -o "$1" -g "$1" -m 0700 "$home/.ssh"
install -o "$1" -g "$1" -m 0600 /dev/stdin "$home/.ssh/authorized_keys""#,
        &[user],
        &client_public_key(lab),
    )
    .await;
    if let Some(pw) = password {
        root_sh(root, "chpasswd", &[], &format!("{user}:{pw}\n")).await;
    }
}

/// Installs `text` as `/etc/sudoers.d/<file>` (root, 0440) once
/// `visudo -c -f` accepts it inside the container; otherwise installs
/// nothing and returns visudo's output.
pub async fn install_sudoers(root: &SshHost, file: &str, text: &str) -> Result<(), String> {
    assert!(
        !file.is_empty()
            && !file.contains(['/', '.', '~'])
            && file.chars().all(|c| c.is_ascii_graphic()),
        "sudo skips /etc/sudoers.d files with a dot or ending in ~: {file:?}"
    );
    let out = root_sh_output(
        root,
        r#"tmp=$(mktemp /tmp/sudoers.XXXXXX) || exit 1
cat > "$tmp"
if ! visudo -c -f "$tmp" >&2; then rm -f "$tmp"; exit 1; fi
install -o root -g root -m 0440 "$tmp" "/etc/sudoers.d/$1"; s=$?
rm -f "$tmp"
exit $s"#,
        &[file],
        text,
    )
    .await;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            out.stdout_str(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// All of it: the host resolves its own name, the daemon runs trusting
/// `trusted_public_keys`, and `user` exists (with `password`, if given).
/// Sudo rules are the caller's ([`install_sudoers`]).
pub async fn set_up(
    lab: &Lab,
    root: &SshHost,
    user: &str,
    password: Option<&str>,
    trusted_public_keys: &[&str],
) {
    resolve_own_name(root).await;
    run_nix_daemon(root, trusted_public_keys).await;
    add_user(lab, root, user, password).await;
}

/// An SSH connection to lab host `host` as `user` (berth's own kind: one
/// multiplexed master, the lab's ssh_config and known_hosts).
pub async fn connect_as(lab: &Lab, user: &str, host: &str) -> SshHost {
    let destination = Destination::parse(&format!("{user}@{host}")).unwrap();
    SshHost::connect(&destination, &lab.ssh_settings())
        .await
        .unwrap_or_else(|e| panic!("ssh {user}@{host}: {e}"))
}

/// `NIX_SSHOPTS` as berth sets it for the lab (without a master's control
/// path): the lab's ssh_config, batch mode, host keys checked.
pub fn nix_sshopts(lab: &Lab) -> String {
    format!(
        "-F {} -o BatchMode=yes -o StrictHostKeyChecking=yes",
        lab.ssh_config().display()
    )
}

/// One finished command: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn ran(cmd: &mut Command, stdin: Option<&[u8]>) -> Ran {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    if let Some(bytes) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        // The far end may stop reading (sudo refusing): that is its answer.
        let _ = pipe.write_all(bytes);
    }
    let out = child.wait_with_output().unwrap();
    let run = Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ {cmd:?}\n  -> {}\n{}", run.code, run.stderr);
    run
}

/// Runs the shell line `line` as `user` on `host` over a fresh `ssh` (no
/// tty, like berth's commands), with `stdin` (`None`: /dev/null).
pub fn ssh_as(lab: &Lab, user: &str, host: &str, line: &str, stdin: Option<&[u8]>) -> Ran {
    ran(
        Command::new("ssh")
            .arg("-F")
            .arg(lab.ssh_config())
            .arg("-T")
            .arg(format!("{user}@{host}"))
            .arg("--")
            .arg(line),
        stdin,
    )
}

/// Runs `nix ARGS` here, with `NIX_SSHOPTS` of [`nix_sshopts`].
pub fn local_nix(lab: &Lab, args: &[&str]) -> Ran {
    ran(
        Command::new("nix")
            .args(args)
            .env("NIX_SSHOPTS", nix_sshopts(lab)),
        None,
    )
}

/// Builds, in this machine's store, a path with no nixpkgs (a
/// `builtins.derivation` run by /bin/sh) holding `content`; with
/// `dependency`, the path also refers to it. Unsigned (`ultimate`).
pub fn build_path(name: &str, content: &str, dependency: Option<&str>) -> String {
    // The dependency's text alone would not make it one: its context does.
    let dep = dependency
        .map(|d| format!(r#" ${{builtins.storePath "{d}"}}"#))
        .unwrap_or_default();
    let expr = format!(
        r#"builtins.derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "echo {content}{dep} > $out" ]; }}"#
    );
    let out = ran(
        Command::new("nix").args(["build", "--impure", "--no-link", "--json", "--expr", &expr]),
        None,
    );
    assert_eq!(out.code, 0, "nix build {name}: {}", out.stderr);
    let built: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    built[0]["outputs"]["out"]
        .as_str()
        .unwrap_or_else(|| panic!("nix build {name}: {}", out.stdout))
        .to_owned()
}

/// A signing key pair under `dir`: the secret key file and the public key
/// (`name:base64`).
pub fn signing_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = dir.join(format!("{name}.sec"));
    let public = dir.join(format!("{name}.pub"));
    let out = ran(
        Command::new("nix-store")
            .arg("--generate-binary-cache-key")
            .arg(name)
            .arg(&secret)
            .arg(&public),
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let key = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    (secret, key)
}

/// What a non-root user sees of Nix on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    /// `id -un`.
    pub user: String,
    /// `nix-store --version`, e.g. `nix-store (Nix) 2.8.0`.
    pub nix_store_version: String,
    /// `Store URL:` of `nix store ping`: `daemon` when it goes through the
    /// daemon.
    pub store_url: String,
    /// Whether the user could create a file in /nix/store itself.
    pub writes_store: bool,
    /// `nix-store -q --hash PROBE` (through the daemon), when a probe path
    /// was given.
    pub probe_hash: Option<String>,
    /// Whether `journalctl` reads the system journal (systemd-journal).
    pub reads_journal: bool,
}

/// Logs in as `user` on `host` and reads [`UserView`]; `probe` is a store
/// path valid on the host, to query through the daemon. An error says
/// which step failed and how.
pub fn check_user_view(
    lab: &Lab,
    user: &str,
    host: &str,
    probe: Option<&str>,
) -> Result<UserView, String> {
    let probe_line = match probe {
        Some(p) => format!("nix-store -q --hash '{p}'"),
        None => "true".into(),
    };
    // One login; each fact on its own tagged line.
    let line = format!(
        r#"echo "user=$(id -un)"
echo "version=$(nix-store --version)" || exit 11
ping=$(nix store ping 2>&1) || {{ echo "$ping" >&2; exit 12; }}
echo "$ping" | sed -n 's/^Store URL: /store=/p'
if touch /nix/store/.berth-write-probe 2>/dev/null; then rm -f /nix/store/.berth-write-probe; echo writes=yes; else echo writes=no; fi
hash=$({probe_line}) || exit 13
echo "hash=$hash"
err=$(journalctl -n 1 --no-pager 2>&1 >/dev/null) && ! printf '%s' "$err" | grep -qE 'insufficient permissions|not seeing messages' && echo journal=yes || echo journal=no"#
    );
    let out = ssh_as(lab, user, host, &line, None);
    if out.code != 0 {
        return Err(format!(
            "as {user} on {host}: exit {}\n{}{}",
            out.code, out.stdout, out.stderr
        ));
    }
    let field = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .ok_or_else(|| format!("as {user} on {host}: no {key} in\n{}", out.stdout))
    };
    Ok(UserView {
        user: field("user")?,
        nix_store_version: field("version")?,
        store_url: field("store")?,
        writes_store: field("writes")? == "yes",
        probe_hash: probe.map(|_| field("hash")).transpose()?,
        reads_journal: field("journal")? == "yes",
    })
}

/// `nix path-info --json PATH` in this machine's store: `narHash` (SRI,
/// `sha256-<base64>`, as Nix 2.8 prints it), `narSize`, `references`
/// (full paths), `signatures`.
pub fn local_path_info(path: &str) -> serde_json::Value {
    let out = ran(
        Command::new("nix").args(["path-info", "--json", path]),
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut infos: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    infos.remove(0)
}

/// `nix-store -q --hash PATH` here: the NAR hash as `sha256:<base32>`.
pub fn local_nar_hash_base32(path: &str) -> String {
    let out = ran(Command::new("nix-store").args(["-q", "--hash", path]), None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.trim().to_owned()
}

/// A `.narinfo` for `path` as a file binary cache holds it (its name is
/// `<hash part>.narinfo`, beside a `nix-cache-info` of
/// `StoreDir: /nix/store`): no NAR behind its URL, which
/// `nix store copy-sigs` never reads. `nar_hash` as `sha256:<base32>` or
/// SRI; `references` as full paths or basenames.
pub fn narinfo(
    path: &str,
    nar_hash: &str,
    nar_size: u64,
    references: &[&str],
    sigs: &[&str],
) -> String {
    let base = |p: &str| p.rsplit('/').next().unwrap().to_owned();
    let hash_part = base(path).split('-').next().unwrap().to_owned();
    let mut text = format!(
        "StorePath: {path}\nURL: nar/{hash_part}.nar\nCompression: none\n\
         NarHash: {nar_hash}\nNarSize: {nar_size}\nReferences: {}\n",
        references
            .iter()
            .map(|r| base(r))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for sig in sigs {
        text.push_str(&format!("Sig: {sig}\n"));
    }
    text
}

/// The name a `.narinfo` of `path` has in a binary cache.
pub fn narinfo_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap();
    format!("{}.narinfo", base.split('-').next().unwrap())
}
