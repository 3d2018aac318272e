//! The sudoers lines a NixOS host gets from `security.sudo.extraRules`, as
//! nixpkgs' `nixos/modules/security/sudo.nix` renders them; nix/lib's
//! rules (the deploy users', `deploySudoRules`, and a service user's,
//! `sudoRules`) evaluated and rendered; and `visudo -c` on a text, so tests
//! can prove what a host's sudo will allow.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The sudoers lines of an `extraRules` value (a JSON list of rules), each
/// ending in a newline, as nixpkgs writes them into `/etc/sudoers`:
///
/// - a rule is `{ users; groups; host; runAs; commands; }`; `users` and
///   `groups` default to `[]`, `host` to `"ALL"`, `runAs` to `"ALL:ALL"`;
///   a rule without commands writes nothing;
/// - per rule, one line per user, then one per group, in their order: the
///   user (a number `N` as `#N`) and 5 spaces, or `%` and the group (a
///   number as `%#N`) and 2 spaces; then `<host>=(<runAs>)`, 4 spaces and
///   the commands joined with `", "`;
/// - a command is a string, written as is, or `{ command; options; }`
///   (`options` default `[]`): the options joined with `:`, then `:` when
///   there are any, then a space (also when there are none), then the
///   command.
///
/// Panics on a value that is not of that shape.
pub fn render(rules: &Value) -> String {
    let mut out = String::new();
    for rule in list(rules, "extraRules") {
        let commands = list(&rule["commands"], "commands");
        if commands.is_empty() {
            continue;
        }
        let host = text_or(&rule["host"], "ALL");
        let run_as = text_or(&rule["runAs"], "ALL:ALL");
        let commands = commands.iter().map(command).collect::<Vec<_>>().join(", ");
        let who = list_or_empty(&rule["users"], "users")
            .iter()
            .map(|user| format!("{}     ", id(user, "")))
            .chain(
                list_or_empty(&rule["groups"], "groups")
                    .iter()
                    .map(|group| format!("{}  ", id(group, "%"))),
            );
        for who in who {
            out.push_str(&format!("{who}{host}=({run_as})    {commands}\n"));
        }
    }
    out
}

/// The sudoers lines of nix/lib's `deploySudoRules users berth`, the rule
/// modules/agent.nix gives `berth.agent.deployUsers`, evaluated with
/// `nix-instantiate` from the repository's root and rendered by [`render`].
pub fn deploy_rule(users: &[&str], berth: &str) -> String {
    let users = serde_json::to_string(users).expect("a list of strings is JSON");
    render(&super::nix_eval(
        "{ users, berth }: let lib = import ./nix/lib { }; in lib.deploySudoRules (builtins.fromJSON users) berth",
        &[("users", &users), ("berth", berth)],
    ))
}

/// The sudoers lines of nix/lib's `sudoRules name cfg systemctl`, the rule
/// modules/services.nix gives the user of `berth.services.<name>`, for the
/// service `partial` declares (a JSON object of its options, the rest
/// defaulted by `serviceDefaults`), rendered by [`render`]. The module
/// passes the system's systemctl (`/run/current-system/sw/bin/systemctl`
/// on NixOS; a Debian host's is `/usr/bin/systemctl`).
pub fn service_rule(name: &str, partial: &Value, systemctl: &str) -> String {
    render(&super::nix_eval(
        "{ name, partial, systemctl }: let lib = import ./nix/lib { }; \
         in lib.sudoRules name (lib.serviceDefaults name (builtins.fromJSON partial)) systemctl",
        &[
            ("name", name),
            ("partial", &partial.to_string()),
            ("systemctl", systemctl),
        ],
    ))
}

/// Whether `visudo -c` accepts `text` as a sudoers file; `Err` holds what
/// it said, or why it could not run. visudo is in Debian's sudo package
/// (scripts/install-deps), in /usr/sbin, which a user's PATH may lack.
pub fn check_with_visudo(text: &str) -> Result<(), String> {
    let mut file = tempfile::NamedTempFile::new()
        .map_err(|e| format!("could not create a temporary file: {e}"))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| format!("could not write {}: {e}", file.path().display()))?;
    let visudo = if Path::new("/usr/sbin/visudo").exists() {
        "/usr/sbin/visudo"
    } else {
        "visudo"
    };
    let out = Command::new(visudo)
        .arg("-c")
        .arg("-f")
        .arg(file.path())
        .output()
        .map_err(|e| {
            format!("{visudo} could not start (scripts/install-deps installs sudo): {e}")
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "visudo -c refused it ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn list<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {value}"))
}

fn list_or_empty<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    if value.is_null() {
        &[]
    } else {
        list(value, what)
    }
}

fn text_or<'a>(value: &'a Value, default: &'a str) -> &'a str {
    match value {
        Value::Null => default,
        Value::String(s) => s,
        other => panic!("not a string: {other}"),
    }
}

/// A user or group, by name or by number (`#N`), after `prefix`.
fn id(value: &Value, prefix: &str) -> String {
    match value {
        Value::String(name) => format!("{prefix}{name}"),
        Value::Number(n) if n.is_u64() => format!("{prefix}#{n}"),
        other => panic!("not a user or group name or number: {other}"),
    }
}

fn command(value: &Value) -> String {
    match value {
        Value::String(command) => command.clone(),
        Value::Object(spec) => {
            let options = list_or_empty(spec.get("options").unwrap_or(&Value::Null), "options")
                .iter()
                .map(|o| o.as_str().unwrap_or_else(|| panic!("not an option: {o}")))
                .collect::<Vec<_>>();
            let options = if options.is_empty() {
                String::new()
            } else {
                format!("{}:", options.join(":"))
            };
            let command = spec
                .get("command")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("a command without `command`: {value}"));
            format!("{options} {command}")
        }
        other => panic!("not a command: {other}"),
    }
}
