# nix/lib/backup.nix: the backup unit, its files and its timer.
lib: let
  backup = import ../backup.nix;

  programs = {
    berth = "/run/current-system/sw/bin/berth";
    restic = "/nix/store/r-restic/bin/restic";
    # What pkgs.writeText would give: a path naming the file.
    writeText = name: _text: "/nix/store/w-${name}";
    stateDir = "/var/lib/berth";
  };

  withRestic = repository: extra:
    lib.serviceDefaults "notes" ({
        enable = true;
        data.sqlite = ["data/app.db"];
        data.files = ["data/uploads" "/var/lib/notes/media" "/etc/outside"];
        backup.restic = {
          inherit repository;
          passwordFile = "/run/agenix/restic-password";
        };
      }
      // extra);

  sftp = withRestic "sftp:backup@nas:/srv/restic/notes" {};
  excluding = withRestic "sftp:backup@nas:/srv/restic/notes" {
    data = {
      sqlite = ["data/app.db"];
      files = ["data/uploads" "/var/lib/notes/media" "/etc/outside"];
      exclude = ["*.log" "cache dir" "/var/lib/notes/media/big/*.iso"];
    };
  };
  snapshotOnly = lib.serviceDefaults "notes" {
    enable = true;
    data.sqlite = ["data/app.db"];
  };

  snapshot = "/run/current-system/sw/bin/berth agent snapshot create --service notes --actor backup-timer --lock-wait 600";
in [
  {
    name = "with restic: the snapshot, then restic backup of the listed paths";
    actual = backup.unit "notes" sftp programs;
    expected = {
      description = "berth: snapshot of the data of notes, sent to restic";
      wants = ["network-online.target"];
      after = ["network-online.target"];
      environment = {
        BERTH_STATE_DIR = "/var/lib/berth";
        RESTIC_REPOSITORY = "sftp:backup@nas:/srv/restic/notes";
        RESTIC_PASSWORD_FILE = "%d/restic-password";
        RESTIC_CACHE_DIR = "%C/berth-backup-notes";
      };
      serviceConfig = {
        Type = "oneshot";
        User = "notes";
        Group = "notes";
        ExecStart = [
          snapshot
          "/nix/store/r-restic/bin/restic backup --tag berth-notes --files-from-verbatim /nix/store/w-berth-backup-notes-paths"
        ];
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ReadWritePaths = ["/var/lib/notes"];
        LoadCredential = ["restic-password:/run/agenix/restic-password"];
        CacheDirectory = "berth-backup-notes";
      };
    };
  }
  {
    name = "restic reads the snapshots and data.files inside the service's directory, never the live database";
    actual = backup.files "notes" sftp;
    expected = {
      berth-backup-notes-paths = ''
        /var/lib/notes/snapshots
        /var/lib/notes/data/uploads
        /var/lib/notes/media
      '';
    };
  }
  {
    name = "data.exclude: a file of globs, and --exclude-file naming it";
    actual = {
      files = backup.files "notes" excluding;
      restic = builtins.elemAt (backup.unit "notes" excluding programs).serviceConfig.ExecStart 1;
    };
    expected = {
      files = {
        berth-backup-notes-paths = ''
          /var/lib/notes/snapshots
          /var/lib/notes/data/uploads
          /var/lib/notes/media
        '';
        # Each relative glob under each path of data.files, never over the
        # snapshots; an absolute one as is.
        berth-backup-notes-exclude = ''
          /var/lib/notes/data/uploads/**/*.log
          /var/lib/notes/media/**/*.log
          /var/lib/notes/data/uploads/**/cache dir
          /var/lib/notes/media/**/cache dir
          /var/lib/notes/media/big/*.iso
        '';
      };
      restic = "/nix/store/r-restic/bin/restic backup --tag berth-notes --files-from-verbatim /nix/store/w-berth-backup-notes-paths --exclude-file /nix/store/w-berth-backup-notes-exclude";
    };
  }
  {
    name = "data.exclude: a data.files path's glob characters are escaped";
    actual = backup.files "notes" (withRestic "/srv/restic" {
      data = {
        files = ["data/up[1]" "data/a*b?\\c"];
        exclude = ["*.tmp"];
      };
    });
    expected = {
      berth-backup-notes-paths = ''
        /var/lib/notes/snapshots
        /var/lib/notes/data/up[1]
        /var/lib/notes/data/a*b?\c
      '';
      berth-backup-notes-exclude = ''
        /var/lib/notes/data/up\[1]/**/*.tmp
        /var/lib/notes/data/a\*b\?\\c/**/*.tmp
      '';
    };
  }
  {
    name = "data.exclude without data.files: nothing to leave out, no --exclude-file";
    actual =
      (backup.unit "notes" (withRestic "/srv/restic" {
          data = {
            sqlite = ["data/app.db"];
            exclude = ["*.tmp"];
          };
        })
        programs)
      .serviceConfig
      .ExecStart;
    expected = [
      snapshot
      "/nix/store/r-restic/bin/restic backup --tag berth-notes --files-from-verbatim /nix/store/w-berth-backup-notes-paths"
    ];
  }
  {
    name = "a local repository is writable in the sandbox (a missing one is restic's error)";
    actual = map (repository: (backup.unit "notes" (withRestic repository {}) programs).serviceConfig.ReadWritePaths) [
      "/srv/restic/notes"
      "local:/mnt/backup/notes"
      "s3:s3.amazonaws.com/bucket/notes"
      "rest:https://backup.example.com/notes"
    ];
    expected = [
      ["/var/lib/notes" "-/srv/restic/notes"]
      ["/var/lib/notes" "-/mnt/backup/notes"]
      ["/var/lib/notes"]
      ["/var/lib/notes"]
    ];
  }
  {
    name = "backup.restic.environmentFile is the unit's EnvironmentFile";
    actual =
      (backup.unit "notes" (withRestic "s3:s3.amazonaws.com/bucket/notes" {
          backup.restic = {
            repository = "s3:s3.amazonaws.com/bucket/notes";
            passwordFile = "/run/agenix/restic-password";
            environmentFile = "/run/agenix/restic-s3";
          };
        })
        programs)
      .serviceConfig
      .EnvironmentFile;
    expected = "/run/agenix/restic-s3";
  }
  {
    name = "without restic: the snapshot only, no network, no credential";
    actual = backup.unit "notes" snapshotOnly programs;
    expected = {
      description = "berth: snapshot of the data of notes";
      wants = [];
      after = [];
      environment.BERTH_STATE_DIR = "/var/lib/berth";
      serviceConfig = {
        Type = "oneshot";
        User = "notes";
        Group = "notes";
        ExecStart = [snapshot];
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ReadWritePaths = ["/var/lib/notes"];
      };
    };
  }
  {
    name = "a word systemd or a shell would read into is quoted for systemd";
    actual =
      builtins.elemAt
      (backup.unit "notes" sftp (programs
        // {
          restic = "/opt/restic 100%/restic";
          writeText = name: _text: "/tmp/$HOME/${name}";
        }))
      .serviceConfig
      .ExecStart
      1;
    expected = "\"/opt/restic 100%%/restic\" backup --tag berth-notes --files-from-verbatim \"/tmp/$$HOME/berth-backup-notes-paths\"";
  }
  {
    name = "a backup needs backup.enable and declared data";
    actual = map backup.has [
      sftp
      snapshotOnly
      (lib.serviceDefaults "notes" {enable = true;})
      (lib.serviceDefaults "notes" {
        enable = true;
        data.postgres = ["notes"];
      })
      (lib.serviceDefaults "notes" {
        enable = true;
        data.files = ["data/uploads"];
        backup.enable = false;
      })
    ];
    expected = [true true false true false];
  }
  {
    name = "the timer";
    actual = backup.timer "notes" (snapshotOnly // {backup = snapshotOnly.backup // {schedule = "*-*-* 03:00:00";};});
    expected = {
      wantedBy = ["timers.target"];
      timerConfig = {
        OnCalendar = "*-*-* 03:00:00";
        Persistent = true;
        RandomizedDelaySec = "10min";
      };
    };
  }
  {
    name = "the unit's name";
    actual = backup.unitName "notes";
    expected = "berth-backup-notes";
  }
]
