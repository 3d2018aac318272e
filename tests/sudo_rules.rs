//! The sudo rule of `berth.agent.deployUsers` as a host's `/etc/sudoers`
//! gets it: nix/lib's rule, rendered as nixpkgs renders `extraRules`, is
//! the exact text below, and `visudo -c` accepts it. Needs nix-instantiate
//! and visudo (scripts/install-deps); not root.

#[path = "common/sudoers.rs"]
mod sudoers;

use serde_json::json;

#[test]
fn the_deploy_rule_allows_the_agents_system_verbs_alone() {
    let text = sudoers::deploy_rule(&["deploy"], "/run/current-system/sw/bin/berth");
    assert_eq!(
        text,
        concat!(
            "deploy     ALL=(root)    ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent activate *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent confirm *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent rollback *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent status *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent show *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent history *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent record *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent lock *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent dry-activate *\n",
        )
    );
    sudoers::check_with_visudo(&text).unwrap();
}

#[test]
fn every_deploy_user_gets_the_same_line() {
    let text = sudoers::deploy_rule(&["deploy", "ci"], "/srv/berth");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("deploy     ALL=(root)    NOPASSWD: /srv/berth agent activate *, "),
        "{text}"
    );
    assert_eq!(lines[1], format!("ci{}", &lines[0]["deploy".len()..]));
    sudoers::check_with_visudo(&text).unwrap();
}

#[test]
fn rules_render_as_nixpkgs_renders_extra_rules() {
    let rules = json!([
        {
            "users": ["alice", "bob"],
            "groups": ["ops"],
            "runAs": "root",
            "commands": [
                {"command": "/run/current-system/sw/bin/systemctl restart notes.service", "options": ["NOPASSWD"]},
                {"command": "/bin/backup", "options": ["SETENV", "NOPASSWD"]},
            ],
        },
        // Defaults: host ALL, runAs ALL:ALL, no options (still a space);
        // a string command as is; numeric ids.
        {
            "users": [1001],
            "groups": [2000],
            "commands": [{"command": "/bin/true"}, "/bin/false \"\""],
        },
        // No commands: nothing.
        {"users": ["carol"], "commands": []},
    ]);
    let text = sudoers::render(&rules);
    assert_eq!(
        text,
        concat!(
            "alice     ALL=(root)    NOPASSWD: /run/current-system/sw/bin/systemctl restart notes.service, SETENV:NOPASSWD: /bin/backup\n",
            "bob     ALL=(root)    NOPASSWD: /run/current-system/sw/bin/systemctl restart notes.service, SETENV:NOPASSWD: /bin/backup\n",
            "%ops  ALL=(root)    NOPASSWD: /run/current-system/sw/bin/systemctl restart notes.service, SETENV:NOPASSWD: /bin/backup\n",
            "#1001     ALL=(ALL:ALL)     /bin/true, /bin/false \"\"\n",
            "%#2000  ALL=(ALL:ALL)     /bin/true, /bin/false \"\"\n",
        )
    );
    sudoers::check_with_visudo(&text).unwrap();
}

#[test]
fn visudo_refuses_what_sudo_would_not_read() {
    // The tag without its colon.
    let err = sudoers::check_with_visudo("deploy ALL=(root) NOPASSWD /bin/true\n").unwrap_err();
    assert!(err.contains("visudo -c refused it"), "{err}");
}
