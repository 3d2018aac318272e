# Port conflicts among berth.services, and with berth.ports.reserved, as
# assertion messages naming both parties.
let
  inherit (builtins) attrNames concatLists elem filter groupBy length sort;
  util = import ./util.nix;

  # portConflicts services reserved: `services` is berth.services (name ->
  # evaluated options); disabled services and services without a port
  # take no port.
  portConflicts = services: reserved: let
    users = filter (name: services.${name}.enable && services.${name}.port != null) (attrNames services);
    portOf = name: services.${name}.port;
    byPort = groupBy (name: toString (portOf name)) users;
    shared =
      map (
        port: let
          names = map (name: "berth.services.${name}") byPort.${port};
        in
          if length names == 2
          then "${util.joinAnd names} both use port ${port}; give each service its own port"
          else "${util.joinAnd names} all use port ${port}; give each service its own port"
      )
      (sort lessThanNumerically (filter (port: length byPort.${port} > 1) (attrNames byPort)));
    onReserved =
      map (name: "berth.services.${name} uses port ${toString (portOf name)}, which berth.ports.reserved lists; choose another port")
      (filter (name: elem (portOf name) reserved) users);
  in
    concatLists [shared onReserved];

  lessThanNumerically = a: b: builtins.fromJSON a < builtins.fromJSON b;
in
  portConflicts
