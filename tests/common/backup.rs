//! berth's backup job as a NixOS host would get it, for a lab host:
//! nix/lib/backup.nix's unit and timer (what modules/services.nix puts into
//! `systemd.services`/`systemd.timers`) evaluated for a test service with
//! `nix-instantiate`, berth = the built binary and restic = Debian's, then
//! rendered into unit files by nix/lib/unit.nix's `serviceText` and
//! `timerText` (nixpkgs' systemd-lib, as tests/rendered_units.rs uses), with the
//! files the unit reads (`pkgs.writeText` in the module) written where the
//! unit names them (tests/restic.rs).
//!
//! Where this differs from a NixOS host:
//!
//! - no `PATH`: NixOS sets `Environment="PATH=…"` from `path` plus coreutils,
//!   findutils, grep, sed and systemd; here the unit gets systemd's default
//!   PATH. The module's `path` is PostgreSQL's tools, for `data.postgres`
//!   only, which the tests of this file do not declare;
//! - no `LOCALE_ARCHIVE`, `TZDIR`, `X-Restart-Triggers` or `X-StopIfChanged`
//!   (NixOS's own additions to every unit, for the locale and
//!   switch-to-configuration), and no ordering on PostgreSQL (the module adds
//!   it with `data.postgres`);
//! - the files `writeText` makes are under [`FILES`], not in /nix/store;
//! - `LoadCredential=` and `%d` need systemd 247 or later (Debian 12 has 252;
//!   NixOS has them too).
//!
//! Like NixOS, `wantedBy` is both an `[Install]` section and a symbolic
//! link in `<target>.wants/`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::app::World;

/// Where the files the unit reads are written on the host (the module's
/// `pkgs.writeText` paths in /nix/store).
pub const FILES: &str = "/etc/berth-backup";
/// Where NixOS's unit files are found by systemd on the host.
const UNITS: &str = "/etc/systemd/system";

/// The backup of one service, rendered.
#[derive(Debug)]
pub struct Backup {
    /// `berth-backup-<service>`.
    pub name: String,
    /// The text of `<name>.service`.
    pub service: String,
    /// The text of `<name>.timer`.
    pub timer: String,
    /// The targets the timer is wanted by (`timers.target`).
    pub timer_wanted_by: Vec<String>,
    /// The files the unit reads: absolute path and text.
    pub files: BTreeMap<String, String>,
}

impl Backup {
    /// Evaluates nix/lib/backup.nix for the service `service` given the
    /// options `partial` (as `berth.services.<service>` would be set, e.g.
    /// `{ enable = true; data.sqlite = [ … ]; backup.restic = { … }; }` as
    /// JSON), with `berth` and `restic` the programs' paths and
    /// `berth.agent.stateDir` its default, and renders it. Panics when the
    /// service has no backup (backup.enable off, or no data).
    pub fn render(service: &str, partial: &Value, berth: &str, restic: &str) -> Backup {
        let partial = partial.to_string();
        let v = super::nix_eval(
            // A function, so the values come in as --argstr and need no
            // quoting. writeText gives the file's path; its text comes from
            // `files`, the same function the unit calls writeText with.
            r#"{ service, partial, berth, restic, dir }: let
                  lib = import ./nix/lib { };
                  backup = import ./nix/lib/backup.nix;
                  unit = import ./nix/lib/unit.nix;
                  cfg = lib.serviceDefaults service (builtins.fromJSON partial);
                  timer = backup.timer service cfg;
                in {
                  has = backup.has cfg;
                  name = backup.unitName service;
                  service = unit.serviceText (backup.unit service cfg {
                    inherit berth restic;
                    writeText = name: _text: "${dir}/${name}";
                    stateDir = lib.options.agent.stateDir.default;
                  });
                  timer = unit.timerText timer;
                  timerWantedBy = timer.wantedBy;
                  files = backup.files service cfg;
                }"#,
            &[
                ("service", service),
                ("partial", &partial),
                ("berth", berth),
                ("restic", restic),
                ("dir", FILES),
            ],
        );
        assert_eq!(v["has"], true, "{service} has no backup: {partial}");
        let files = v["files"]
            .as_object()
            .expect("files is an attrset")
            .iter()
            .map(|(name, text)| {
                (
                    format!("{FILES}/{name}"),
                    text.as_str().expect("a file's text").to_owned(),
                )
            })
            .collect();
        Backup {
            name: v["name"].as_str().expect("the unit's name").to_owned(),
            service: text(&v["service"]),
            timer: text(&v["timer"]),
            timer_wanted_by: v["timerWantedBy"]
                .as_array()
                .expect("wantedBy is a list")
                .iter()
                .map(text)
                .collect(),
            files,
        }
    }

    /// Writes the files, the unit, the timer and its `.wants` link on the
    /// host, as root, and reloads systemd. The timer is not started.
    pub async fn install(&self, w: &World) {
        w.sh(&format!("mkdir -p {FILES}")).await;
        for (path, text) in &self.files {
            w.write(path, text).await;
        }
        w.write(&format!("{UNITS}/{}.service", self.name), &self.service)
            .await;
        w.write(&format!("{UNITS}/{}.timer", self.name), &self.timer)
            .await;
        for target in &self.timer_wanted_by {
            w.sh(&format!(
                "mkdir -p {UNITS}/{target}.wants && ln -sf {UNITS}/{name}.timer {UNITS}/{target}.wants/{name}.timer",
                name = self.name
            ))
            .await;
        }
        w.sh("systemctl daemon-reload").await;
    }
}

fn text(value: &Value) -> String {
    value.as_str().expect("a string").to_owned()
}
