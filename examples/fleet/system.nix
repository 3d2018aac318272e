# A stand-in for a NixOS system, with no nixpkgs: what berth needs of a node
# is a toplevel holding bin/switch-to-configuration. Its activation runs a
# small web server (GET /health) on port 8080 and can misbehave on purpose,
# so berth's rollback can be seen and tested:
#   healthy       /health answers 200
#   unhealthy     /health answers 404
#   failed-units  switch-to-configuration exits 4 (failed units)
#   failed-unit   a unit fails, but switch-to-configuration exits 0
#   kill-sshd     stops the host's sshd after switching
#   link-down     takes the host's network links down after switching
#   hang          never returns (a switch that hangs)
# and `delay` seconds pass before it switches, so a fault can land mid-way.
{
  name,
  version,
  behaviour ? "healthy",
  delay ? 0,
  system ? "x86_64-linux",
}:
builtins.derivation {
  name = "nixos-system-${name}-${version}";
  inherit system;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  script =
    builtins.replaceStrings
    ["@name@" "@version@" "@behaviour@" "@delay@"]
    [name version behaviour (toString delay)]
    (builtins.readFile ./switch-to-configuration.sh);
  args = [
    "-c"
    ''
      mkdir -p $out/bin
      printf '%s' "$script" > $out/bin/switch-to-configuration
      chmod +x $out/bin/switch-to-configuration
      echo "@name@ @version@" > $out/version
    ''
  ];
}
