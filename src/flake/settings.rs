//! [`DeploymentSettings`]: a node's `config.berth.deployment`, read from the
//! JSON nix prints. Every key has a default, so a node without berth's
//! module deploys as `root@<node>`; unknown keys are ignored, so a newer
//! module still works with an older berth.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{FlakeError, NodeName};
use crate::stage::Stage;

/// How berth reaches and deploys one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DeploymentSettings {
    /// The host to SSH to; the node's name when unset.
    pub target_host: Option<String>,
    pub target_user: String,
    /// How berth becomes root on the host when `target_user` is not root:
    /// the command put in front of the agent (`sudo`, `doas`, `run0`).
    pub privilege_escalation_command: Vec<String>,
    /// Read the sudo password once from the terminal for this node, as
    /// `--ask-sudo-password` does.
    pub ask_sudo_password: bool,
    /// Names `--on @tag` selects by.
    pub tags: Vec<String>,
    /// Copy the derivation and build on the target instead of here.
    pub build_on_target: bool,
    /// Extra `ssh` arguments for this node.
    pub ssh_options: Vec<String>,
    /// Seconds the deployer has to confirm before the host rolls back.
    pub confirm_timeout: u64,
    /// Seconds `switch-to-configuration` may run before the agent stops it
    /// and rolls back.
    pub activation_timeout: u64,
    pub magic_rollback: bool,
    pub health_checks: HealthChecks,
    pub tailscale: Tailscale,
    /// Webhooks told how each deploy of this node went, besides `--notify`.
    pub notify: Vec<String>,
    /// The stage the node belongs to (`production`, `staging`): `--stage`
    /// refuses to deploy it for another one.
    pub stage: Option<Stage>,
}

impl Default for DeploymentSettings {
    fn default() -> Self {
        DeploymentSettings {
            target_host: None,
            target_user: "root".into(),
            privilege_escalation_command: vec!["sudo".into()],
            ask_sudo_password: false,
            tags: Vec::new(),
            build_on_target: false,
            ssh_options: Vec::new(),
            confirm_timeout: 30,
            activation_timeout: 600,
            magic_rollback: true,
            health_checks: HealthChecks::default(),
            tailscale: Tailscale::default(),
            notify: Vec::new(),
            stage: None,
        }
    }
}

impl DeploymentSettings {
    /// The host to reach `node` at: `targetHost`, else the node's name.
    pub fn target_host<'a>(&'a self, node: &'a NodeName) -> &'a str {
        self.target_host.as_deref().unwrap_or(node.as_str())
    }

    /// Whether berth logs in as a user other than root, and so becomes root
    /// through `privilegeEscalationCommand`.
    pub fn escalates(&self) -> bool {
        self.target_user != "root"
    }

    /// Reads `config.berth.deployment` of `node` as `nix eval --json` printed
    /// it.
    pub(crate) fn from_json(node: &str, mut value: Value) -> Result<Self, FlakeError> {
        // NixOS options of type `nullOr …` are null when unset: that means
        // "use the default", as a missing key does.
        if value.is_null() {
            value = Value::Object(Map::new());
        }
        strip_nulls(&mut value);
        let invalid = |path: String, why: String| FlakeError::InvalidSettings {
            node: node.to_owned(),
            path,
            why,
        };
        let settings: DeploymentSettings = match serde_json::from_value(value.clone()) {
            Ok(settings) => settings,
            Err(err) => return Err(invalid(culprit(&value), err.to_string())),
        };
        if settings.privilege_escalation_command.is_empty()
            || settings.privilege_escalation_command[0].is_empty()
        {
            return Err(invalid(
                ".privilegeEscalationCommand".into(),
                "it is empty: give the program that runs a command as root, e.g. [ \"sudo\" ]"
                    .into(),
            ));
        }
        if settings.activation_timeout == 0 {
            return Err(invalid(
                ".activationTimeout".into(),
                "it is 0: a switch needs at least 1 second".into(),
            ));
        }
        for (i, check) in settings.health_checks.http.iter().enumerate() {
            if check.url.is_empty() {
                return Err(invalid(
                    format!(".healthChecks.http[{i}].url"),
                    "it is empty".into(),
                ));
            }
        }
        for (i, check) in settings.health_checks.commands.iter().enumerate() {
            if check.command.is_empty() {
                return Err(invalid(
                    format!(".healthChecks.commands[{i}].command"),
                    "it is empty: give the program and its arguments as a list".into(),
                ));
            }
        }
        Ok(settings)
    }
}

/// Checks run after switching, before confirming.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HealthChecks {
    /// Requests made from the deployer.
    pub http: Vec<HttpCheck>,
    /// Commands run on the target.
    pub commands: Vec<CommandCheck>,
    /// systemd units that must be active on the target.
    pub units: Vec<String>,
}

/// An HTTP request that must answer with `expect_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    pub url: String,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// Seconds per attempt.
    #[serde(default = "default_http_timeout")]
    pub timeout: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// A command run on the target that must exit 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandCheck {
    /// Program and arguments (argv), never a shell line.
    pub command: Vec<String>,
    /// Seconds.
    #[serde(default = "default_command_timeout")]
    pub timeout: u64,
}

/// Reaching the node over Tailscale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Tailscale {
    pub enable: bool,
    /// Refuse early when the peer is offline in `tailscale status`.
    pub check_online: bool,
}

impl Default for Tailscale {
    fn default() -> Self {
        Tailscale {
            enable: false,
            check_online: true,
        }
    }
}

fn default_expect_status() -> u16 {
    200
}

fn default_http_timeout() -> u64 {
    5
}

fn default_retries() -> u32 {
    3
}

fn default_command_timeout() -> u64 {
    30
}

/// Removes null members of objects, at every depth.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The top-level key (`.confirmTimeout`) whose value serde rejected, or
/// nothing when it is the whole value. serde's messages say what was wrong
/// but not where; every key has a default, so each can be tried alone.
fn culprit(value: &Value) -> String {
    let Value::Object(map) = value else {
        return String::new();
    };
    map.iter()
        .find(|(key, v)| {
            let alone = Value::Object(Map::from_iter([((*key).clone(), (*v).clone())]));
            serde_json::from_value::<DeploymentSettings>(alone).is_err()
        })
        .map(|(key, _)| format!(".{key}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: Value) -> Result<DeploymentSettings, FlakeError> {
        DeploymentSettings::from_json("web1", value)
    }

    #[test]
    fn empty_object_is_all_defaults() {
        let s = read(json!({})).unwrap();
        assert_eq!(s, DeploymentSettings::default());
        assert_eq!(s.target_host, None);
        assert_eq!(s.target_user, "root");
        assert!(s.tags.is_empty());
        assert!(!s.build_on_target);
        assert!(s.ssh_options.is_empty());
        assert_eq!(s.confirm_timeout, 30);
        assert!(s.magic_rollback);
        assert_eq!(s.health_checks, HealthChecks::default());
        assert!(!s.tailscale.enable);
        assert!(s.tailscale.check_online);
        assert!(s.notify.is_empty());
        assert_eq!(s.stage, None);
        assert_eq!(s.privilege_escalation_command, ["sudo"]);
        assert!(!s.ask_sudo_password && !s.escalates());
    }

    #[test]
    fn escalation_is_read_and_an_empty_one_refused() {
        let s = read(json!({
            "targetUser": "deploy",
            "privilegeEscalationCommand": ["doas"],
            "askSudoPassword": true
        }))
        .unwrap();
        assert_eq!(s.privilege_escalation_command, ["doas"]);
        assert!(s.ask_sudo_password && s.escalates());
        for empty in [json!([]), json!([""])] {
            let err = read(json!({ "privilegeEscalationCommand": empty })).unwrap_err();
            assert!(
                err.to_string().contains(".privilegeEscalationCommand"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_key_is_read() {
        let s = read(json!({
            "targetHost": "10.0.0.1",
            "targetUser": "deploy",
            "tags": ["web", "eu"],
            "buildOnTarget": true,
            "sshOptions": ["-p", "2222"],
            "confirmTimeout": 90,
            "magicRollback": false,
            "healthChecks": {
                "http": [
                    { "url": "http://web1/health" },
                    { "url": "https://web1/", "expectStatus": 204, "timeout": 2, "retries": 0 }
                ],
                "commands": [
                    { "command": ["systemctl", "is-active", "nginx"] },
                    { "command": ["true"], "timeout": 5 }
                ],
                "units": ["nginx.service"]
            },
            "tailscale": { "enable": true, "checkOnline": false },
            "notify": ["https://hooks.slack.com/services/x"],
            "stage": "production"
        }))
        .unwrap();
        assert_eq!(s.target_host.as_deref(), Some("10.0.0.1"));
        assert_eq!(s.target_user, "deploy");
        assert_eq!(s.tags, ["web", "eu"]);
        assert!(s.build_on_target);
        assert_eq!(s.ssh_options, ["-p", "2222"]);
        assert_eq!(s.confirm_timeout, 90);
        assert!(!s.magic_rollback);
        assert_eq!(
            s.health_checks.http,
            [
                HttpCheck {
                    url: "http://web1/health".into(),
                    expect_status: 200,
                    timeout: 5,
                    retries: 3
                },
                HttpCheck {
                    url: "https://web1/".into(),
                    expect_status: 204,
                    timeout: 2,
                    retries: 0
                }
            ]
        );
        assert_eq!(
            s.health_checks.commands,
            [
                CommandCheck {
                    command: vec!["systemctl".into(), "is-active".into(), "nginx".into()],
                    timeout: 30
                },
                CommandCheck {
                    command: vec!["true".into()],
                    timeout: 5
                }
            ]
        );
        assert_eq!(s.health_checks.units, ["nginx.service"]);
        assert_eq!(
            s.tailscale,
            Tailscale {
                enable: true,
                check_online: false
            }
        );
        assert_eq!(s.notify, ["https://hooks.slack.com/services/x"]);
        assert_eq!(s.stage, Some(Stage::new("production").unwrap()));
    }

    #[test]
    fn a_bad_stage_names_the_key() {
        let err = read(json!({ "stage": "Prod" })).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "node web1: berth.deployment.stage is not valid: `Prod` is not a valid stage"
            ),
            "{err}"
        );
    }

    #[test]
    fn target_host_defaults_to_the_node_name() {
        let node = NodeName::new("web1").unwrap();
        assert_eq!(DeploymentSettings::default().target_host(&node), "web1");
        let s = read(json!({ "targetHost": "h1" })).unwrap();
        assert_eq!(s.target_host(&node), "h1");
    }

    #[test]
    fn unknown_keys_are_ignored_and_nulls_mean_default() {
        let s = read(json!({
            "someFutureOption": { "x": 1 },
            "targetHost": null,
            "targetUser": null,
            "confirmTimeout": null,
            "healthChecks": { "http": [{ "url": "http://x", "retries": null, "new": true }] }
        }))
        .unwrap();
        assert_eq!(s.target_host, None);
        assert_eq!(s.target_user, "root");
        assert_eq!(s.confirm_timeout, 30);
        assert_eq!(s.health_checks.http[0].retries, 3);
    }

    #[test]
    fn wrong_types_name_the_node_and_the_key() {
        let err = read(json!({ "activationTimeout": 0 })).unwrap_err();
        assert!(
            err.to_string()
                .contains("berth.deployment.activationTimeout is not valid: it is 0"),
            "{err}"
        );
        let err = read(json!({ "tags": ["web"], "confirmTimeout": "soon" })).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node web1: berth.deployment.confirmTimeout is not valid: \
             invalid type: string \"soon\", expected u64"
        );
        let err =
            read(json!({ "healthChecks": { "http": [{ "url": "x", "expectStatus": 99999 }] } }))
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("node web1: berth.deployment.healthChecks is not valid: invalid value"),
            "{err}"
        );
        let err = read(json!({ "healthChecks": { "http": [{ "expectStatus": 200 }] } }))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(".healthChecks is not valid: missing field `url`"),
            "{err}"
        );
        let err = read(json!("root@h1")).unwrap_err().to_string();
        assert!(
            err.starts_with("node web1: berth.deployment is not valid: invalid type: string"),
            "{err}"
        );
        assert!(matches!(
            read(json!({ "tags": "web" })),
            Err(FlakeError::InvalidSettings { path, .. }) if path == ".tags"
        ));
    }

    #[test]
    fn empty_checks_are_rejected() {
        let err = read(
            json!({ "healthChecks": { "commands": [{ "command": ["true"] }, { "command": [] }] } }),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node web1: berth.deployment.healthChecks.commands[1].command is not valid: \
             it is empty: give the program and its arguments as a list"
        );
        let err = read(json!({ "healthChecks": { "http": [{ "url": "" }] } })).unwrap_err();
        assert!(err
            .to_string()
            .contains(".healthChecks.http[0].url is not valid"));
    }
}
