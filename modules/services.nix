# berth.services.<name>: apps whose code lives in git, deployed by `berth
# app deploy` (docs/app.md). nix/lib computes each piece from the options
# (the manifest, the unit, the sudo rule, the Caddy host, the checks); this
# module puts them into NixOS: per service a user and group, directories, the
# unit (the template <name>@.service and its instances, with instances),
# the first release, the sudo rule, a Caddy virtual host, the manifest
# /etc/berth/services/<name>.json, a backup timer and, for data.postgres,
# PostgreSQL's databases and the user's role; across services, the
# assertions. berth.caddy says how Caddy gets the plugins they need.
{
  config,
  lib,
  pkgs,
  ...
}: let
  berth = import ../nix/lib {};
  backup = import ../nix/lib/backup.nix;
  util = import ../nix/lib/util.nix;

  inherit (lib) attrNames attrValues concatLists concatMap elem escapeShellArg filter filterAttrs getExe' groupBy hasPrefix head listToAttrs mapAttrs mapAttrs' mapAttrsToList mkDefault mkIf mkMerge nameValuePair optional optionalAttrs optionals unique;

  inherit (config.berth) services agent;
  enabled = filterAttrs (_: cfg: cfg.enable) services;
  # `f name cfg` (a list) over the enabled services, concatenated.
  forEach = f: concatLists (mapAttrsToList f enabled);

  berthExe = getExe' agent.package "berth";
  dir = name: "/var/lib/${name}";

  # Units `nameOf name` = `make name cfg` of the enabled services that `has`.
  unitsOf = has: nameOf: make:
    listToAttrs (forEach (name: cfg:
        optional (has cfg) (nameValuePair (nameOf name) (make name cfg))));

  runtimes = {
    bun = [pkgs.bun];
    node = [pkgs.nodejs];
    python = [pkgs.python3];
    custom = [];
  };
  runtimePackages = cfg: runtimes.${cfg.runtime};

  # --- PostgreSQL ------------------------------------------------------------
  #
  # The agent dumps and restores data.postgres as the service's user (peer
  # authentication over /run/postgresql), with the pg_dump, pg_restore and
  # psql on its PATH, which must be the server's version or newer.
  hasPostgres = cfg: cfg.data.postgres != [];
  postgresServices = filterAttrs (_: hasPostgres) enabled;
  # postgresql.target waits for postgresql-setup.service, which makes the
  # databases and roles (NixOS 25.11 on); before 25.11 there is no target
  # and postgresql.service made them itself.
  postgresUnits = cfg: optionals (hasPostgres cfg) ["postgresql.service" "postgresql.target"];
  # For the units that run the agent (a shell over SSH has the system's).
  # Without services.postgresql there is no package to name.
  postgresPackages = cfg: optional (hasPostgres cfg && config.services.postgresql.enable) config.services.postgresql.package;

  # --- The app's unit --------------------------------------------------------

  # nix/lib's unit, skipped until the first release (its
  # ConditionPathExists), with the runtime and git on its PATH and ordered
  # after PostgreSQL for data.postgres.
  appUnit = name: cfg: let
    unit = berth.unit name cfg;
  in
    unit
    // {
      wants = unit.wants ++ postgresUnits cfg;
      after = unit.after ++ postgresUnits cfg;
      path = runtimePackages cfg ++ [pkgs.git];
    };

  # --- The first release -----------------------------------------------------
  #
  # `berth agent app-deploy` of the branch's head, as the service's user,
  # when there is no `current` yet: at boot, and at every switch until then
  # (a switch starts what multi-user.target wants). Type=exec, so the switch
  # does not wait for the build. Its failure is the app's, recorded with the
  # service (`berth app status`), not the system's: the unit ends inactive,
  # never failed, because a failed unit after a switch fails the system
  # deploy that made it. The app's unit is not ordered after it: the deploy
  # starts that unit itself (sudo systemctl start), which would wait.
  firstReleaseName = name: "berth-first-release-${name}";
  # Nothing to fetch, or no health check to run it with (a warning says so).
  hasFirstRelease = cfg: cfg.firstRelease && cfg.repository != null && berth.healthUrl cfg != "";

  # Exit 1 (a fetch, build or health check failed: no network yet, say) is
  # tried again a few times; 2 (a refused revision, the service busy) and 3
  # (a rollback that failed) are final. A new deployment id each try.
  firstReleaseScript = name: cfg:
    pkgs.writeShellScript (firstReleaseName name) ''
      attempt=1
      while :; do
        status=0
        ${berthExe} agent app-deploy --service ${escapeShellArg name} \
          --id "first-$(date -u +%Y%m%dT%H%M%SZ)" --ref ${escapeShellArg cfg.branch} \
          --actor nixos-activation --reason "first release on this host" || status=$?
        if [ "$status" -ne 1 ] || [ "$attempt" -ge 5 ]; then
          exit "$status"
        fi
        attempt=$((attempt + 1))
        sleep 60
      done
    '';

  firstReleaseUnit = name: cfg: {
    description = "berth: first release of ${name} (the head of ${cfg.branch})";
    wantedBy = ["multi-user.target"];
    wants = ["network-online.target"] ++ postgresUnits cfg;
    after = ["network-online.target"] ++ postgresUnits cfg;
    unitConfig.ConditionPathExists = "!${dir name}/current";
    # A switch must not kill a release half built.
    restartIfChanged = false;
    # git and the runtime for install and build, sh for the commands, sudo
    # (/run/wrappers) for systemctl, pg_dump for data.postgres.
    path = runtimePackages cfg ++ [pkgs.git pkgs.bash "/run/wrappers"] ++ postgresPackages cfg;
    environment.BERTH_STATE_DIR = agent.stateDir;
    serviceConfig = {
      Type = "exec";
      User = cfg.user;
      Group = cfg.group;
      WorkingDirectory = dir name;
      ExecStart = firstReleaseScript name cfg;
      # The agent's exit codes (docs/cli.md): shown, but not a failed unit.
      SuccessExitStatus = "1 2 3 4";
    };
  };

  # --- Backups ---------------------------------------------------------------
  #
  # `berth agent snapshot create`, the snapshot a deploy takes (and prunes
  # like one), on a timer: SQLite and files copied, PostgreSQL dumped into
  # it; then, with backup.restic, `restic backup` of the snapshots and of
  # data.files. As the service's user, which owns them. nix/lib/backup.nix
  # makes the unit (tests/restic.rs runs it as rendered); here it gets
  # PostgreSQL's tools and ordering, and ssh for an sftp: repository
  # (restic runs `ssh` from PATH, which NixOS's default PATH lacks).
  backupName = backup.unitName;
  hasBackup = backup.has;

  backupUnit = name: cfg: let
    unit = backup.unit name cfg {
      berth = berthExe;
      restic = getExe' pkgs.restic "restic";
      inherit (pkgs) writeText;
      inherit (agent) stateDir;
    };
  in
    unit
    // {
      wants = unit.wants ++ postgresUnits cfg;
      after = unit.after ++ postgresUnits cfg;
      path = postgresPackages cfg ++ optional (cfg.backup.restic != null && hasPrefix "sftp:" cfg.backup.restic.repository) config.programs.ssh.package;
    };

  # --- Caddy -------------------------------------------------------------------

  virtualHosts = filterAttrs (_: host: host != null) (mapAttrs berth.caddyVirtualHost enabled);
  caddyGlobal = berth.caddyGlobalConfig services;
  caddyCredentials = berth.caddyCredentials services;
  plugins = berth.caddyPlugins services;
  caddyCfg = config.berth.caddy;
  buildCaddy = plugins != [] && caddyCfg.buildPlugins;

  rateLimitPlugin = berth.caddyRateLimitPlugin;
  # Which options of which services need a plugin, for the messages.
  neededBy = plugin:
    util.joinAnd (concatLists (mapAttrsToList (name: cfg:
      optional (plugin == rateLimitPlugin && cfg.caddy.rateLimit.enable) "berth.services.${name}.caddy.rateLimit"
      ++ optional (cfg.caddy.tls.dnsProvider != null && plugin == "github.com/caddy-dns/${cfg.caddy.tls.dnsProvider}")
      "berth.services.${name}.caddy.tls.dnsProvider")
    (filterAttrs (name: _: virtualHosts ? ${name}) enabled)));

  unversioned = filter (plugin: !(caddyCfg.pluginVersions ? ${plugin})) plugins;

  pluginProblems =
    map (plugin: "berth.caddy.pluginVersions has no version of ${plugin}, the Caddy plugin ${neededBy plugin} needs; set berth.caddy.pluginVersions.\"${plugin}\" to a tag or Go pseudo-version of it, or set berth.caddy.buildPlugins = false and services.caddy.package to a Caddy built with it")
    unversioned
    ++ optional (caddyCfg.pluginsHash == null)
    "berth.caddy.pluginsHash is not set: Caddy is built with ${util.joinAnd plugins} (for ${util.joinAnd (map neededBy plugins)}), and Nix must be told the hash of its sources; set berth.caddy.pluginsHash = \"\", build, and set it to the hash the error prints after `got:`";

  caddyPackage = pkgs.caddy.withPlugins ({
      # Without a version (an assertion says so first), nixpkgs refuses it.
      plugins = map (plugin:
        if caddyCfg.pluginVersions ? ${plugin}
        then "${plugin}@${caddyCfg.pluginVersions.${plugin}}"
        else plugin)
      plugins;
    }
    // optionalAttrs (caddyCfg.pluginsHash != null) {hash = caddyCfg.pluginsHash;});
in {
  imports = [./agent.nix];

  options.berth = {
    services = berth.mkOption lib berth.options.services;
    ports = berth.mkOptions lib berth.options.ports;
    caddy = berth.mkOptions lib berth.options.caddy;
  };

  config = {
    assertions =
      map (message: {
        assertion = false;
        inherit message;
      }) (concatLists [
        (forEach berth.problems)
        (berth.conflicts services config.berth.ports.reserved)
        (optionals buildCaddy pluginProblems)
      ]);

    warnings = concatLists [
      (forEach berth.warnings)
      (forEach (name: cfg:
        optional (cfg.firstRelease && cfg.repository == null)
        "berth.services.${name} has no repository: a fresh host serves nothing until `berth app deploy ${name} --repo URL`; set berth.services.${name}.repository, or berth.services.${name}.firstRelease = false"))
      (forEach (name: cfg:
        optional (cfg.firstRelease && cfg.repository != null && berth.healthUrl cfg == "")
        "berth.services.${name} has no first release: without a port or health.url there is no health check to release it with"))
      (forEach (name: cfg:
        optional (cfg.backup.restic != null && !hasBackup cfg)
        "berth.services.${name}.backup.restic is set, but nothing is backed up: turn on backup.enable and declare data.sqlite, data.postgres or data.files"))
    ];

    # One definition per user, from its first service: two services on one
    # user would otherwise clash on the user's home and group before the
    # assertion that names them could say so.
    users.users = mapAttrs (_: names: let
      name = head names;
      cfg = enabled.${name};
    in {
      isSystemUser = true;
      inherit (cfg) group;
      # Not cfg.description: a passwd entry may hold no `:`.
      description = "berth service ${name}";
      home = dir name;
      # tmpfiles makes it, with the service's modes.
      createHome = false;
      # `berth app deploy` logs in over SSH as this user.
      shell = mkDefault pkgs.bashInteractive;
      openssh.authorizedKeys.keys = concatMap (name: enabled.${name}.deployKeys) names;
      # For the install and build commands the agent runs in that session.
      packages = unique (concatMap (name: runtimePackages enabled.${name}) names) ++ [pkgs.git];
    }) (groupBy (name: enabled.${name}.user) (attrNames enabled));

    users.groups = mkMerge (mapAttrsToList (_: cfg: {${cfg.group} = {};}) enabled);

    systemd = {
      tmpfiles.rules = forEach berth.tmpfiles;
      services = mkMerge [
        # <name>.service, or the template <name>@.service of a service
        # with instances.
        (mapAttrs' (name: cfg:
          nameValuePair (
            if berth.templated cfg
            then "${name}@"
            else name
          ) (appUnit name cfg))
        enabled)
        (unitsOf hasFirstRelease firstReleaseName firstReleaseUnit)
        (unitsOf hasBackup backupName backupUnit)
        (mkIf (caddyCredentials != []) {
          caddy.serviceConfig.LoadCredential = caddyCredentials;
        })
      ];
      timers = unitsOf hasBackup backupName backup.timer;
      # <name>.socket of a service with socketActivation, also skipped until
      # the first release (its start then pulls the socket in: Requires=).
      sockets = unitsOf (cfg: cfg.socketActivation) (name: name) berth.socketUnit;
      # A template runs as its instances: `instances` of them at boot (and
      # after a system deploy); `berth app scale` changes the count until
      # the next app deploy.
      targets.multi-user.wants = forEach (name: cfg: optionals (berth.templated cfg) (berth.instanceUnits name cfg cfg.instances));
    };

    security.sudo.extraRules = forEach (name: cfg: berth.sudoRules name cfg "/run/current-system/sw/bin/systemctl");

    environment.etc = listToAttrs (mapAttrsToList (name: cfg:
      nameValuePair "berth/services/${name}.json" {
        text = builtins.toJSON (berth.manifest name cfg);
      })
    enabled);

    services.caddy = mkIf (virtualHosts != {}) {
      enable = true;
      virtualHosts = listToAttrs (mapAttrsToList (_: host: nameValuePair host.hostName host) virtualHosts);
      globalConfig = mkIf (caddyGlobal != "") caddyGlobal;
      package = mkIf buildCaddy (mkDefault caddyPackage);
    };

    # The databases of data.postgres and a role per user, who may connect
    # by peer authentication. ensureDBOwnership gives the user only the
    # database named after it (a warning names the others).
    services.postgresql = mkIf (postgresServices != {}) {
      enable = mkDefault true;
      ensureDatabases = concatMap (cfg: cfg.data.postgres) (attrValues postgresServices);
      ensureUsers =
        mapAttrsToList (_: cfg: {
          name = cfg.user;
          ensureDBOwnership = elem cfg.user cfg.data.postgres;
        })
        postgresServices;
    };

    # One by one, so the versions the user sets are added to these.
    berth.caddy.pluginVersions = mapAttrs (_: mkDefault) berth.caddyPluginVersions;
  };
}
