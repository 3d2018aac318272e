# All of berth's NixOS modules (`nixosModules.default`): the apps of
# berth.services, what `berth deploy` reads (berth.deployment), the agent
# (berth.agent) and the machine's description (berth.machine). Every option
# is declared from the schema of nix/lib/options.nix and documented in
# docs/modules.md.
{
  imports = [
    ./services.nix
    ./deployment.nix
    ./agent.nix
    ./machine.nix
  ];
}
