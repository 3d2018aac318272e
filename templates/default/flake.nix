{
  description = "A fleet of NixOS hosts, deployed with berth";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    berth.url = "github:berth-deploy/berth";
    berth.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = {
    self,
    nixpkgs,
    berth,
  }: let
    inherit (nixpkgs) lib;
    forAllSystems = lib.genAttrs ["x86_64-linux" "aarch64-linux"];
  in {
    # One node per host: `berth deploy .#web1`, or `berth deploy .` for all.
    nixosConfigurations.web1 = lib.nixosSystem {
      modules = [
        berth.nixosModules.default
        ./hosts/web1.nix
      ];
    };

    # `nix run .#deploy -- deploy .#web1` runs the berth this flake pins.
    apps = forAllSystems (system: {
      inherit (berth.apps.${system}) default deploy;
    });

    # `nix flake check` fails, naming the node and what to change, when berth
    # could not deploy a node (its name, tags, target host, health checks).
    checks = forAllSystems (system: let
      problems = berth.lib.checkNodes self.nixosConfigurations;
    in {
      berth-nodes =
        lib.throwIf (problems != []) "berth cannot deploy:\n${lib.concatLines problems}"
        (nixpkgs.legacyPackages.${system}.runCommand "berth-nodes" {} "touch $out");
    });

    # `nix develop`: berth on PATH, to run `berth deploy .` and `berth app …`.
    devShells = forAllSystems (system: {
      default = nixpkgs.legacyPackages.${system}.mkShell {
        packages = [berth.packages.${system}.default];
      };
    });
  };
}
