{
  description = "berth benchmark: 16 nodes (n1..n16) whose configurations each cost about as much to evaluate as a small NixOS system's module evaluation would here, and whose systems build at once";

  outputs = _: let
    system = "x86_64-linux";
    # What forcing a node's config costs: a fold over a list, a stand-in for
    # the module system, which this machine cannot evaluate (no nixpkgs).
    # It depends on the name, so Nix computes it once per node.
    cost = name: builtins.foldl' builtins.add 0 (builtins.genList (x: x + builtins.stringLength name) 400000);
    node = name: {
      config = builtins.seq (cost name) {
        berth.deployment.targetHost = "h1";
        system.build.toplevel = builtins.derivation {
          inherit name system;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = ["-c" "mkdir -p $out/bin; printf '#!/bin/sh\\nexit 0\\n' > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration"];
        };
      };
    };
  in {
    nixosConfigurations = builtins.listToAttrs (builtins.genList (i: {
        name = "n${toString (i + 1)}";
        value = node "n${toString (i + 1)}";
      })
      16);
  };
}
