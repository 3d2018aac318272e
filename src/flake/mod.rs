//! The user's fleet flake, for system deploys: which nodes it has
//! (`nixosConfigurations.<node>`), how each is deployed
//! (`config.berth.deployment`), which of them a command acts on, and their
//! systems, evaluated and built with one nix process per step for all nodes.

mod eval;
mod node;
mod revision;
mod selector;
mod settings;

pub use eval::{
    build, drv_paths, drv_paths_cmd, eval_cmd, evaluate, parse_drv_paths, parse_eval,
    parse_realise, realise_on, unique_drvs, Built,
};
pub use node::{parse_node_name, FlakeRef, NodeName};
pub use revision::{metadata_cmd, parse_metadata, relation, resolve, Relation, Revision, Source};
pub use selector::{select, Selector};
pub use settings::{CommandCheck, DeploymentSettings, HealthChecks, HttpCheck, Tailscale};

use node::NODE_NAME_RULE;

use crate::error::printable;
use crate::process::CommandError;

/// One node of the fleet: its name and how to deploy it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeMeta {
    pub name: NodeName,
    pub settings: DeploymentSettings,
}

/// What can go wrong reading a fleet flake or the names that pick its nodes.
/// A failed nix is boxed: its error is large and this one travels in every
/// `Result` of the module.
#[derive(Debug, thiserror::Error)]
pub enum FlakeError {
    #[error("`{}` is not a valid node name: {why} ({NODE_NAME_RULE})", printable(.text))]
    InvalidNodeName { text: String, why: String },
    #[error(
        "nixosConfigurations.{text:?} has a name berth cannot deploy: {why} ({NODE_NAME_RULE})"
    )]
    UnsupportedNodeName { text: String, why: String },
    #[error("`{}` is not a valid flake reference: {why}", printable(.text))]
    InvalidFlakeRef { text: String, why: &'static str },
    #[error("`{}` is not a valid node selector: {why}", printable(.text))]
    InvalidSelector { text: String, why: String },
    #[error("the flake has no nodes: its nixosConfigurations is empty")]
    NoNodes,
    #[error("the flake has no node `{node}` (it has {known})")]
    UnknownNode { node: String, known: String },
    #[error("`--on {selector}` matches no node (nodes: {nodes}; tags: {tags})")]
    NoMatch {
        selector: String,
        nodes: String,
        tags: String,
    },
    #[error("node {node} does not match `--on {selector}`")]
    NotSelected { node: NodeName, selector: String },
    #[error("node {node} has no config.system.build.toplevel: is it a nixosConfiguration?")]
    NoToplevel { node: String },
    #[error("node {node}: berth.deployment{path} is not valid: {why}")]
    InvalidSettings {
        node: String,
        /// Where under `berth.deployment`, e.g. `.confirmTimeout`; empty for
        /// the whole value.
        path: String,
        why: String,
    },
    #[error("could not evaluate the nodes of `{flake}`")]
    Eval {
        flake: String,
        #[source]
        source: Box<CommandError>,
    },
    #[error("could not evaluate the systems of {nodes} in `{flake}`")]
    Instantiate {
        flake: String,
        nodes: String,
        #[source]
        source: Box<CommandError>,
    },
    #[error("could not build the systems of {nodes}")]
    Build {
        nodes: String,
        #[source]
        source: Box<CommandError>,
    },
    #[error("`{command}` printed what berth cannot read: {why}")]
    Unreadable { command: &'static str, why: String },
    #[error("could not read the metadata of `{flake}`")]
    Metadata {
        flake: String,
        #[source]
        source: Box<CommandError>,
    },
    #[error("`{}` is not a full git commit id (40 or 64 hex digits)", printable(.text))]
    InvalidRevision { text: String },
    #[error("`{flake}` has no commit to compare: {why}")]
    NoCommit { flake: String, why: String },
    #[error(
        "`{flake}` is not a git repository on this machine, so berth cannot compare its commits"
    )]
    NotLocal { flake: String },
    #[error("could not compare commits in the git repository {}", .repository.display())]
    Git {
        repository: std::path::PathBuf,
        #[source]
        source: Box<CommandError>,
    },
}

impl crate::error::Diagnose for FlakeError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: self.is_usage(),
        }
    }
}

impl FlakeError {
    /// What to do about it, when berth can tell.
    pub fn hint(&self) -> Option<String> {
        match self {
            FlakeError::UnsupportedNodeName { .. } => Some(
                "rename the node in the flake: berth splices node names into Nix expressions and uses them as host names"
                    .into(),
            ),
            FlakeError::InvalidFlakeRef { .. } => Some(
                "write FLAKE or FLAKE#NODE, e.g. `.`, `.#web1`, `./fleet#db1`, `github:owner/repo#web1`"
                    .into(),
            ),
            FlakeError::InvalidSelector { .. } | FlakeError::NoMatch { .. } => Some(
                "`--on` takes node names, globs (`web*`, `db?`) and tags (`@tag`), joined by commas"
                    .into(),
            ),
            FlakeError::NoNodes => {
                Some("a node is `nixosConfigurations.<node>`: add one to the flake".into())
            }
            FlakeError::NotSelected { .. } => Some(
                "with both `#NODE` and `--on`, the node must match `--on`: drop one of them".into(),
            ),
            FlakeError::NoToplevel { .. } => Some(
                "berth deploys systems made with `nixpkgs.lib.nixosSystem`: keep anything else out of nixosConfigurations"
                    .into(),
            ),
            FlakeError::InvalidSettings { node, path, .. } => Some(format!(
                "fix berth.deployment{path} in the configuration of node {node}"
            )),
            FlakeError::Eval { flake, source }
            | FlakeError::Instantiate { flake, source, .. }
            | FlakeError::Metadata { flake, source } => eval_hint(flake, source.as_ref()),
            FlakeError::NoCommit { .. } => Some(
                "deploy from a clean git checkout: commit (or stash) the changes first, or deploy without --skip-superseded"
                    .into(),
            ),
            FlakeError::NotLocal { .. } => Some(
                "run berth in a checkout of the flake's repository (`berth deploy .#NODE`), or deploy without --skip-superseded"
                    .into(),
            ),
            FlakeError::Git { source, .. } => match source.as_ref() {
                CommandError::Spawn { .. } => Some("install git and make sure it is on PATH".into()),
                _ => None,
            },
            FlakeError::Build { source, .. } => match source.as_ref() {
                CommandError::Spawn { .. } => Some(NO_NIX.into()),
                CommandError::Failed { .. } => Some(
                    "`nix log /nix/store/…drv` shows the full log of the derivation that failed (named above)"
                        .into(),
                ),
                CommandError::Ssh { .. }
                | CommandError::TimedOut { .. }
                | CommandError::Escalation(_) => None,
            },
            FlakeError::InvalidNodeName { .. }
            | FlakeError::UnknownNode { .. }
            | FlakeError::Unreadable { .. }
            | FlakeError::InvalidRevision { .. } => None,
        }
    }

    /// Errors in how berth was called or in the flake's settings, found
    /// before anything was built or changed.
    pub fn is_usage(&self) -> bool {
        // A flake that does not evaluate is a configuration error (exit 2,
        // nothing touched); a build that fails is a failure (exit 1).
        !matches!(
            self,
            FlakeError::Build { .. } | FlakeError::Unreadable { .. } | FlakeError::Git { .. }
        )
    }
}

const NO_NIX: &str = "berth runs Nix: install it and make sure `nix` is on PATH";

/// A hint for an evaluation nix failed, from the tail of its stderr.
fn eval_hint(flake: &str, source: &CommandError) -> Option<String> {
    let stderr = match source {
        CommandError::Spawn { .. } => return Some(NO_NIX.into()),
        CommandError::Failed { stderr_tail, .. } => stderr_tail,
        CommandError::Ssh { .. } | CommandError::TimedOut { .. } | CommandError::Escalation(_) => {
            return None
        }
    };
    let has = |s: &str| stderr.contains(s);
    Some(if has("experimental Nix feature") {
        "enable flakes: add `experimental-features = nix-command flakes` to /etc/nix/nix.conf"
            .into()
    } else if has("does not provide attribute") {
        format!(
            "does `{flake}` have nixosConfigurations? berth deploys `nixosConfigurations.<node>`"
        )
    } else if has("flake.nix")
        && (has("No such file") || has("does not exist") || has("does not contain"))
    {
        format!(
            "is there a flake.nix in `{flake}`? In a git repository nix sees only the files git tracks: `git add flake.nix`"
        )
    } else if has("No such file") {
        format!("does `{flake}` exist? A flake on disk is `.`, `./dir`, `/dir` or `path:/dir`")
    } else {
        format!("run `nix flake check {flake} --show-trace` to see the error in full")
    })
}

#[cfg(test)]
mod tests {
    //! The tests named `nix_*` run the real nix (2.8 or later, flakes
    //! enabled) against throwaway flakes with no inputs; they need nothing
    //! but a writable Nix store.

    use super::*;
    use std::error::Error;
    use std::path::Path;

    use crate::process::ExitStatus;

    fn failed(stderr_tail: &str) -> CommandError {
        CommandError::Failed {
            command: "nix eval".into(),
            // `On` is private to process: its default is "on this machine".
            on: Default::default(),
            status: ExitStatus::Code(1),
            stderr_tail: stderr_tail.into(),
        }
    }

    fn eval_error(stderr_tail: &str) -> FlakeError {
        FlakeError::Eval {
            flake: "./fleet".into(),
            source: Box::new(failed(stderr_tail)),
        }
    }

    #[test]
    fn eval_hints_follow_nix_messages() {
        for (stderr, hint) in [
            (
                "error: experimental Nix feature 'flakes' is disabled; use '--extra-experimental-features flakes' to override",
                "enable flakes",
            ),
            (
                "error: flake 'path:/x' does not provide attribute 'packages.x86_64-linux.nixosConfigurations', 'legacyPackages.x86_64-linux.nixosConfigurations' or 'nixosConfigurations'",
                "does `./fleet` have nixosConfigurations?",
            ),
            (
                "error: getting status of '/nix/store/0ccnxa25whszw7mgbgyzdm4nqc0zwnm8-source/flake.nix': No such file or directory",
                "is there a flake.nix in `./fleet`?",
            ),
            (
                "error: getting status of '/srv/nope': No such file or directory",
                "does `./fleet` exist?",
            ),
            (
                "error: syntax error, unexpected ';'",
                "run `nix flake check ./fleet --show-trace`",
            ),
        ] {
            let got = eval_error(stderr).hint().unwrap();
            assert!(got.starts_with(hint), "{stderr}: {got}");
        }
    }

    #[test]
    fn usage_errors_are_told_apart_from_failures() {
        assert!(FlakeError::NoNodes.is_usage());
        assert!(FlakeError::NoToplevel { node: "x".into() }.is_usage());
        assert!(eval_error("boom").is_usage());
        let build = FlakeError::Build {
            nodes: "web1".into(),
            source: Box::new(failed("builder failed")),
        };
        assert!(!build.is_usage());
        assert!(build.hint().unwrap().contains("nix log"));
    }

    /// The message and every cause, as the renderer shows them.
    fn chain(err: &dyn Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str("\ncaused by: ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// A flake with no inputs whose `nixosConfigurations` are `nodes`, where
    /// `mk NAME` makes a toplevel holding `bin/switch-to-configuration`. Each
    /// flake's derivations are new (a nonce), so building really builds.
    fn flake(nodes: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let nonce = dir.path().file_name().unwrap().to_string_lossy();
        let text = format!(
            r#"{{
  outputs = {{ self }}:
    let
      mk = name: builtins.derivation {{
        inherit name;
        system = "x86_64-linux";
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        nonce = "{nonce}";
        args = [ "-c" "mkdir -p $out/bin; printf '#!/bin/sh\necho switching\n' > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration" ];
      }};
    in {{ nixosConfigurations = {{ {nodes} }}; }};
}}
"#
        );
        std::fs::write(dir.path().join("flake.nix"), text).unwrap();
        let flake = format!("path:{}", dir.path().display());
        (dir, flake)
    }

    const FLEET: &str = r#"
        web1 = { config = { system.build.toplevel = mk "web1"; berth.deployment = { targetHost = "h1"; tags = [ "web" ]; confirmTimeout = 60; }; }; };
        db1 = { config = { system.build.toplevel = mk "db1"; }; };
    "#;

    fn names(names: &[&str]) -> Vec<NodeName> {
        names.iter().map(|n| NodeName::new(*n).unwrap()).collect()
    }

    #[tokio::test]
    async fn nix_evaluate_reads_settings_and_defaults() {
        let (_dir, flake) = flake(FLEET);
        let nodes = evaluate(&flake, None).await.unwrap();
        let [db1, web1] = &nodes[..] else {
            panic!("{nodes:?}")
        };
        assert_eq!(db1.name.as_str(), "db1");
        assert_eq!(db1.settings, DeploymentSettings::default());
        assert_eq!(db1.settings.target_host(&db1.name), "db1");
        assert_eq!(web1.name.as_str(), "web1");
        assert_eq!(web1.settings.target_host(&web1.name), "h1");
        assert_eq!(web1.settings.tags, ["web"]);
        assert_eq!(web1.settings.confirm_timeout, 60);
        assert_eq!(web1.settings.target_user, "root");
        assert!(web1.settings.magic_rollback);
    }

    #[tokio::test]
    async fn nix_build_builds_every_node_in_the_order_asked() {
        let (_dir, flake) = flake(FLEET);
        // web1 first: nix orders its own results by derivation name.
        let built = build(&flake, &names(&["web1", "db1"])).await.unwrap();
        assert_eq!(built.len(), 2);
        for (b, name) in built.iter().zip(["web1", "db1"]) {
            assert_eq!(b.node.as_str(), name);
            assert_eq!(b.drv.name(), format!("{name}.drv"));
            assert_eq!(b.out.name(), name);
            assert!(Path::new(b.drv.as_str()).is_file(), "{}", b.drv);
            let switch = Path::new(b.out.as_str()).join("bin/switch-to-configuration");
            assert!(switch.is_file(), "{}", switch.display());
        }
    }

    #[tokio::test]
    async fn nix_build_shares_identical_systems() {
        let (_dir, flake) = flake(
            r#"a = { config.system.build.toplevel = mk "same"; }; b = { config.system.build.toplevel = mk "same"; };"#,
        );
        let built = build(&flake, &names(&["a", "b"])).await.unwrap();
        assert_eq!(built[0].node.as_str(), "a");
        assert_eq!(built[1].node.as_str(), "b");
        assert_eq!(built[0].out, built[1].out);
        assert_eq!(built[0].drv, built[1].drv);
        assert!(build(&flake, &[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn nix_drv_paths_instantiate_only_the_nodes_asked() {
        let (_dir, flake) = flake(&format!(
            "{FLEET} broken = {{ config.system.build.toplevel = throw \"not this one\"; }};"
        ));
        let toplevels = drv_paths(&flake, &names(&["web1", "db1"])).await.unwrap();
        assert_eq!(toplevels.len(), 2);
        assert_eq!(toplevels[0].node.as_str(), "web1");
        assert_eq!(toplevels[0].drv.name(), "web1.drv");
        assert_eq!(toplevels[0].out.name(), "web1");
        assert_eq!(toplevels[1].node.as_str(), "db1");
        for t in &toplevels {
            assert!(
                Path::new(t.drv.as_str()).is_file(),
                "{} was not instantiated",
                t.drv
            );
        }
        // Building the instantiated derivations gives the promised outputs.
        let built = build(&flake, &names(&["web1", "db1"])).await.unwrap();
        assert_eq!(built, toplevels);
        let err = drv_paths(&flake, &names(&["broken"])).await.unwrap_err();
        assert!(matches!(err, FlakeError::Instantiate { .. }), "{err:?}");
        assert!(chain(&err).contains("not this one"), "{}", chain(&err));
    }

    #[tokio::test]
    async fn nix_node_without_toplevel_is_named() {
        let (_dir, flake) = flake(&format!("{FLEET} notnixos = {{ config = {{ }}; }};"));
        let err = evaluate(&flake, None).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "node notnixos has no config.system.build.toplevel: is it a nixosConfiguration?"
        );
    }

    /// `berth deploy .#web1` in a fleet of NixOS nodes must not pay for
    /// evaluating the others: each is a module system evaluation.
    #[tokio::test]
    async fn nix_a_named_node_is_evaluated_alone() {
        let (_dir, flake) = flake(&format!(
            r#"{FLEET} broken = {{ config = throw "evaluated though not named"; }}; "not a name" = {{ }};"#
        ));
        let web1 = NodeName::new("web1").unwrap();
        let nodes = evaluate(&flake, Some(&web1)).await.unwrap();
        let [node] = &nodes[..] else {
            panic!("{nodes:?}")
        };
        assert_eq!(node.name, web1);
        assert_eq!(node.settings.target_host(&node.name), "h1");
        assert_eq!(node.settings.tags, ["web"]);
        // The whole fleet does evaluate the broken node.
        let err = evaluate(&flake, None).await.unwrap_err();
        assert!(
            chain(&err).contains("evaluated though not named"),
            "{}",
            chain(&err)
        );
        // A node the flake lacks is named, with the ones it has.
        let web3 = NodeName::new("web3").unwrap();
        let err = evaluate(&flake, Some(&web3)).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the flake has no node `web3` (it has broken, db1, not a name, web1)"
        );
    }

    #[tokio::test]
    async fn nix_wrong_setting_type_names_node_and_key() {
        let (_dir, flake) = flake(
            r#"web1 = { config = { system.build.toplevel = mk "web1"; berth.deployment.sshOptions = "-p 22"; }; };"#,
        );
        let err = evaluate(&flake, None).await.unwrap_err();
        assert!(
            err.to_string().starts_with(
                "node web1: berth.deployment.sshOptions is not valid: invalid type: string"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn nix_syntax_error_carries_nix_message() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("flake.nix"),
            "{ outputs = { self }: { nixosConfigurations = { a = ; }; }; }\n",
        )
        .unwrap();
        let flake = format!("path:{}", dir.path().display());
        let err = evaluate(&flake, None).await.unwrap_err();
        assert!(matches!(err, FlakeError::Eval { .. }), "{err:?}");
        let text = chain(&err);
        assert!(
            text.starts_with(&format!("could not evaluate the nodes of `{flake}`")),
            "{text}"
        );
        assert!(text.contains("syntax error, unexpected ';'"), "{text}");
        assert!(err.hint().unwrap().contains("nix flake check"));
    }

    #[tokio::test]
    async fn nix_flake_without_nixos_configurations_is_hinted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("flake.nix"),
            "{ outputs = { self }: { }; }\n",
        )
        .unwrap();
        let flake = format!("path:{}", dir.path().display());
        let err = evaluate(&flake, None).await.unwrap_err();
        assert!(
            err.hint().unwrap().contains("have nixosConfigurations?"),
            "{}",
            chain(&err)
        );
    }

    #[tokio::test]
    async fn nix_evaluation_leaves_the_lock_file_alone() {
        // An input with no lock entry: nix would write flake.lock (and fail
        // in a read-only checkout) without --no-write-lock-file.
        let input = tempfile::tempdir().unwrap();
        std::fs::write(
            input.path().join("flake.nix"),
            "{ outputs = { self }: { user = \"deploy\"; }; }\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("flake.nix"),
            format!(
                r#"{{
  inputs.other.url = "path:{}";
  outputs = {{ self, other }}: {{
    nixosConfigurations.a.config = {{ system.build.toplevel = "x"; berth.deployment.targetUser = other.user; }};
  }};
}}
"#,
                input.path().display()
            ),
        )
        .unwrap();
        let nodes = evaluate(&format!("path:{}", dir.path().display()), None)
            .await
            .unwrap();
        assert_eq!(nodes[0].settings.target_user, "deploy");
        assert!(!dir.path().join("flake.lock").exists());
    }
}
