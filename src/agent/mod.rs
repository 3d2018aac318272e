//! The agent: what berth runs on a host (`berth agent <verb>`). It owns the
//! host's side of a deploy — recording it, activating, the watchdog that
//! rolls back unless confirmed, confirming, rolling back — so that a dropped
//! SSH connection never leaves a host half done. It speaks NDJSON events on
//! stdout; the deployer reads them.

pub mod config;
pub mod peer;
mod signing;
pub mod system;
pub use signing::DryActivation;

use serde::{Deserialize, Serialize};

use crate::state::{Deployment, Status};

/// The last event of every agent verb that changes something.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentResult {
    /// What the deployment ended as, or `busy` when another one holds the host.
    pub outcome: Outcome,
    pub message: String,
    pub deployment: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Activated; the watchdog rolls it back unless confirmed in time.
    Pending,
    Confirmed,
    RolledBack,
    RollbackFailed,
    Failed,
    /// Another deployment, or a lock, holds the host or the service.
    Busy,
    /// Waited for a lock, and it was not let go in time.
    TimedOut,
    /// The host already runs this.
    Unchanged,
}

impl From<Status> for Outcome {
    fn from(status: Status) -> Self {
        match status {
            Status::Activating | Status::Pending => Outcome::Pending,
            Status::Confirmed => Outcome::Confirmed,
            Status::RolledBack => Outcome::RolledBack,
            Status::Failed => Outcome::Failed,
            Status::RollbackFailed => Outcome::RollbackFailed,
        }
    }
}

impl AgentResult {
    pub fn of(deployment: &Deployment, message: impl Into<String>) -> Self {
        AgentResult {
            outcome: deployment.status.into(),
            message: message.into(),
            deployment: serde_json::to_value(deployment).ok(),
        }
    }
}

/// Events the agent writes, one JSON object a line.
pub const EVENT_PHASE: &str = "phase";
pub const EVENT_RESULT: &str = "result";
pub const EVENT_STATUS: &str = "status";
pub const EVENT_DEPLOYMENT: &str = "deployment";
/// `dry-activate`: a [`DryActivation`].
pub const EVENT_DRY_ACTIVATE: &str = "dry_activate";
/// Something the deployer shows as `warning:` (a `message` field).
pub const EVENT_WARNING: &str = "warning";

/// Finds the `result` event in an agent's stdout.
pub fn find_result(stdout: &[u8]) -> Option<AgentResult> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            (value.get("event")? == EVENT_RESULT)
                .then(|| serde_json::from_value(value).ok())
                .flatten()
        })
}

/// All events named `name` in an agent's stdout.
pub fn find_events(stdout: &[u8], name: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v.get("event").is_some_and(|e| e == name))
        .collect()
}

/// How the deployer calls the agent on a host: `<agent> agent <verb> …`.
/// Pure builders; the deployer runs them through its `Host`.
pub mod call {
    use super::system::Activation;
    use crate::flake::Revision;
    use crate::nix::signatures::SignedPath;
    use crate::nix::StorePath;
    use crate::process::Cmd;

    /// Every system verb runs as root: through sudo on a host reached as
    /// another user.
    fn agent(program: &str, verb: &str) -> Cmd {
        Cmd::new(program).args(["agent", verb]).as_root()
    }

    /// Who deploys and why, recorded on the host.
    #[derive(Clone, Debug, Default)]
    pub struct Audit {
        pub actor: String,
        pub reason: Option<String>,
        pub ci_run_url: Option<String>,
    }

    /// `agent activate`: the command line the agent parses back into `a`.
    pub fn activate(program: &str, a: &Activation) -> Cmd {
        let mut cmd = agent(program, "activate")
            .args(["--id", &a.id, "--node", &a.node, "--path", a.path.as_str()])
            .args(["--goal", a.goal.as_str()])
            .args([
                "--confirm-timeout",
                &a.confirm_timeout.as_secs().to_string(),
            ])
            .args([
                "--activation-timeout",
                &a.activation_timeout.as_secs().to_string(),
            ])
            .args(["--actor", &a.actor]);
        if !a.magic_rollback {
            cmd = cmd.arg("--no-magic-rollback");
        }
        if let Some(reason) = &a.reason {
            cmd = cmd.args(["--reason", reason]);
        }
        if let Some(url) = &a.ci_run_url {
            cmd = cmd.args(["--ci-run-url", url]);
        }
        if let Some(revision) = &a.revision {
            cmd = cmd.args(["--revision", revision.as_str()]);
        }
        if let Some(revision) = &a.expect_revision {
            cmd = cmd.args(["--expect-revision", revision.as_str()]);
        }
        with_signatures(cmd, &a.signatures)
    }

    /// `--signatures-on-stdin` and the signed paths on stdin, if any.
    fn with_signatures(cmd: Cmd, signatures: &[SignedPath]) -> Cmd {
        if signatures.is_empty() {
            return cmd;
        }
        // A JSON list of plain strings and numbers always serializes.
        let json = serde_json::to_vec(signatures).unwrap_or_default();
        cmd.arg("--signatures-on-stdin").stdin(json)
    }

    pub fn confirm(program: &str, id: &str) -> Cmd {
        agent(program, "confirm").args(["--id", id])
    }

    pub fn rollback(program: &str, id: &str, why: &str) -> Cmd {
        agent(program, "rollback").args(["--id", id, "--why", why])
    }

    pub fn rollback_to(
        program: &str,
        new_id: &str,
        node: &str,
        to: Option<u64>,
        actor: &str,
    ) -> Cmd {
        let cmd =
            agent(program, "rollback").args(["--new-id", new_id, "--node", node, "--actor", actor]);
        match to {
            Some(n) => cmd.args(["--to", &n.to_string()]),
            None => cmd,
        }
    }

    /// `agent record`: the host already runs `path`; record that
    /// `revision` builds it.
    pub fn record(
        program: &str,
        id: &str,
        node: &str,
        path: &StorePath,
        revision: &Revision,
        audit: &Audit,
    ) -> Cmd {
        let mut cmd = agent(program, "record")
            .args(["--id", id, "--node", node, "--path", path.as_str()])
            .args(["--revision", revision.as_str(), "--actor", &audit.actor]);
        if let Some(reason) = &audit.reason {
            cmd = cmd.args(["--reason", reason]);
        }
        if let Some(url) = &audit.ci_run_url {
            cmd = cmd.args(["--ci-run-url", url]);
        }
        cmd
    }

    pub fn status(program: &str, node: &str) -> Cmd {
        agent(program, "status").args(["--node", node])
    }

    pub fn show(program: &str, id: &str) -> Cmd {
        agent(program, "show").args(["--id", id])
    }

    pub fn dry_activate(program: &str, path: &StorePath, signatures: &[SignedPath]) -> Cmd {
        let cmd = agent(program, "dry-activate").args(["--path", path.as_str()]);
        with_signatures(cmd, signatures)
    }

    /// `agent serve`: as the user SSH logged in as, not root.
    pub fn serve(program: &str, path: &StorePath) -> Cmd {
        Cmd::new(program).args(["agent", "serve", "--path", path.as_str()])
    }

    /// `agent fetch` of `paths` from the peer caches at `urls`, the paths
    /// on stdin.
    pub fn fetch(
        program: &str,
        paths: &[StorePath],
        urls: &[String],
        deployer_key: Option<&crate::nix::keys::PublicKey>,
    ) -> Cmd {
        let list: String = paths.iter().map(|p| format!("{p}\n")).collect();
        let mut cmd = agent(program, "fetch").stdin(list.into_bytes());
        for url in urls {
            cmd = cmd.args(["--from", url]);
        }
        match deployer_key {
            Some(key) => cmd.args(["--trusted-key", key.as_str()]),
            None => cmd,
        }
    }

    pub fn history(program: &str, node: &str, limit: usize) -> Cmd {
        agent(program, "history").args(["--node", node, "--limit", &limit.to_string()])
    }

    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use super::super::system::Goal;
        use super::*;

        #[test]
        fn activate_argv() {
            let path =
                StorePath::new("/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-nixos-system-web1")
                    .unwrap();
            let mut a = Activation {
                id: "ID".into(),
                node: "web1".into(),
                path: path.clone(),
                goal: Goal::Switch,
                confirm_timeout: Duration::from_secs(30),
                activation_timeout: Duration::from_secs(600),
                magic_rollback: false,
                actor: "alice@laptop".into(),
                reason: Some("kernel update".into()),
                ci_run_url: None,
                revision: None,
                expect_revision: None,
                signatures: Vec::new(),
            };
            let head = [
                "berth",
                "agent",
                "activate",
                "--id",
                "ID",
                "--node",
                "web1",
                "--path",
                path.as_str(),
                "--goal",
                "switch",
                "--confirm-timeout",
                "30",
                "--activation-timeout",
                "600",
                "--actor",
                "alice@laptop",
                "--no-magic-rollback",
                "--reason",
                "kernel update",
            ];
            assert_eq!(activate("berth", &a).argv(), head);
            let (new, old) = ("b".repeat(40), "a".repeat(40));
            a.revision = Some(Revision::new(&new).unwrap());
            a.expect_revision = Some(Revision::new(&old).unwrap());
            let mut all = head.to_vec();
            all.extend(["--revision", &new, "--expect-revision", &old]);
            assert_eq!(activate("berth", &a).argv(), all);
        }

        #[test]
        fn other_verbs() {
            assert_eq!(
                confirm("b", "I").argv(),
                ["b", "agent", "confirm", "--id", "I"]
            );
            assert_eq!(
                rollback("b", "I", "x").argv(),
                ["b", "agent", "rollback", "--id", "I", "--why", "x"]
            );
            assert_eq!(
                rollback_to("b", "N", "web1", Some(3), "me").argv(),
                [
                    "b", "agent", "rollback", "--new-id", "N", "--node", "web1", "--actor", "me",
                    "--to", "3"
                ]
            );
            assert_eq!(show("b", "I").argv(), ["b", "agent", "show", "--id", "I"]);
            let path = StorePath::new("/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-s").unwrap();
            let rev = "c".repeat(40);
            let audit = Audit {
                actor: "me".into(),
                reason: None,
                ci_run_url: Some("https://ci/1".into()),
            };
            assert_eq!(
                record(
                    "b",
                    "I",
                    "web1",
                    &path,
                    &Revision::new(&rev).unwrap(),
                    &audit
                )
                .argv(),
                [
                    "b",
                    "agent",
                    "record",
                    "--id",
                    "I",
                    "--node",
                    "web1",
                    "--path",
                    path.as_str(),
                    "--revision",
                    &rev,
                    "--actor",
                    "me",
                    "--ci-run-url",
                    "https://ci/1"
                ]
            );
        }
    }
}

/// The host's own berth on NixOS, as its deploy users' sudo rule names it
/// (`berth.agent.deployUsers`).
pub const HOST_AGENT: &str = "/run/current-system/sw/bin/berth";

/// Which berth program runs as the agent on the hosts.
#[derive(Clone, Debug)]
pub struct Program {
    /// The command to run there.
    pub program: String,
    /// The deployer's own closure, copied to each host first, when berth
    /// runs from the Nix store and no `--agent` was given: the agent then
    /// matches the deployer exactly.
    pub closure: Option<crate::nix::StorePath>,
}

impl Program {
    /// `--agent PATH` as given; else this berth's own closure when it runs
    /// from the Nix store; else `berth` on the host's PATH (the NixOS module
    /// installs it).
    pub fn resolve(explicit: Option<String>) -> Program {
        if let Some(program) = explicit {
            return Program {
                program,
                closure: None,
            };
        }
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| std::fs::canonicalize(p).ok());
        let closure = exe.as_deref().and_then(store_root);
        match closure {
            Some(root) => Program {
                program: format!("{root}/bin/berth"),
                closure: Some(root),
            },
            None => Program {
                program: "berth".into(),
                closure: None,
            },
        }
    }

    /// The agent a node's host runs. Reached as a user other than root, the
    /// host runs its own berth through sudo ([`HOST_AGENT`], the path the
    /// module's sudo rule names), unless `--agent` named one: the deployer's
    /// closure is neither copied (that user's copies must be signed) nor
    /// allowed by that rule.
    pub fn for_node(&self, settings: &crate::flake::DeploymentSettings) -> Program {
        self.for_login(settings.escalates())
    }

    /// The agent of a host logged in to as root (`escalates` false) or as
    /// another user; see [`Program::for_node`].
    pub fn for_login(&self, escalates: bool) -> Program {
        if !escalates || self.is_explicit() {
            return self.clone();
        }
        Program {
            program: HOST_AGENT.into(),
            closure: None,
        }
    }

    /// Whether `--agent` named it.
    fn is_explicit(&self) -> bool {
        self.closure.is_none() && self.program != "berth"
    }

    /// Makes sure the agent is on `host` (copies the deployer's closure).
    pub async fn install(
        &self,
        host: &dyn crate::host::Host,
    ) -> Result<(), crate::process::CommandError> {
        match &self.closure {
            Some(closure) => host.copy_closure(std::slice::from_ref(closure)).await,
            None => Ok(()),
        }
    }
}

/// `/nix/store/<hash>-berth-0.1.0` for a path inside it.
fn store_root(path: &std::path::Path) -> Option<crate::nix::StorePath> {
    let mut parts = path.strip_prefix("/nix/store").ok()?.components();
    let first = parts.next()?.as_os_str().to_str()?;
    crate::nix::StorePath::new(format!("/nix/store/{first}")).ok()
}

#[cfg(test)]
mod program_tests {
    use super::*;
    use crate::nix::StorePath;

    #[test]
    fn the_store_root_of_an_installed_berth() {
        let root = store_root(std::path::Path::new(
            "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-berth-0.1.0/bin/berth",
        ))
        .unwrap();
        assert_eq!(
            root.as_str(),
            "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-berth-0.1.0"
        );
        assert!(store_root(std::path::Path::new("/work/target/debug/berth")).is_none());
    }

    #[test]
    fn an_explicit_agent_wins() {
        let p = Program::resolve(Some("/opt/berth".into()));
        assert_eq!((p.program.as_str(), p.closure), ("/opt/berth", None));
        // Tests run from target/, not the store.
        assert_eq!(Program::resolve(None).program, "berth");
    }

    #[test]
    fn a_deploy_user_runs_the_hosts_own_agent_unless_one_is_named() {
        let deploy = crate::flake::DeploymentSettings {
            target_user: "deploy".into(),
            ..Default::default()
        };
        let root = crate::flake::DeploymentSettings::default();
        let copied = Program {
            program: "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-berth/bin/berth".into(),
            closure: StorePath::new("/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-berth").ok(),
        };
        assert_eq!(copied.for_node(&root).program, copied.program);
        let own = copied.for_node(&deploy);
        assert_eq!((own.program.as_str(), own.closure), (HOST_AGENT, None));
        assert_eq!(Program::resolve(None).for_node(&deploy).program, HOST_AGENT);
        let named = Program::resolve(Some("/opt/berth".into()));
        assert_eq!(named.for_node(&deploy).program, "/opt/berth");
    }
}
