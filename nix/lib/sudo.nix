# The sudo rules berth's modules write, as values for
# security.sudo.extraRules.
#
# service name cfg systemctl: the narrow rule of a service's deploy identity
# (its user): restart, stop, start and status of its own unit, nothing
# else; with instances, of its own instances <name>@1.service …
# <name>@<maxInstances>.service, each named (a sudoers wildcard would also
# match `<name>@1.service other.service`). berth's agent runs `sudo -n
# systemctl <verb> <unit>` (src/app/unit.rs); sudo matches `systemctl`
# found on PATH against `systemctl` here by the file it resolves to, so the
# path must be the system's systemctl (on NixOS
# /run/current-system/sw/bin/systemctl).
#
# deploy deployUsers berth: the rule of berth.agent.deployUsers, the
# non-root users `berth deploy` may SSH in as (berth.deployment.targetUser):
# they may run `<berth> agent <verb> …` as root without a password for the
# verbs a system deploy, rollback, status, history, lock and plan need, and
# nothing else. The deployer runs `sudo -n -- <berth> agent <verb> …` with
# <berth> = /run/current-system/sw/bin/berth; sudo matches the command by
# its name and the file it resolves to (the berth of the current system,
# also when called by its store path; a berth elsewhere does not match),
# so pass that path. In sudoers a command listed with arguments matches only
# those arguments (`*` matching any, spaces included), so no verb but these
# is allowed at all. The agent itself refuses, under sudo, any other verb
# and any state directory, profile or manifest directory but the default.
let
  service = import ./service.nix;

  # The verbs the deployer runs, each with arguments.
  verbs = ["activate" "confirm" "rollback" "status" "show" "history" "record" "lock" "dry-activate" "fetch"];
in {
  service = name: cfg: systemctl: [
    {
      users = [cfg.user];
      runAs = "root";
      commands = builtins.concatMap (unit:
        map (verb: {
          command = "${systemctl} ${verb} ${unit}";
          options = ["NOPASSWD"];
        })
        ["restart" "stop" "start" "status"])
      (service.instanceUnits name cfg (service.maxInstances cfg));
    }
  ];

  deploy = deployUsers: berth: [
    {
      users = deployUsers;
      runAs = "root";
      commands =
        map (verb: {
          command = "${berth} agent ${verb} *";
          options = ["NOPASSWD"];
        })
        verbs;
    }
  ];
}
