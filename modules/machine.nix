# berth.machine: what kind of machine this is, and its Tailscale name.
{
  config,
  lib,
  ...
}: let
  berth = import ../nix/lib {};
  inherit (config.networking) hostName;
in {
  options.berth.machine = berth.mkOptions lib berth.options.machine;

  # A machine on the tailnet is known there by its host name (MagicDNS). An
  # empty host name (taken from DHCP) says nothing.
  config.berth.machine.tailscaleHost = lib.mkDefault (
    if config.services.tailscale.enable && hostName != ""
    then hostName
    else null
  );
}
