# A service's systemd unit: `unit` in the shape of
# systemd.services.<name> (description, wants, after, wantedBy,
# environment, serviceConfig), and `unitFile`, the .service file NixOS
# renders from it (what scripts/nix-check scores).
let
  inherit (builtins) attrNames concatLists concatStringsSep isBool isList listToAttrs mapAttrs replaceStrings toJSON;
  util = import ./util.nix;
  service = import ./service.nix;
  hardening = import ./hardening.nix;

  # systemd expands %-specifiers in Environment=: a value is doubled so it
  # reaches the app as declared; %d is the credentials directory.
  literal = replaceStrings ["%"] ["%%"];

  environment = _name: cfg:
    (
      if cfg.runtime == "bun" || cfg.runtime == "node"
      then {NODE_ENV = "production";}
      else {}
    )
    // (
      if cfg.port == null || service.templated cfg
      then {}
      else {PORT = toString cfg.port;}
    )
    # An instance of the template learns its number from systemd (%i), and
    # the start command below makes its port from it.
    // (
      if service.templated cfg
      then {BERTH_INSTANCE = "%i";}
      else {}
    )
    // mapAttrs (_: literal) cfg.environment
    // listToAttrs (map (secret: {
      name = "${secret}_FILE";
      value = "%d/${secret}";
    }) (attrNames cfg.secrets));

  # With instances and a port, instance i listens on port + i - 1:
  # systemd cannot add, so the shell does, before the app's command.
  start = name: cfg: let
    command = service.start cfg;
    port =
      if cfg.port != null && service.templated cfg
      then "PORT=$((${toString cfg.port} + BERTH_INSTANCE - 1)); export PORT; "
      else "";
  in
    if command == null
    then "echo ${toJSON "berth.services.${name}.start is not set"} >&2; exit 1"
    else port + command;

  # With socketActivation, a start waits while berth holds the service
  # (src/app/manifest/mod.rs, `Layout::hold`): a connection that reaches the
  # socket while a deploy migrates does not start the app early.
  waitForHold = name: let
    hold = service.hold name;
  in "if [ -e ${hold} ]; then echo 'berth: waiting for the deploy that stopped this service to let it start (${hold})'; while [ -e ${hold} ]; do sleep 0.05; done; fi";

  # <name>.socket of a service with socketActivation: systemd listens on
  # the app's port and passes the socket to it as file descriptor 3.
  socketUnit = _name: cfg: {
    description = "${cfg.description} (its listening socket)";
    wantedBy = ["sockets.target"];
    listenStreams = ["127.0.0.1:${toString cfg.port}"];
  };

  # serviceConfig name cfg: how the unit runs the app, then the hardening,
  # then hardening.extraServiceConfig over both.
  serviceConfig = name: cfg:
    {
      Type = "exec";
      User = cfg.user;
      Group = cfg.group;
      WorkingDirectory = "${service.dir name}/current";
      ExecStart = "/bin/sh -c ${util.systemdQuote (start name cfg)}";
      Restart = "on-failure";
      RestartSec = "5s";
    }
    // (
      if cfg.socketActivation
      then {ExecStartPre = "/bin/sh -c ${util.systemdQuote (waitForHold name)}";}
      else {}
    )
    // (
      if cfg.secrets == {}
      then {}
      else {LoadCredential = map (secret: "${secret}:${cfg.secrets.${secret}}") (attrNames cfg.secrets);}
    )
    // (
      if cfg.environmentFiles == []
      then {}
      else {EnvironmentFile = cfg.environmentFiles;}
    )
    // hardening name cfg
    // cfg.hardening.extraServiceConfig;

  unit = name: cfg: let
    socket =
      if cfg.socketActivation
      then ["${name}.socket"]
      else [];
  in {
    inherit (cfg) description;
    wants = ["network-online.target"];
    requires = socket;
    after = ["network-online.target"] ++ socket;
    # A template is wanted through its instances (the module puts
    # `instanceUnits` into multi-user.target's wants).
    wantedBy =
      if service.templated cfg
      then []
      else ["multi-user.target"];
    environment = environment name cfg;
    serviceConfig = serviceConfig name cfg;
  };

  # As nixpkgs' systemd-lib renders a value: a list is one line per item.
  lines = key: value:
    map (item: "${key}=${
      if isBool item
      then
        (
          if item
          then "true"
          else "false"
        )
      else toString item
    }") (
      if isList value
      then value
      else [value]
    );

  section = title: settings:
    ["[${title}]"] ++ concatLists (map (key: lines key settings.${key}) (attrNames settings));

  unitFile = name: cfg: let
    u = unit name cfg;
  in
    concatStringsSep "\n" (concatLists [
      (section "Unit" {
        Description = u.description;
        Wants = u.wants;
        Requires = u.requires;
        After = u.after;
      })
      [""]
      (section "Service" ({Environment = map (key: toJSON "${key}=${u.environment.${key}}") (attrNames u.environment);} // u.serviceConfig))
      [""]
      (section "Install" {WantedBy = u.wantedBy;})
      [""]
    ]);
in {
  inherit environment serviceConfig socketUnit unit unitFile;
}
