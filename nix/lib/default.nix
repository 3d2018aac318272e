# berth's pure Nix logic: `import ./nix/lib { }` gives the functions below.
# They need only builtins (no nixpkgs), so CI evaluates and tests them with
# `nix-instantiate --eval --strict --json` (nix/lib/tests, scripts/nix-check);
# modules/ calls them with the evaluated options, so what the tests prove is
# what the modules write.
#
# `cfg` is always the evaluated `config.berth.services.<name>` of one
# service: every option of options.nix, defaults filled in. `services` is
# `config.berth.services` (name -> cfg); disabled services count nowhere.
_: let
  eval = import ./eval.nix;
  service = import ./service.nix;
  unit = import ./unit.nix;
  caddy = import ./caddy.nix;
  conflicts = import ./conflicts.nix;
  options = import ./options.nix;
  sudo = import ./sudo.nix;
in {
  # --- The option schema -------------------------------------------------

  # The options of every module as data (see options.nix): `services` (the
  # attrsOf submodule of berth.services), `ports`, `caddy`, `deployment`,
  # `agent`, `machine`. Leaves are { _type = "option"; type; default?;
  # defaultText?; example; description; }; types are described in
  # types.nix.
  inherit options;

  # mkOptions lib group -> the lib.mkOption tree of a group of options;
  # mkOption lib leaf -> the lib.mkOption of one option. Pass nixpkgs'
  # `lib`. The module declarations:
  #   options.berth.services = mkOption lib options.services;
  #   options.berth.ports = mkOptions lib options.ports;
  #   options.berth.caddy = mkOptions lib options.caddy;
  #   options.berth.deployment = mkOptions lib options.deployment;
  #   options.berth.agent = mkOptions lib options.agent;
  #   options.berth.machine = mkOptions lib options.machine;
  # (or all at once: options.berth = mkOptions lib options).
  # Types map to lib.types; defaults that depend on the service's name
  # (user, group, description) are applied in the submodule. An option
  # without `default` (agent.package) must be given one by the module:
  # config.berth.agent.package = lib.mkDefault <the berth package>; and
  # defaults the docs describe as computed (machine.tailscaleHost,
  # agent.converge.node, deployment.targetHost, caddy.pluginVersions) are
  # null or empty here and set with lib.mkDefault in the module when it
  # knows better.
  inherit (eval) mkOptions mkOption;

  # evalOptions path tree partial -> every option's value, defaults filled
  # in, types checked (throws naming the option). Without nixpkgs.
  inherit (eval) evalOptions;

  # serviceDefaults name partial -> the cfg of berth.services.<name> given
  # `partial`, as the module system would evaluate it (tests, scoring).
  serviceDefaults = eval.service options;

  # The Markdown of docs/modules.md (scripts/nix-check --write-docs).
  optionsMarkdown = import ./docs.nix options;

  # --- berth.services.<name> ---------------------------------------------

  # manifest name cfg -> the attrset to write as
  # /etc/berth/services/<name>.json (builtins.toJSON): src/app/manifest/mod.rs's
  # schema, version 1.
  manifest = import ./manifest.nix;

  # unit name cfg -> { description; wants; requires; after; wantedBy;
  # unitConfig; environment; serviceConfig; } for systemd.services.<name>;
  # unitConfig.ConditionPathExists skips it until the first release. Add
  # to it: `path` (the runtime, git), and the first release's unit in
  # `after`/`requires`.
  # ExecStart is `/bin/sh -c "<start>"` in /var/lib/<name>/current.
  # Secrets: LoadCredential=<NAME>:<file>, and <NAME>_FILE=%d/<NAME> in the
  # environment (the app reads $CREDENTIALS_DIRECTORY/<NAME>).
  inherit (unit) unit;

  # unitFile name cfg -> the text of <name>.service as NixOS writes `unit`
  # (nixpkgs' systemd-lib), without `path` and what NixOS adds to every
  # service: what the hardening check scores.
  inherit (unit) unitFile;

  # socketUnit name cfg -> systemd.sockets.<name> of a service with
  # socketActivation: { description; wantedBy; unitConfig; listenStreams; }
  # (unitConfig: the same ConditionPathExists).
  inherit (unit) socketUnit;

  # socketFile name cfg -> the text of <name>.socket as NixOS writes it;
  # serviceText, socketText, timerText def -> the text NixOS writes for
  # any systemd.services / sockets / timers definition (`path` a list of
  # directories: their bin/ and sbin/ on PATH). For the tests, which run
  # these files with Debian's systemd.
  inherit (unit) socketFile serviceText socketText timerText;

  # serviceConfig name cfg -> the [Service] settings: how the app runs,
  # then `hardening`, then hardening.extraServiceConfig over everything.
  inherit (unit) serviceConfig;

  # environment name cfg -> systemd.services.<name>.environment: NODE_ENV
  # (bun, node), PORT, `environment` (% doubled for systemd), <NAME>_FILE.
  inherit (unit) environment;

  # hardening name cfg -> the sandbox's [Service] settings, {} with
  # hardening.enable = false. MemoryDenyWriteExecute depends on the runtime
  # (off for the JITs of bun and node). data/ is the only writable path.
  hardening = import ./hardening.nix;

  # sudoRules name cfg systemctl -> security.sudo.extraRules: cfg.user may
  # run `<systemctl> restart|stop|start|status <name>.service` (with
  # instances: each of <name>@1.service … <name>@<maxInstances>.service) as
  # root without a password, nothing else. Pass
  # "/run/current-system/sw/bin/systemctl" (see sudo.nix for why).
  sudoRules = sudo.service;

  # caddyVirtualHost name cfg -> { hostName; serverAliases; extraConfig; }
  # for services.caddy.virtualHosts.<cfg.domain>, or null when not served
  # (disabled, caddy.enable off, no domain, or no port).
  caddyVirtualHost = caddy.virtualHost;

  # caddyGlobalConfig services -> lines for services.caddy.globalConfig
  # (servers { trusted_proxies static … }), "" when none.
  caddyGlobalConfig = caddy.globalConfig;

  # caddyCredentials services -> systemd.services.caddy.serviceConfig
  # .LoadCredential entries for the DNS token files (the virtual host reads
  # /run/credentials/caddy.service/berth-<name>-dns-token).
  caddyCredentials = caddy.credentials;

  # caddyPlugins services -> the Go modules Caddy must be built with
  # (pkgs.caddy.withPlugins): caddy-ratelimit, caddy-dns/<provider>.
  caddyPlugins = caddy.plugins;

  # caddyPluginVersions -> the versions berth builds those plugins with
  # unless berth.caddy.pluginVersions says otherwise (the module sets them
  # with lib.mkDefault, one by one); caddyRateLimitPlugin -> the Go module
  # of the `rate_limit` directive.
  caddyPluginVersions = caddy.pluginVersions;
  caddyRateLimitPlugin = caddy.rateLimitPlugin;

  # tmpfiles name cfg -> systemd.tmpfiles.rules for /var/lib/<name>,
  # releases/, data/ and snapshots/, owned by the service.
  inherit (service) tmpfiles;

  # snapshotArgs name -> the backup timer's arguments to `berth`
  # (`berth agent snapshot create --service <name> …`).
  inherit (service) snapshotArgs;

  # dataPath name path -> the absolute path the agent uses for a declared
  # data path, or null when it is outside /var/lib/<name>.
  inherit (service) dataPath;

  # healthUrl cfg -> the manifest's health URL ("" without port and URL;
  # `{port}` for each instance's port when the service has instances).
  inherit (service) healthUrl;

  # Instances (berth.services.<name>.instances, maxInstances):
  # maxInstances cfg -> the most `berth app scale` may run;
  # templated cfg -> whether the service runs as <name>@.service (its
  # maxInstances is above 1); unitName name cfg -> the unit the manifest
  # names (<name>@.service or <name>.service); instanceUnits name cfg n ->
  # the units of n instances (<name>@1.service …, or [<name>.service]);
  # ports cfg -> every port it may listen on (port … port + maxInstances
  # - 1, instance i on port + i - 1), [] without a port.
  inherit (service) maxInstances templated unitName instanceUnits ports;

  # problems name cfg -> assertion messages (each says what to change);
  # warnings name cfg -> warnings. The module maps them to
  # `assertions = map (message: { assertion = false; inherit message; })`.
  inherit (service) problems warnings;

  # --- Across services ---------------------------------------------------

  # conflicts services reserved -> assertion messages naming every service
  # involved, for what enabled services must not share: a port (with each
  # other, or with berth.ports.reserved), a user, a name Caddy serves
  # (domain or server alias). E.g.
  # "berth.services.a and berth.services.b both use port 3000; …",
  # "berth.services.a uses port 22, which berth.ports.reserved lists; …",
  # "berth.services.a and berth.services.b both run as user a: …",
  # "berth.services.a and berth.services.b both serve a.example.com: …".
  conflicts = conflicts.all;

  # portConflicts services reserved -> the port messages of `conflicts`.
  portConflicts = conflicts.ports;

  # --- berth.agent -------------------------------------------------------

  # deploySudoRules deployUsers berth -> security.sudo.extraRules: the
  # users of berth.agent.deployUsers may run `<berth> agent <verb> …` as
  # root without a password for activate, confirm, rollback, status, show,
  # history, record, lock, dry-activate and fetch (with any arguments), nothing
  # else. Pass
  # "/run/current-system/sw/bin/berth" (see sudo.nix for why).
  deploySudoRules = sudo.deploy;
}
