lib: let
  notes = lib.serviceDefaults "notes" {
    enable = true;
    port = 3000;
    environment = {
      GREETING = "100% \"ok\"";
      LOG_LEVEL = "info";
    };
    secrets.SESSION_SECRET = "/run/agenix/notes-session";
    environmentFiles = ["/run/agenix/notes-env"];
    start = "exec bun run src/index.ts --port \"$PORT\"";
    hardening.enable = false;
  };
in [
  {
    name = "the unit file, as NixOS renders the unit";
    actual = lib.unitFile "notes" notes;
    expected = ''
      [Unit]
      After=network-online.target
      Description=berth service notes
      Wants=network-online.target

      [Service]
      Environment="GREETING=100%% \"ok\""
      Environment="LOG_LEVEL=info"
      Environment="NODE_ENV=production"
      Environment="PORT=3000"
      Environment="SESSION_SECRET_FILE=%d/SESSION_SECRET"
      EnvironmentFile=/run/agenix/notes-env
      ExecStart=/bin/sh -c "exec bun run src/index.ts --port \"$$PORT\""
      Group=notes
      LoadCredential=SESSION_SECRET:/run/agenix/notes-session
      Restart=on-failure
      RestartSec=5s
      Type=exec
      User=notes
      WorkingDirectory=/var/lib/notes/current

      [Install]
      WantedBy=multi-user.target
    '';
  }
  {
    name = "the unit for systemd.services.<name>";
    actual = removeAttrs (lib.unit "notes" notes) ["serviceConfig"];
    expected = {
      description = "berth service notes";
      wants = ["network-online.target"];
      after = ["network-online.target"];
      wantedBy = ["multi-user.target"];
      environment = {
        GREETING = "100%% \"ok\"";
        LOG_LEVEL = "info";
        NODE_ENV = "production";
        PORT = "3000";
        SESSION_SECRET_FILE = "%d/SESSION_SECRET";
      };
    };
  }
  {
    name = "python has no NODE_ENV, and no PORT without a port";
    actual = lib.environment "worker" (lib.serviceDefaults "worker" {
      runtime = "python";
      start = "python -m worker";
    });
    expected = {};
  }
  {
    name = "a start command reaches sh unchanged: backslashes, newlines, specifiers";
    actual =
      (lib.serviceConfig "notes" (lib.serviceDefaults "notes" {
        runtime = "custom";
        start = "printf '%s\\n' \"a\\b\"\ntrue";
      })).ExecStart;
    expected = "/bin/sh -c \"printf '%%s\\\\n' \\\"a\\\\b\\\"\\ntrue\"";
  }
  {
    name = "the default start commands";
    actual = map (runtime: (lib.serviceConfig "x" (lib.serviceDefaults "x" {inherit runtime;})).ExecStart) ["bun" "node"];
    expected = ["/bin/sh -c \"bun run start\"" "/bin/sh -c \"npm start\""];
  }
  {
    name = "the directories";
    actual = lib.tmpfiles "notes" notes;
    expected = [
      "d /var/lib/notes 0750 notes notes -"
      "d /var/lib/notes/releases 0750 notes notes -"
      "d /var/lib/notes/data 0700 notes notes -"
      "d /var/lib/notes/snapshots 0700 notes notes -"
    ];
  }
  {
    name = "the backup timer's snapshot";
    actual = lib.snapshotArgs "notes";
    expected = ["agent" "snapshot" "create" "--service" "notes" "--actor" "backup-timer" "--lock-wait" "600"];
  }
]
