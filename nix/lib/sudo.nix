# The narrow sudo rule of a service's deploy identity (its user): restart,
# stop, start and status of its own unit, nothing else. berth's agent runs
# `sudo -n systemctl <verb> <name>.service` (src/app/unit.rs); sudo matches
# `systemctl` found on PATH against `systemctl` here by the file it
# resolves to, so the path must be the system's systemctl (on NixOS
# /run/current-system/sw/bin/systemctl).
#
# sudoRules name cfg systemctl: a value for security.sudo.extraRules.
name: cfg: systemctl: [
  {
    users = [cfg.user];
    runAs = "root";
    commands =
      map (verb: {
        command = "${systemctl} ${verb} ${name}.service";
        options = ["NOPASSWD"];
      })
      ["restart" "stop" "start" "status"];
  }
]
