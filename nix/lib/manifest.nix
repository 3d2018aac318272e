# The app manifest the module writes to /etc/berth/services/<name>.json:
# exactly what src/app/manifest/mod.rs reads (`Manifest`, version 1), every
# field present, as serde would print it.
let
  service = import ./service.nix;
in
  name: cfg: {
    version = 1;
    service = name;
    dir = service.dir name;
    # The template <name>@.service when the service scales, else
    # <name>.service; `instances` of it run after a deploy, at most
    # `maxInstances`, instance i on port `port` + i - 1.
    unit = service.unitName name cfg;
    inherit (cfg) instances port;
    maxInstances = service.maxInstances cfg;
    inherit (cfg) repository branch paths quietPaths environment keepReleases keepSnapshots stage allowSkipSnapshot socketActivation;
    health = {
      url = service.healthUrl cfg;
      inherit (cfg.health) status timeout settle expectRevision;
    };
    commands = {inherit (cfg.commands) install build migrate;};
    # As declared: relative to `dir` or absolute inside it (the agent
    # resolves them and refuses anything outside).
    data = {inherit (cfg.data) sqlite postgres files exclude;};
  }
