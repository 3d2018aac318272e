# The sandbox of a service's unit, as systemd [Service] settings (the keys
# of systemd.services.<name>.serviceConfig). Code, the system and the rest
# of the service's directory are read-only; only data/ is writable. With
# hardening.enable = false: {}. hardening.extraServiceConfig is not merged
# here but last in unit.nix's serviceConfig, over everything.
#
# `systemd-analyze security --offline=yes` scores a default unit 1.1
# (scripts/nix-check keeps it at 2.0 or lower).
let
  service = import ./service.nix;

  # The JIT compilers of bun (JavaScriptCore) and node (V8) need writable
  # executable memory; CPython does not. A custom program may be either
  # (Go, Rust: safe; the JVM, .NET, LuaJIT: not): it gets the strict
  # setting and hardening.extraServiceConfig.MemoryDenyWriteExecute = false
  # when it needs a JIT.
  jit = {
    bun = true;
    node = true;
    python = false;
    custom = false;
  };
in
  name: cfg:
    if !cfg.hardening.enable
    then {}
    else {
      NoNewPrivileges = true;
      ProtectSystem = "strict";
      ReadWritePaths = ["${service.dir name}/data"];
      ProtectHome = true;
      PrivateTmp = true;
      PrivateDevices = true;
      DevicePolicy = "closed";
      PrivateMounts = true;
      # Only root and the service's own user and group are mapped: other
      # users' files look like nobody's.
      PrivateUsers = true;
      ProtectKernelTunables = true;
      ProtectKernelModules = true;
      ProtectKernelLogs = true;
      ProtectControlGroups = true;
      ProtectClock = true;
      ProtectHostname = true;
      ProtectProc = "invisible";
      # /proc shows processes only: no /proc/cpuinfo, so node's os.cpus()
      # is empty (os.availableParallelism() works).
      ProcSubset = "pid";
      RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
      RestrictNamespaces = true;
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      LockPersonality = true;
      MemoryDenyWriteExecute = !jit.${cfg.runtime};
      SystemCallArchitectures = "native";
      # One line each: an allow list, then what it must not contain.
      SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
      # A filtered call fails instead of killing the app (node raises its
      # file limit at start, e.g.).
      SystemCallErrorNumber = "EPERM";
      CapabilityBoundingSet = "";
      AmbientCapabilities = "";
      UMask = "0077";
      RemoveIPC = true;
    }
