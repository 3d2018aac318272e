{
  description = "An example fleet for berth: no inputs, runs on berth's lab hosts";

  # Nodes come from fleet.json, so a demo or a test can point them at lab
  # hosts and change versions without editing Nix:
  # { "web1": { "host": "h1", "address": "10.231.0.6", "tags": ["web"],
  #             "version": "1", "behaviour": "healthy" } }
  # ("targetUser": "deploy" deploys as that user, through sudo.)
  outputs = _: let
    fleet = builtins.fromJSON (builtins.readFile ./fleet.json);
    node = name: spec: {
      config = {
        system.build.toplevel = import ./system.nix {
          inherit name;
          inherit (spec) version;
          behaviour = spec.behaviour or "healthy";
          delay = spec.delay or 0;
        };
        berth.deployment = {
          targetHost = spec.host;
          targetUser = spec.targetUser or "root";
          askSudoPassword = spec.askSudoPassword or false;
          tags = spec.tags or [];
          confirmTimeout = spec.confirmTimeout or 10;
          buildOnTarget = spec.buildOnTarget or false;
          sshOptions = spec.sshOptions or [];
          stage = spec.stage or null;
          healthChecks = {
            http = [
              {
                url = "http://${spec.address}:8080/health";
                timeout = 2;
                retries = spec.retries or 2;
              }
            ];
            units = spec.units or [];
            commands = map (command: {inherit command;}) (spec.commands or []);
          };
        };
      };
    };
  in {
    nixosConfigurations = builtins.mapAttrs node fleet;
  };
}
