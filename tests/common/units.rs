//! What berth's module writes for a service, rendered from nix/lib as
//! NixOS writes it (the unit with its hardening, the socket with
//! `socketActivation`, the directories, the sudo rule), and put on a
//! systemd lab host, so tests/rendered_units.rs runs it with a real
//! systemd and sudo (Debian's).
//!
//! The texts are nix/lib/unit.nix's `serviceText` of `unit` and
//! `socketFile`, which write a definition as nixpkgs' systemd-lib does;
//! where a NixOS host's files differ, it is in what needs nixpkgs:
//!
//! - `PATH`: on NixOS, the bin/ then the sbin/ directories of the unit's
//!   `path` (modules/services.nix: the runtime's package, pkgs.python3 or
//!   pkgs.nodejs, and git; then NixOS's own: coreutils, findutils, gnugrep,
//!   gnused, systemd), each a store path. Debian has all of them in /usr,
//!   so here `path` is `["/usr"]` and the line is
//!   `Environment="PATH=/usr/bin:/usr/sbin"`.
//! - NixOS adds `LOCALE_ARCHIVE` and `TZDIR` (systemd.globalEnvironment,
//!   store paths) to every service; they are left out here, where glibc
//!   finds /usr/lib/locale and /usr/share/zoneinfo by itself.
//! - `/bin/sh` (ExecStart=, the hold's ExecStartPre=) is bash on NixOS,
//!   dash here; berth's scripts are POSIX sh.
//! - NixOS's unit files are store paths linked from /etc/systemd/system,
//!   their `wantedBy` links made when the system is built; here they are
//!   files in /etc/systemd/system, started by name by the tests.
//! - The directories: NixOS writes `systemd.tmpfiles.rules` into a
//!   tmpfiles.d file systemd applies at boot; here the same lines are
//!   applied with `systemd-tmpfiles --create`. The user and group: NixOS's
//!   `users.users` (a system user, home /var/lib/<name>); here `useradd
//!   --system` with the same home.
//! - The sudo rule names the system's systemctl, as the module does:
//!   `/run/current-system/sw/bin/systemctl` on NixOS, `/usr/bin/systemctl`
//!   here.
//! - A service with `data.postgres` also wants and follows PostgreSQL's
//!   units on NixOS; no service here has it.
//!
//! The NixOS VM tests (nix/tests) run the module's own output and stay the
//! authority where these differ.

use berth::host::SshHost;
use serde_json::Value;

use super::deploy_user::{install_sudoers, root_sh, write_file};
use super::sudoers;

/// The system's systemctl on a Debian host, as the module passes
/// `/run/current-system/sw/bin/systemctl` on NixOS.
pub const SYSTEMCTL: &str = "/usr/bin/systemctl";

/// What stands for the unit's `path` on a Debian host: the runtimes, git
/// and NixOS's default tools are all in /usr/bin.
const PATH: &[&str] = &["/usr"];

/// One service as the module writes it.
#[derive(Debug)]
pub struct Rendered {
    pub name: String,
    pub user: String,
    pub group: String,
    /// The unit the manifest names: `<name>.service`, or the template
    /// `<name>@.service` of a service with instances.
    pub unit: String,
    /// The text of [`Rendered::unit`].
    pub service: String,
    /// `<name>.socket` with `socketActivation`.
    pub socket: Option<String>,
    /// systemd.tmpfiles.rules, a line each.
    pub tmpfiles: String,
    /// The sudoers lines of security.sudo.extraRules, with [`SYSTEMCTL`].
    pub sudoers: String,
}

/// Renders `berth.services.<name>` as `partial` declares it (a JSON
/// object of its options; the rest defaulted as the module does).
pub fn render(name: &str, partial: &Value) -> Rendered {
    let v = super::nix_eval(
        r#"{ name, partial, path }:
let
  lib = import ./nix/lib { };
  units = import ./nix/lib/unit.nix;
  cfg = lib.serviceDefaults name (builtins.fromJSON partial);
in {
  inherit (cfg) user group;
  unit = lib.unitName name cfg;
  # modules/services.nix's appUnit: lib's unit with `path` (and, for
  # data.postgres, PostgreSQL's units).
  service = units.serviceText (lib.unit name cfg // { path = builtins.fromJSON path; });
  socket = if cfg.socketActivation then units.socketFile name cfg else null;
  tmpfiles = lib.tmpfiles name cfg;
}"#,
        &[
            ("name", name),
            ("partial", &partial.to_string()),
            ("path", &serde_json::to_string(PATH).expect("JSON")),
        ],
    );
    let text = |key: &str| {
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not a string: {v}"))
            .to_owned()
    };
    let tmpfiles = v["tmpfiles"]
        .as_array()
        .expect("tmpfiles is a list")
        .iter()
        .map(|line| format!("{}\n", line.as_str().expect("a tmpfiles line")))
        .collect();
    Rendered {
        name: name.to_owned(),
        user: text("user"),
        group: text("group"),
        unit: text("unit"),
        service: text("service"),
        socket: v["socket"].as_str().map(str::to_owned),
        tmpfiles,
        sudoers: sudoers::service_rule(name, partial, SYSTEMCTL),
    }
}

impl Rendered {
    /// The service's directory, /var/lib/<name>.
    pub fn dir(&self) -> String {
        format!("/var/lib/{}", self.name)
    }

    /// Puts the service on the host as the module would: its user and
    /// group, its directories, its units (loaded, not started) and its
    /// sudo rule (checked by visudo before it is installed).
    pub async fn install(&self, root: &SshHost) {
        root_sh(
            root,
            r#"set -e
getent group "$2" >/dev/null || groupadd --system "$2"
id -u "$1" >/dev/null 2>&1 || useradd --system --gid "$2" --home-dir "$3" --no-create-home --shell /bin/sh "$1""#,
            &[&self.user, &self.group, &self.dir()],
            "",
        )
        .await;
        let tmpfiles = format!("/etc/tmpfiles.d/berth-{}.conf", self.name);
        write_file(root, &tmpfiles, &self.tmpfiles, 0o644).await;
        root_sh(root, r#"systemd-tmpfiles --create "$1""#, &[&tmpfiles], "").await;
        write_file(
            root,
            &format!("/etc/systemd/system/{}", self.unit),
            &self.service,
            0o644,
        )
        .await;
        if let Some(socket) = &self.socket {
            write_file(
                root,
                &format!("/etc/systemd/system/{}.socket", self.name),
                socket,
                0o644,
            )
            .await;
        }
        root_sh(root, "systemctl daemon-reload", &[], "").await;
        install_sudoers(root, &self.name, &self.sudoers)
            .await
            .unwrap_or_else(|e| panic!("the rendered sudo rule of {}: {e}", self.name));
    }

    /// Makes `releases/r1` of `files` (path, text) the service's
    /// `current`, as the agent does (its `.berth-revision` included, and
    /// `.berth`), owned by the service's user.
    pub async fn release(&self, root: &SshHost, files: &[(&str, &str)]) {
        let release = format!("{}/releases/r1", self.dir());
        root_sh(root, r#"mkdir -p "$1""#, &[&release], "").await;
        for (path, text) in files {
            write_file(root, &format!("{release}/{path}"), text, 0o644).await;
        }
        write_file(root, &format!("{release}/.berth-revision"), "r1\n", 0o644).await;
        root_sh(
            root,
            r#"set -e
cd "$1"
mkdir -p .berth
ln -sfn releases/r1 current
chown -R "$2:$3" releases .berth current"#,
            &[&self.dir(), &self.user, &self.group],
            "",
        )
        .await;
    }
}
