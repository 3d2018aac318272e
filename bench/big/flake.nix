{
  description = "berth benchmark: a system closure of ~300 paths, ~100 MB, on one node (bench, host h1), on eight (big1..big8, hosts h1..h8, tag big) and on 32 (wide1..wide32, hosts h1..h32, tag wide; bench/fanout)";

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
    node = host: tags: {
      config = {
        system.build.toplevel = toplevel;
        berth.deployment = {
          targetHost = host;
          confirmTimeout = 10;
          inherit tags;
        };
      };
    };
    eight = builtins.listToAttrs (builtins.genList (i: {
        name = "big${toString (i + 1)}";
        value = node "h${toString (i + 1)}" ["big"];
      })
      8);
    wide = builtins.listToAttrs (builtins.genList (i: {
        name = "wide${toString (i + 1)}";
        value = node "h${toString (i + 1)}" ["wide"];
      })
      32);
  in {
    nixosConfigurations = {bench = node "h1" [];} // eight // wide;
  };
}
