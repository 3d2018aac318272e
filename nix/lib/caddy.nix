# The Caddy side of berth.services: one virtual host per service with a
# domain (for services.caddy.virtualHosts), the server-wide options they
# need (services.caddy.globalConfig), the credentials Caddy's unit loads, and
# the plugins Caddy must be built with.
#
# Plugins: the `rate_limit` directive is github.com/mholt/caddy-ratelimit;
# a DNS challenge needs github.com/caddy-dns/<provider>. nixpkgs' plain
# `pkgs.caddy` has neither: use `pkgs.caddy.withPlugins`.
let
  inherit (builtins) attrNames concatLists concatStringsSep filter sort;
  util = import ./util.nix;
  service = import ./service.nix;

  rateLimitPlugin = "github.com/mholt/caddy-ratelimit";

  # The versions berth builds Caddy with unless told otherwise
  # (berth.caddy.pluginVersions). The caddy-dns providers have none: which
  # one, and so its version, is the user's choice.
  pluginVersions = {${rateLimitPlugin} = "v0.1.0";};

  enabled = services: filter (name: services.${name}.enable) (attrNames services);

  served = cfg: cfg.enable && cfg.caddy.enable && cfg.domain != null && cfg.port != null;

  # The systemd credential of a service's DNS token in caddy.service.
  credentialId = name: "berth-${name}-dns-token";

  tls = name: cfg: let
    inherit (cfg.caddy.tls) dnsProvider dnsTokenFile;
    # Caddy reads the token when it loads its config, from the credential
    # systemd copied for it: the file itself may be root's only.
    token =
      if dnsTokenFile == null
      then ""
      else " {file./run/credentials/caddy.service/${credentialId name}}";
  in
    if dnsProvider == null
    then []
    else [
      "tls {"
      "\tdns ${dnsProvider}${token}"
      "}"
    ];

  hsts = cfg:
    if cfg.caddy.hsts
    then ["header Strict-Transport-Security \"max-age=31536000; includeSubDomains\""]
    else [];

  rateLimit = name: cfg: let
    rl = cfg.caddy.rateLimit;
  in
    if !rl.enable
    then []
    else [
      "\trate_limit {"
      "\t\tzone berth_${name} {"
      # The client's address, after the trusted proxies of globalConfig.
      "\t\t\tkey {client_ip}"
      "\t\t\tevents ${toString rl.events}"
      "\t\t\twindow ${rl.window}"
      "\t\t}"
      "\t}"
    ];

  # caddyVirtualHost name cfg: { hostName; serverAliases; extraConfig; }
  # for services.caddy.virtualHosts.<domain>, or null when the service is
  # not served (disabled, caddy.enable off, no domain or no port).
  virtualHost = name: cfg:
    if !served cfg
    then null
    else {
      hostName = cfg.domain;
      inherit (cfg) serverAliases;
      extraConfig = concatStringsSep "\n" (concatLists [
        (tls name cfg)
        (hsts cfg)
        (
          if cfg.caddy.extraConfig == ""
          then []
          else [cfg.caddy.extraConfig]
        )
        # `route` keeps the rate limit before the proxy whatever the
        # plugin's directive order.
        ["route {"]
        (rateLimit name cfg)
        [
          # With instances, every port one may listen on: a scaled-down
          # instance refuses, and Caddy tries another.
          "\treverse_proxy ${concatStringsSep " " (map (port: "127.0.0.1:${toString port}") (service.ports cfg))} {"
          # A deploy stops and starts the app: hold requests until it
          # answers again instead of failing them.
          "\t\tlb_try_duration 30s"
          "\t\tlb_try_interval 250ms"
        ]
        (
          if service.templated cfg
          then [
            # Leave an instance that refused alone for a while.
            "\t\tfail_duration 10s"
          ]
          else []
        )
        [
          "\t}"
          "}"
          ""
        ]
      ]);
    };

  servedNames = services: filter (name: served services.${name}) (enabled services);

  # caddyGlobalConfig services: lines for services.caddy.globalConfig (""
  # when none are needed). trusted_proxies is a server-wide option, so the
  # ranges of every served service are merged.
  globalConfig = services: let
    ranges = util.unique (concatLists (map (name: services.${name}.caddy.rateLimit.trustedProxies) (servedNames services)));
  in
    if ranges == []
    then ""
    else
      concatStringsSep "\n" [
        "servers {"
        "\ttrusted_proxies static ${concatStringsSep " " ranges}"
        "}"
        ""
      ];

  # caddyCredentials services: LoadCredential= entries for caddy.service
  # (systemd.services.caddy.serviceConfig.LoadCredential).
  credentials = services:
    map (name: "${credentialId name}:${services.${name}.caddy.tls.dnsTokenFile}")
    (filter (name: services.${name}.caddy.tls.dnsProvider != null && services.${name}.caddy.tls.dnsTokenFile != null) (servedNames services));

  # caddyfile { services; extraGlobalConfig ? ""; logDir ? "/var/log/caddy"; }:
  # the Caddyfile nixpkgs' services.caddy assembles from what
  # modules/services.nix sets, before the module runs `caddy fmt
  # --overwrite` on it. Test support, so that Debian's caddy reads what a
  # NixOS host would (tests/caddy.rs); exported from this file only. Every
  # other services.caddy option is at its default: no email, acmeCA, ports,
  # listenAddresses or useACMEHost; the global `log { level ERROR }`, and
  # each host's access log in `logDir` (services.caddy.logDir).
  # `extraGlobalConfig`: lines a user adds to services.caddy.globalConfig,
  # after berth's, which come after the module's own (nixpkgs' modules are
  # evaluated before the user's, and `lines` joins definitions in that
  # order). The hosts come in the order of their names (attrValues of
  # services.caddy.virtualHosts). The authority is nixpkgs'
  # nixos/modules/services/web-servers/caddy/default.nix and
  # vhost-options.nix: this follows them as read at nixpkgs commit 0145c6da.
  caddyfile = {
    services,
    extraGlobalConfig ? "",
    logDir ? "/var/log/caddy",
  }: let
    hosts =
      sort (a: b: a.hostName < b.hostName)
      (map (name: virtualHost name services.${name}) (servedNames services));
    # The module's defaults (email, acmeCA, httpPort and httpsPort unset
    # leave empty lines), then its logFormat, "level ERROR\n".
    moduleGlobal = "\n\n\n\nlog {\n  level ERROR\n\n}\n";
    global = concatStringsSep "\n" (filter (lines: lines != "") [moduleGlobal (globalConfig services) extraGlobalConfig]);
    # A virtual host: its names, the empty bind and tls lines, the access
    # log (the default logFormat, "output file <logDir>/access-<name>.log\n"),
    # then berth's extraConfig.
    vhost = host:
      concatStringsSep "" [
        "${host.hostName} ${concatStringsSep " " host.serverAliases} {\n"
        "  \n"
        "  \n"
        "  log {\n  output file ${logDir}/access-${host.hostName}.log\n\n}\n"
        "\n"
        "\n"
        "  ${host.extraConfig}\n"
        "}\n"
      ];
  in
    # The module's extraConfig is empty: its line stays.
    "{\n  ${global}\n}\n\n${concatStringsSep "\n" (map vhost hosts)}\n";

  # caddyPlugins services: the Go modules Caddy must be built with.
  plugins = services: let
    served' = map (name: services.${name}) (servedNames services);
  in
    sort builtins.lessThan (util.unique (concatLists [
      (
        if builtins.any (cfg: cfg.caddy.rateLimit.enable) served'
        then [rateLimitPlugin]
        else []
      )
      (map (cfg: "github.com/caddy-dns/${cfg.caddy.tls.dnsProvider}") (filter (cfg: cfg.caddy.tls.dnsProvider != null) served'))
    ]));
in {
  inherit virtualHost globalConfig credentials plugins rateLimitPlugin pluginVersions caddyfile;
}
