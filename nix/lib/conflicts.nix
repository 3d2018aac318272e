# What berth.services must not share, as assertion messages naming every
# service involved: a port (with each other, or with berth.ports.reserved),
# a user, a name Caddy serves. `services` is berth.services (name ->
# evaluated options); disabled services take nothing.
let
  inherit (builtins) attrNames concatLists concatMap elem filter groupBy length sort;
  util = import ./util.nix;
  caddy = import ./caddy.nix;
  service = import ./service.nix;

  enabled = services: filter (name: services.${name}.enable) (attrNames services);

  # One message per key that several enabled services take: "<services>
  # both|all <what key>". `takes name cfg` lists the keys (strings) a
  # service takes; keys are reported in `lessThan` order, the services of
  # each by name.
  shared = {
    takes,
    what,
    lessThan ? builtins.lessThan,
  }: services: let
    taken = concatMap (name:
      map (key: {inherit name key;}) (util.unique (takes name services.${name})))
    (enabled services);
    byKey = groupBy (taking: taking.key) taken;
    clashing = sort lessThan (filter (key: length byKey.${key} > 1) (attrNames byKey));
  in
    map (key: let
      names = map (taking: "berth.services.${taking.name}") byKey.${key};
    in "${util.joinAnd names} ${
      if length names == 2
      then "both"
      else "all"
    } ${what key}")
    clashing;

  lessThanNumerically = a: b: builtins.fromJSON a < builtins.fromJSON b;

  # Every port a service may listen on: with instances, port …
  # port + maxInstances - 1.
  portsOf = cfg: map toString (service.ports cfg);

  # ports services reserved: services without a port take none.
  ports = services: reserved:
    shared {
      takes = _: portsOf;
      what = port: "use port ${port}; give each service its own port";
      lessThan = lessThanNumerically;
    }
    services
    ++ concatMap (name:
      map (port: "berth.services.${name} uses port ${toString port}, which berth.ports.reserved lists; choose another port")
      (filter (port: elem port reserved) (service.ports services.${name})))
    (enabled services);

  # The user owns the service's directory and its sudo rule names the unit:
  # two services on one user could each touch the other's.
  users = shared {
    takes = _: cfg: [cfg.user];
    what = user: "run as user ${user}: each service's user owns its directory and may control its unit only; give each its own berth.services.<name>.user";
  };

  # A name (domain or server alias) is one Caddy site: Caddy refuses a
  # name in two virtual hosts. Only services Caddy serves take names.
  names = shared {
    takes = name: cfg: let
      host = caddy.virtualHost name cfg;
    in
      if host == null
      then []
      else [host.hostName] ++ host.serverAliases;
    what = host: "serve ${host}: Caddy serves a name from one virtual host only; give each service its own domain and serverAliases";
  };
in {
  inherit ports users names;

  # all services reserved: every message above, ports first.
  all = services: reserved: concatLists [(ports services reserved) (users services) (names services)];
}
