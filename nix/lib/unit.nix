# A service's systemd units: `unit` in the shape of
# systemd.services.<name> (description, wants, requires, after, wantedBy,
# unitConfig, environment, serviceConfig) and `socketUnit` in that of
# systemd.sockets.<name>; `serviceText`, `socketText` and `timerText`, the
# text NixOS writes for such a definition (and for systemd.timers.<name>); `unitFile` and `socketFile`, the text of a
# service's own units (what scripts/nix-check scores, and what
# tests/rendered_units.rs runs on a Debian systemd host).
let
  inherit (builtins) attrNames concatMap concatStringsSep isBool isList listToAttrs mapAttrs replaceStrings toJSON;
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

  # Until the first release there is no `current` to run: the units are
  # skipped, not failed (a failed unit would fail the system deploy that
  # made it). The first release starts them.
  released = name: {ConditionPathExists = "${service.dir name}/current";};

  # <name>.socket of a service with socketActivation: systemd listens on
  # the app's port and passes the socket to it as file descriptor 3.
  socketUnit = name: cfg: {
    description = "${cfg.description} (its listening socket)";
    wantedBy = ["sockets.target"];
    unitConfig = released name;
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
    unitConfig = released name;
    environment = environment name cfg;
    serviceConfig = serviceConfig name cfg;
  };

  # --- The text NixOS writes ---------------------------------------------
  #
  # As nixpkgs' nixos/lib/systemd-lib.nix writes a definition of
  # systemd.services.<name> (serviceToUnit) or systemd.sockets.<name>
  # (socketToUnit) or systemd.timers.<name> (timerToUnit), all through
  # commonUnitText and attrsToSection, byte
  # for byte (as read from nixpkgs' master in 2026; the VM tests in
  # nix/tests run NixOS's own): [Unit] from description, requires, wants
  # and after (a list as one line, space-separated) and unitConfig;
  # [Service] with one Environment= line per variable (PATH among them,
  # made of `path`), then serviceConfig; [Socket] with socketConfig, then
  # ListenStream= lines; [Install] WantedBy= when wantedBy is not empty
  # (NixOS also links the unit into <target>.wants/). Keys sorted; a list
  # value is one line per item; true and false as such.
  #
  # What NixOS adds and this does not, since it needs nixpkgs:
  # systemd.globalEnvironment (LOCALE_ARCHIVE and TZDIR, store paths, on
  # every service) and the default `path` of every service (coreutils,
  # findutils, gnugrep, gnused, systemd, after the unit's own); a caller
  # puts what stands for them into `environment` and `path`. An element of
  # `path` is a directory whose bin/ and sbin/ go on PATH, as
  # makeBinPath and makeSearchPathOutput "bin" "sbin" do for a package.
  # Keys of a definition berth does not use (before, partOf,
  # restartIfChanged, ListenDatagram=, …) are not rendered.

  toOption = value:
    if isBool value
    then
      (
        if value
        then "true"
        else "false"
      )
    else toString value;

  section = settings:
    concatStringsSep "" (concatMap (key: let
      value = settings.${key};
    in
      map (item: "${key}=${toOption item}\n") (
        if isList value
        then value
        else [value]
      )) (attrNames settings));

  # The [Unit] settings NixOS makes of a definition's options, then its
  # unitConfig.
  unitSettings = def: let
    list = key: setting:
      if (def.${key} or []) == []
      then {}
      else {${setting} = toString def.${key};};
  in
    list "requires" "Requires"
    // list "wants" "Wants"
    // list "after" "After"
    // (
      if (def.description or "") == ""
      then {}
      else {Description = def.description;}
    )
    // def.unitConfig or {};

  common = def: body:
    "[Unit]\n"
    + section (unitSettings def)
    + "\n"
    + body
    + (
      if (def.wantedBy or []) == []
      then ""
      else "\n[Install]\nWantedBy=${concatStringsSep " " def.wantedBy}\n"
    );

  serviceText = def: let
    path = def.path or [];
    env =
      def.environment
      or {}
      // (
        if path == []
        then {}
        else {PATH = concatStringsSep ":" (map (dir: "${dir}/bin") path ++ map (dir: "${dir}/sbin") path);}
      );
  in
    common def (
      "[Service]\n"
      + concatStringsSep "" (map (key: "Environment=${toJSON "${key}=${env.${key}}"}\n") (attrNames env))
      + section (def.serviceConfig or {})
    );

  socketText = def:
    common def (
      "[Socket]\n"
      + section (def.socketConfig or {})
      + "\n"
      + concatStringsSep "\n" (map (address: "ListenStream=${address}") (def.listenStreams or []))
      + "\n\n"
    );

  timerText = def:
    common def (
      "[Timer]\n"
      + section (def.timerConfig or {})
      + "\n"
    );

  # <name>.service (or the template <name>@.service) as NixOS writes
  # `unit`, without the `path` the module adds (the runtime, git) and
  # without what NixOS adds to every service (see above).
  unitFile = name: cfg: serviceText (unit name cfg);

  # <name>.socket of a service with socketActivation, as NixOS writes it.
  socketFile = name: cfg: socketText (socketUnit name cfg);
in {
  inherit environment serviceConfig socketUnit unit unitFile socketFile serviceText socketText timerText;
}
