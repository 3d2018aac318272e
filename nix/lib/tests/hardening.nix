lib: let
  svc = partial: lib.serviceDefaults "notes" partial;
  # The settings of a default service, bun's runtime.
  sandbox = {
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ReadWritePaths = ["/var/lib/notes/data"];
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    PrivateMounts = true;
    PrivateUsers = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = false;
    SystemCallArchitectures = "native";
    SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
    SystemCallErrorNumber = "EPERM";
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    UMask = "0077";
    RemoveIPC = true;
  };
in [
  {
    name = "a default service is sandboxed; data/ is its only writable path";
    actual = lib.hardening "notes" (svc {});
    expected = sandbox;
  }
  {
    name = "MemoryDenyWriteExecute is off for the JITs of bun and node only";
    actual = map (runtime:
      (lib.hardening "notes" (svc {
        inherit runtime;
        start = "run";
      }))
      .MemoryDenyWriteExecute) ["bun" "node" "python" "custom"];
    expected = [false false true true];
  }
  {
    name = "hardening.enable = false: no sandbox at all";
    actual = lib.hardening "notes" (svc {hardening.enable = false;});
    expected = {};
  }
  {
    name = "with hardening off, serviceConfig keeps only how the app runs";
    actual = lib.serviceConfig "notes" (svc {hardening.enable = false;});
    expected = {
      Type = "exec";
      User = "notes";
      Group = "notes";
      WorkingDirectory = "/var/lib/notes/current";
      ExecStart = "/bin/sh -c \"bun run start\"";
      Restart = "on-failure";
      RestartSec = "5s";
    };
  }
  {
    name = "extraServiceConfig is merged last, over the sandbox and the rest";
    actual = let
      config = lib.serviceConfig "notes" (svc {
        hardening.extraServiceConfig = {
          MemoryDenyWriteExecute = true;
          ReadWritePaths = ["/var/lib/notes/data" "/srv/media"];
          Restart = "always";
          LimitNOFILE = 65536;
        };
      });
    in {
      inherit (config) MemoryDenyWriteExecute ReadWritePaths Restart LimitNOFILE ProtectSystem;
    };
    expected = {
      MemoryDenyWriteExecute = true;
      ReadWritePaths = ["/var/lib/notes/data" "/srv/media"];
      Restart = "always";
      LimitNOFILE = 65536;
      ProtectSystem = "strict";
    };
  }
  {
    name = "extraServiceConfig applies with hardening off too";
    actual =
      (lib.serviceConfig "notes" (svc {
        hardening = {
          enable = false;
          extraServiceConfig.NoNewPrivileges = true;
        };
      }))
      .NoNewPrivileges;
    expected = true;
  }
]
