//! The sudo rules berth's modules write, as a host's `/etc/sudoers` gets
//! them: the rule of `berth.agent.deployUsers` and the rule of a
//! service's user (plain, and with instances), nix/lib's rules rendered as
//! nixpkgs renders `extraRules`, are the exact text below, and `visudo -c`
//! accepts them. What a Debian host's sudo then allows and refuses is in
//! tests/rendered_units.rs (the service's rule) and tests/deploy_user.rs
//! (the deploy users'). Needs nix-instantiate and visudo
//! (scripts/install-deps); not root.

mod common;

use common::sudoers;
use serde_json::json;

const SYSTEMCTL: &str = "/run/current-system/sw/bin/systemctl";

/// The four verbs of `unit`, as the rule lists them.
fn verbs(unit: &str) -> Vec<String> {
    ["restart", "stop", "start", "status"]
        .map(|verb| format!("NOPASSWD: {SYSTEMCTL} {verb} {unit}"))
        .to_vec()
}

#[test]
fn a_service_user_may_restart_stop_start_and_query_its_own_unit_alone() {
    let text = sudoers::service_rule("notes", &json!({ "port": 8090 }), SYSTEMCTL);
    assert_eq!(
        text,
        format!(
            "notes     ALL=(root)    {}\n",
            verbs("notes.service").join(", ")
        )
    );
    sudoers::check_with_visudo(&text).unwrap();
}

#[test]
fn a_service_with_instances_names_each_instance_up_to_max_instances() {
    let text = sudoers::service_rule(
        "notes",
        &json!({ "port": 8090, "instances": 2, "maxInstances": 3, "user": "deploy-notes" }),
        SYSTEMCTL,
    );
    let commands: Vec<String> = (1..=3)
        .flat_map(|i| verbs(&format!("notes@{i}.service")))
        .collect();
    assert_eq!(
        text,
        format!("deploy-notes     ALL=(root)    {}\n", commands.join(", "))
    );
    // No wildcard: `notes@*` would match `notes@1.service other.service`.
    assert!(!text.contains('*'), "{text}");
    sudoers::check_with_visudo(&text).unwrap();
}

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
            "NOPASSWD: /run/current-system/sw/bin/berth agent dry-activate *, ",
            "NOPASSWD: /run/current-system/sw/bin/berth agent fetch *\n",
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
