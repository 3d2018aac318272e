lib: let
  # socketFile, serviceText and socketText are nix/lib/unit.nix's own.
  unit = import ../unit.nix;
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
      ConditionPathExists=/var/lib/notes/current
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
      requires = [];
      after = ["network-online.target"];
      wantedBy = ["multi-user.target"];
      # Skipped, not failed, until the first release.
      unitConfig.ConditionPathExists = "/var/lib/notes/current";
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
      }))
      .ExecStart;
    expected = "/bin/sh -c \"printf '%%s\\\\n' \\\"a\\\\b\\\"\\ntrue\"";
  }
  {
    name = "the default start commands";
    actual = map (runtime: (lib.serviceConfig "x" (lib.serviceDefaults "x" {inherit runtime;})).ExecStart) ["bun" "node"];
    expected = ["/bin/sh -c \"bun run start\"" "/bin/sh -c \"npm start\""];
  }
  {
    name = "socketActivation: the socket on the port, and a start that waits for berth's hold";
    actual = let
      cfg = lib.serviceDefaults "notes" {
        enable = true;
        port = 3000;
        socketActivation = true;
        runtime = "python";
        start = "exec python -m notes";
        hardening.enable = false;
      };
    in {
      socket = lib.socketUnit "notes" cfg;
      unit = {inherit (lib.unit "notes" cfg) requires after;};
      inherit (lib.serviceConfig "notes" cfg) ExecStartPre;
    };
    expected = {
      socket = {
        description = "berth service notes (its listening socket)";
        wantedBy = ["sockets.target"];
        unitConfig.ConditionPathExists = "/var/lib/notes/current";
        listenStreams = ["127.0.0.1:3000"];
      };
      unit = {
        requires = ["notes.socket"];
        after = ["network-online.target" "notes.socket"];
      };
      ExecStartPre = "/bin/sh -c \"if [ -e /var/lib/notes/.berth/hold ]; then echo 'berth: waiting for the deploy that stopped this service to let it start (/var/lib/notes/.berth/hold)'; while [ -e /var/lib/notes/.berth/hold ]; do sleep 0.05; done; fi\"";
    };
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
  {
    name = "the socket file, as NixOS renders the socket: blank lines where its template has them";
    actual = unit.socketFile "notes" (lib.serviceDefaults "notes" {
      port = 3000;
      socketActivation = true;
      runtime = "python";
      start = "exec python3 app.py";
    });
    expected = ''
      [Unit]
      ConditionPathExists=/var/lib/notes/current
      Description=berth service notes (its listening socket)

      [Socket]

      ListenStream=127.0.0.1:3000


      [Install]
      WantedBy=sockets.target
    '';
  }
  {
    name = "a definition's path on PATH (bin/, then sbin/), sorted among the environment; unitConfig after the unit's own settings";
    actual = unit.serviceText {
      description = "x";
      after = ["a.target" "b.service"];
      wantedBy = ["multi-user.target" "other.target"];
      unitConfig.ConditionPathExists = "/srv/x";
      path = ["/usr" "/opt/tool"];
      environment = {
        A = "1";
        Z = "2";
      };
      serviceConfig = {
        ExecStart = "/bin/true";
        NoNewPrivileges = true;
        MemoryDenyWriteExecute = false;
        SystemCallFilter = ["@system-service" "~@privileged"];
      };
    };
    expected = ''
      [Unit]
      After=a.target b.service
      ConditionPathExists=/srv/x
      Description=x

      [Service]
      Environment="A=1"
      Environment="PATH=/usr/bin:/opt/tool/bin:/usr/sbin:/opt/tool/sbin"
      Environment="Z=2"
      ExecStart=/bin/true
      MemoryDenyWriteExecute=false
      NoNewPrivileges=true
      SystemCallFilter=@system-service
      SystemCallFilter=~@privileged

      [Install]
      WantedBy=multi-user.target other.target
    '';
  }
  {
    name = "nothing wanted, no [Install]; no description, no Description=";
    actual = unit.serviceText {serviceConfig.ExecStart = "/bin/true";};
    expected = ''
      [Unit]

      [Service]
      ExecStart=/bin/true
    '';
  }
  {
    name = "a timer as nixpkgs' timerToUnit writes it: [Timer], an empty line, then [Install]";
    actual = unit.timerText {
      wantedBy = ["timers.target"];
      timerConfig = {
        OnCalendar = "daily";
        Persistent = true;
      };
    };
    expected = "[Unit]\n\n[Timer]\nOnCalendar=daily\nPersistent=true\n\n\n[Install]\nWantedBy=timers.target\n";
  }
]
