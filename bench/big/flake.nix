{
  description = "berth benchmark: one node whose system closure is ~300 paths, ~100 MB";

  outputs = _: let
    system = "x86_64-linux";
    leaf = i:
      builtins.derivation {
        name = "bench-leaf-${toString i}";
        inherit system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = ["-c" "head -c 337920 /dev/urandom > $out"];
      };
    leaves = builtins.genList leaf 300;
    toplevel = builtins.derivation {
      name = "nixos-system-bench";
      inherit system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      # Referencing every leaf makes them the closure.
      paths = builtins.concatStringsSep "\n" (map toString leaves);
      args = [
        "-c"
        ''
          mkdir -p $out/bin
          printf '%s\n' "$paths" > $out/closure
          printf '#!/bin/sh\nexit 0\n' > $out/bin/switch-to-configuration
          chmod +x $out/bin/switch-to-configuration
        ''
      ];
    };
  in {
    nixosConfigurations.bench.config = {
      system.build.toplevel = toplevel;
      berth.deployment = {
        targetHost = "h1";
        confirmTimeout = 10;
      };
    };
  };
}
