lib: [
  {
    name = "the service's user may restart, stop, start and query its own unit only";
    actual = lib.sudoRules "notes" (lib.serviceDefaults "notes" {}) "/run/current-system/sw/bin/systemctl";
    expected = [
      {
        users = ["notes"];
        runAs = "root";
        commands = [
          {
            command = "/run/current-system/sw/bin/systemctl restart notes.service";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/systemctl stop notes.service";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/systemctl start notes.service";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/systemctl status notes.service";
            options = ["NOPASSWD"];
          }
        ];
      }
    ];
  }
  {
    name = "another user runs as that user";
    actual = map (rule: rule.users) (lib.sudoRules "notes" (lib.serviceDefaults "notes" {user = "deploy-notes";}) "/bin/systemctl");
    expected = [["deploy-notes"]];
  }
  {
    name = "a deploy user may run the agent's system verbs as root, nothing else";
    actual = lib.deploySudoRules ["deploy"] "/run/current-system/sw/bin/berth";
    expected = [
      {
        users = ["deploy"];
        runAs = "root";
        commands = [
          {
            command = "/run/current-system/sw/bin/berth agent activate *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent confirm *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent rollback *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent status *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent show *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent history *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent record *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent lock *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent dry-activate *";
            options = ["NOPASSWD"];
          }
          {
            command = "/run/current-system/sw/bin/berth agent fetch *";
            options = ["NOPASSWD"];
          }
        ];
      }
    ];
  }
  {
    name = "one rule covers every deploy user, with the berth it is given";
    actual = map (rule: {
      inherit (rule) users;
      first = (builtins.head rule.commands).command;
    }) (lib.deploySudoRules ["deploy" "ci"] "/srv/berth");
    expected = [
      {
        users = ["deploy" "ci"];
        first = "/srv/berth agent activate *";
      }
    ];
  }
]
