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
]
