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

  unit = name: cfg: {
    inherit (cfg) description;
    wants = ["network-online.target"];
    after = ["network-online.target"];
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
        After = u.after;
      })
      [""]
      (section "Service" ({Environment = map (key: toJSON "${key}=${u.environment.${key}}") (attrNames u.environment);} // u.serviceConfig))
      [""]
      (section "Install" {WantedBy = u.wantedBy;})
      [""]
    ]);
in {
  inherit environment serviceConfig unit unitFile;
}
