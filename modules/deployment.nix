# berth.deployment: how `berth deploy` reaches and deploys this node. The
# CLI reads it with `nix eval --json` (src/flake/settings.rs): the options'
# values are that JSON as is, `null` meaning "berth's default".
{
  config,
  lib,
  ...
}: let
  berth = import ../nix/lib {};
  inherit (config.berth.machine) tailscaleHost;
in {
  imports = [./machine.nix];

  options.berth.deployment = berth.mkOptions lib berth.options.deployment;

  # On the tailnet, the machine's MagicDNS name. Otherwise targetHost stays
  # null and berth uses the node's name, as documented: not
  # networking.hostName, which is "nixos" unless set and need not be the
  # name the deployer knows the host by.
  config.berth.deployment.targetHost = lib.mkIf (tailscaleHost != null) (lib.mkDefault tailscaleHost);
}
