# The narrow sudo rule of a service's deploy identity (its user): restart,
# stop, start and status of its own unit, nothing else; with instances, of
# its own instances <name>@1.service … <name>@<maxInstances>.service, each
# named (a sudoers wildcard would also match `<name>@1.service other.service`).
# berth's agent runs `sudo -n systemctl <verb> <unit>` (src/app/unit.rs);
# sudo matches `systemctl` found on PATH against `systemctl` here by the
# file it resolves to, so the path must be the system's systemctl (on NixOS
# /run/current-system/sw/bin/systemctl).
#
# sudoRules name cfg systemctl: a value for security.sudo.extraRules.
let
  service = import ./service.nix;
in
  name: cfg: systemctl: [
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
  ]
