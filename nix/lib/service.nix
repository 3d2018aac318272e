# What a service's pieces share: its directory layout, start command and
# health URL, and the checks the module turns into assertions and warnings.
# `cfg` is the evaluated `berth.services.<name>` (every option, defaults
# filled in).
let
  inherit (builtins) attrNames concatLists filter genList match;
  util = import ./util.nix;

  # The layout berth's agent uses (src/app/manifest/mod.rs, `Layout`).
  dir = name: "/var/lib/${name}";
  # Present while a deploy has the service stopped (`Layout::hold`).
  hold = name: "${dir name}/.berth/hold";

  defaultStart = {
    bun = "bun run start";
    node = "npm start";
  };

  # The unit's command, or null when the runtime has no default and `start`
  # is unset (an assertion then says so).
  start = cfg:
    if cfg.start != null
    then cfg.start
    else defaultStart.${cfg.runtime} or null;

  # --- Instances ---------------------------------------------------------
  #
  # `instances` copies of the app: with maxInstances above 1, the template
  # unit <name>@.service and its instances <name>@1 … <name>@N; else the
  # plain unit <name>.service, as before instances existed.

  # The most instances `berth app scale` may run.
  maxInstances = cfg:
    if cfg.maxInstances == null
    then cfg.instances
    else cfg.maxInstances;

  templated = cfg: maxInstances cfg > 1;

  # The unit the manifest names: the template, or the plain unit.
  unitName = name: cfg:
    if templated cfg
    then "${name}@.service"
    else "${name}.service";

  # The units of `count` instances: <name>@1.service …, or <name>.service.
  instanceUnits = name: cfg: count:
    if templated cfg
    then genList (i: "${name}@${toString (i + 1)}.service") count
    else ["${name}.service"];

  # Every port the service may listen on: port … port + maxInstances - 1
  # (instance i on port + i - 1); [] without a port.
  ports = cfg:
    if cfg.port == null
    then []
    else genList (i: cfg.port + i) (maxInstances cfg);

  # Checked over loopback; "" when there is nothing to check (no port, no
  # URL): the deploy then needs `--health-url`, and a warning says so. The
  # agent puts each instance's port for `{port}` (and its number for
  # `{instance}`).
  healthUrl = cfg:
    if cfg.health.url != null
    then cfg.health.url
    else if cfg.port == null
    then ""
    else if templated cfg
    then "http://127.0.0.1:{port}${cfg.health.path}"
    else "http://127.0.0.1:${toString cfg.port}${cfg.health.path}";

  # A data path as the agent resolves it: relative to the service's
  # directory, or absolute inside it, never the directory itself.
  dataPath = name: path: let
    base = dir name;
    full =
      if util.hasPrefix "/" path
      then path
      else "${base}/${path}";
  in
    if match "(.*/)?\\.\\.(/.*)?" path == null && util.hasPrefix "${base}/" full
    then full
    else null;

  validName = name: match "[a-z0-9][a-z0-9_-]{0,63}" name != null;

  problems = name: cfg: let
    at = "berth.services.${name}";
    outside = kind:
      map (path: "${at}.data.${kind} lists ${path}, which is outside ${dir name}; give a path relative to ${dir name} or inside it")
      (filter (path: dataPath name path == null) cfg.data.${kind});
  in
    concatLists [
      (
        if validName name
        then []
        else ["${at}: a service name is lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most 64 characters"]
      )
      (
        if start cfg == null
        then ["${at}.start is not set: runtime \"${cfg.runtime}\" has no default start command; set ${at}.start"]
        else []
      )
      (
        if cfg.caddy.enable && cfg.domain != null && cfg.port == null
        then ["${at}.domain is set but ${at}.port is not: Caddy needs a port to proxy to; set ${at}.port, or ${at}.caddy.enable = false"]
        else []
      )
      (
        if cfg.caddy.tls.dnsTokenFile != null && cfg.caddy.tls.dnsProvider == null
        then ["${at}.caddy.tls.dnsTokenFile is set but ${at}.caddy.tls.dnsProvider is not; name the DNS provider (e.g. \"cloudflare\")"]
        else []
      )
      (
        if cfg.socketActivation && cfg.port == null
        then ["${at}.socketActivation is set but ${at}.port is not: the socket listens on the app's port; set ${at}.port"]
        else []
      )
      (
        if cfg.socketActivation && templated cfg
        then ["${at}.socketActivation is for one instance, but ${at} may run ${toString (maxInstances cfg)}; set instances and maxInstances to 1, or turn socketActivation off"]
        else []
      )
      (
        if cfg.maxInstances != null && cfg.maxInstances < cfg.instances
        then ["${at}.maxInstances is ${toString cfg.maxInstances}, below instances (${toString cfg.instances}); raise ${at}.maxInstances or lower ${at}.instances"]
        else []
      )
      (
        if cfg.port != null && cfg.port + maxInstances cfg - 1 > 65535
        then ["${at}: its ${toString (maxInstances cfg)} instances would need ports ${toString cfg.port} to ${toString (cfg.port + maxInstances cfg - 1)}, past 65535; choose a lower ${at}.port"]
        else []
      )
      (
        if templated cfg && cfg.health.url != null && match ".*\\{(port|instance)}.*" cfg.health.url == null
        then ["${at}.health.url would check every instance at one address; put {port} (each instance's port) or {instance} (its number) in it"]
        else []
      )
      (map (secret: "${at}.secrets.${secret}: a secret's name is an environment variable name (letters, digits and `_`, not starting with a digit)")
        (filter (secret: match "[A-Za-z_][A-Za-z0-9_]*" secret == null) (attrNames cfg.secrets)))
      (outside "sqlite")
      (outside "files")
    ];

  # systemd.tmpfiles.rules for the directories the agent and the unit
  # expect; the agent makes repo.git, releases/<sha>, current and .berth.
  tmpfiles = name: cfg: let
    owned = mode: path: "d ${path} ${mode} ${cfg.user} ${cfg.group} -";
  in [
    (owned "0750" (dir name))
    (owned "0750" "${dir name}/releases")
    (owned "0700" "${dir name}/data")
    (owned "0700" "${dir name}/snapshots")
  ];

  # The backup timer's command line after the berth program: the same
  # snapshot a deploy takes, waiting for a deploy in progress.
  snapshotArgs = name: ["agent" "snapshot" "create" "--service" name "--actor" "backup-timer" "--lock-wait" "600"];

  warnings = name: cfg:
    concatLists [
      (
        if healthUrl cfg == ""
        then ["berth.services.${name} has no port and no health.url: `berth app deploy ${name}` needs --health-url"]
        else []
      )
      # NixOS's ensureDBOwnership gives a user only the database of its
      # own name; the snapshot and the restore need the user to own each.
      (map (database: "berth.services.${name}.data.postgres lists ${database}, which NixOS cannot give to the service's user ${cfg.user} (only a database named ${cfg.user}); give it once by hand: sudo -u postgres psql -c 'ALTER DATABASE \"${database}\" OWNER TO \"${cfg.user}\"'")
        (filter (database: database != cfg.user) cfg.data.postgres))
    ];
in {
  inherit dir hold start healthUrl dataPath problems warnings tmpfiles snapshotArgs maxInstances templated unitName instanceUnits ports;
}
