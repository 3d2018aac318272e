//! Evaluating and building a fleet flake: one nix process per step for all
//! nodes, never one per node. Each step is a pure command builder, a parser
//! of what it prints, and an async function that runs the two.
//!
//! Building goes through the derivations rather than `nix build FLAKE#…`:
//! nix 2.8's `nix build --json` prints its results ordered by derivation
//! name, not by installable, so they cannot be told apart by node; and a
//! node's system is evaluated once, for both local and on-target builds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use serde::Deserialize;
use serde_json::Value;

use super::{DeploymentSettings, FlakeError, NodeMeta, NodeName};
use crate::host::Host;
use crate::nix::StorePath;
use crate::process::{self, Cmd, CommandError, JobLog, Output, Via};

/// A node's deployment settings and whether it has a system to build, as
/// a Nix function of the node. `or` and `?` keep a node without berth's
/// module, or without a toplevel, from failing the whole evaluation; `?`
/// does not force the toplevel, so this stays cheap.
const META_OF_NODE: &str = "node: { \
     deployment = node.config.berth.deployment or { }; \
     hasToplevel = node ? config.system.build.toplevel; \
     }";

/// One node's system: the derivation of `config.system.build.toplevel` and
/// its output, the closure to copy and switch to. From [`build`] the output
/// exists in the local store; from [`drv_paths`] only the derivation does,
/// and `out` is where building it (on the target) will put the system.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Built {
    pub node: NodeName,
    pub drv: StorePath,
    pub out: StorePath,
}

/// `nix eval --json` of `FLAKE#nixosConfigurations` through `expr`.
///
/// `--no-write-lock-file`: a deploy must not rewrite the user's lock file,
/// and a read-only checkout with an incomplete lock must still deploy.
/// `--extra-experimental-features`: flakes work without the user's nix.conf
/// enabling them.
fn flake_eval(flake: &str, expr: &str) -> Cmd {
    Cmd::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--no-write-lock-file",
            "--json",
        ])
        .arg(format!("{flake}#nixosConfigurations"))
        .args(["--apply", expr])
}

/// Evaluates the metadata of every node of `flake` in one process, or,
/// with `only`, of that node alone: the others map to `null`, so their
/// configurations (a NixOS module evaluation each) are never forced, and
/// only their names are read.
pub fn eval_cmd(flake: &str, only: Option<&NodeName>) -> Cmd {
    let expr = match only {
        // A NodeName holds only letters, digits, `_`, `-` and `.`: safe in
        // a Nix string.
        Some(name) => format!(
            "nodes: builtins.mapAttrs (name: node: if name == \"{name}\" \
             then ({META_OF_NODE}) node else null) nodes"
        ),
        None => format!("nodes: builtins.mapAttrs (name: {META_OF_NODE}) nodes"),
    };
    flake_eval(flake, &expr)
}

/// What [`eval_cmd`] prints for one node.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNode {
    #[serde(default)]
    deployment: Value,
    has_toplevel: bool,
}

/// Reads what [`eval_cmd`] printed: every node, sorted by name; with
/// `only`, that node alone, or [`FlakeError::UnknownNode`] naming the
/// others when the flake has no such node.
pub fn parse_eval(json: &[u8], only: Option<&NodeName>) -> Result<Vec<NodeMeta>, FlakeError> {
    // A BTreeMap iterates in name order, which is NodeName's order too.
    let raw: BTreeMap<String, Option<RawNode>> =
        serde_json::from_slice(json).map_err(|e| unreadable("nix eval", e))?;
    if let Some(only) = only {
        if !raw.contains_key(only.as_str()) {
            return Err(FlakeError::UnknownNode {
                node: only.to_string(),
                known: raw.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let mut nodes = Vec::with_capacity(raw.len());
    for (name, node) in raw {
        let node = match (only, node) {
            (Some(only), _) if only.as_str() != name => continue,
            (_, Some(node)) => node,
            (_, None) => return Err(unreadable("nix eval", format!("node {name} is null"))),
        };
        let name = NodeName::new(&name).map_err(|err| match err {
            FlakeError::InvalidNodeName { text, why } => {
                FlakeError::UnsupportedNodeName { text, why }
            }
            other => other,
        })?;
        if !node.has_toplevel {
            return Err(FlakeError::NoToplevel {
                node: name.to_string(),
            });
        }
        let settings = DeploymentSettings::from_json(name.as_str(), node.deployment)?;
        nodes.push(NodeMeta { name, settings });
    }
    Ok(nodes)
}

/// Every node of `flake` with its settings, sorted by name; with `only`,
/// that node alone, the others not evaluated (see [`eval_cmd`]).
pub async fn evaluate(flake: &str, only: Option<&NodeName>) -> Result<Vec<NodeMeta>, FlakeError> {
    let out = run(&eval_cmd(flake, only))
        .await
        .map_err(|source| FlakeError::Eval {
            flake: flake.to_owned(),
            source: Box::new(source),
        })?;
    parse_eval(&out.stdout, only)
}

/// Evaluates the toplevels of `nodes` in one process, as
/// `{ "<node>" = { drv = …; out = …; }; … }` (not `outPath`: Nix prints an
/// attribute set holding `outPath` as that path alone). Evaluating `drvPath`
/// writes each `.drv` into the local store, which building it here, or
/// `nix copy --derivation` to a target that builds it, needs.
pub fn drv_paths_cmd(flake: &str, nodes: &[NodeName]) -> Cmd {
    let mut expr = String::from("nodes: {");
    let mut seen = Vec::new();
    for node in nodes {
        if seen.contains(&node) {
            continue; // Nix refuses an attribute defined twice.
        }
        seen.push(node);
        // Splicing is safe: a NodeName holds no `"`, `\` or `$`.
        let _ = write!(
            expr,
            " \"{node}\" = let t = nodes.\"{node}\".config.system.build.toplevel; in {{ drv = t.drvPath; out = t.outPath; }};"
        );
    }
    expr.push_str(" }");
    flake_eval(flake, &expr)
}

/// What [`drv_paths_cmd`] prints for one node.
#[derive(Deserialize)]
struct RawToplevel {
    drv: String,
    out: String,
}

/// Reads what [`drv_paths_cmd`] printed, in the order of `nodes`.
pub fn parse_drv_paths(json: &[u8], nodes: &[NodeName]) -> Result<Vec<Built>, FlakeError> {
    let raw: BTreeMap<String, RawToplevel> =
        serde_json::from_slice(json).map_err(|e| unreadable("nix eval", e))?;
    nodes
        .iter()
        .map(|node| {
            let toplevel = raw
                .get(node.as_str())
                .ok_or_else(|| unreadable("nix eval", format!("no derivation for node {node}")))?;
            let path = |p: &str| StorePath::new(p).map_err(|e| unreadable("nix eval", e));
            let (drv, out) = (path(&toplevel.drv)?, path(&toplevel.out)?);
            if !drv.name().ends_with(".drv") {
                return Err(unreadable(
                    "nix eval",
                    format!("the toplevel of node {node} comes from {drv}, not a derivation"),
                ));
            }
            Ok(Built {
                node: node.clone(),
                drv,
                out,
            })
        })
        .collect()
}

/// The toplevel of each of `nodes`, its derivation instantiated in the
/// local store but not built, in the order of `nodes`.
pub async fn drv_paths(flake: &str, nodes: &[NodeName]) -> Result<Vec<Built>, FlakeError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let out =
        run(&drv_paths_cmd(flake, nodes))
            .await
            .map_err(|source| FlakeError::Instantiate {
                flake: flake.to_owned(),
                nodes: list(nodes),
                source: Box::new(source),
            })?;
    parse_drv_paths(&out.stdout, nodes)
}

/// Reads what [`crate::nix::realise`] printed: the output of each of `drvs`, in
/// order.
pub fn parse_realise(stdout: &[u8], drvs: &[StorePath]) -> Result<Vec<StorePath>, FlakeError> {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != drvs.len() {
        return Err(unreadable(
            "nix-store --realise",
            format!(
                "it printed {} paths for {} derivations",
                lines.len(),
                drvs.len()
            ),
        ));
    }
    lines
        .into_iter()
        .map(|line| StorePath::new(line.trim()).map_err(|e| unreadable("nix-store --realise", e)))
        .collect()
}

/// Evaluates and builds the systems of `nodes` here: one evaluation for all
/// their derivations, one build for all of them. In the order of `nodes`.
pub async fn build(flake: &str, nodes: &[NodeName]) -> Result<Vec<Built>, FlakeError> {
    let toplevels = drv_paths(flake, nodes).await?;
    realise_on(&crate::host::LocalHost::new(), toplevels).await
}

/// Builds `toplevels` (from [`drv_paths`]) in `host`'s store — this
/// machine's, or a build host's the derivations were copied to — in one
/// `nix-store --realise`, and returns them with the outputs that were built.
pub async fn realise_on(host: &dyn Host, toplevels: Vec<Built>) -> Result<Vec<Built>, FlakeError> {
    if toplevels.is_empty() {
        return Ok(Vec::new());
    }
    let unique = unique_drvs(&toplevels);
    let out = host
        .run(&crate::nix::realise(&unique))
        .await
        .map_err(|source| FlakeError::Build {
            nodes: list(&toplevels.iter().map(|t| t.node.clone()).collect::<Vec<_>>()),
            source: Box::new(source),
        })?;
    let outs = parse_realise(&out.stdout, &unique)?;
    // What was built is the truth; the evaluated outPath is only a promise.
    let out_of: HashMap<&StorePath, &StorePath> = unique.iter().zip(&outs).collect();
    Ok(toplevels
        .iter()
        .map(|t| Built {
            node: t.node.clone(),
            drv: t.drv.clone(),
            out: out_of[&t.drv].clone(),
        })
        .collect())
}

/// The derivations of `toplevels`, each once: nodes with identical systems
/// share one, and it is copied and built once.
pub fn unique_drvs(toplevels: &[Built]) -> Vec<StorePath> {
    let mut unique: Vec<StorePath> = Vec::new();
    for t in toplevels {
        if !unique.contains(&t.drv) {
            unique.push(t.drv.clone());
        }
    }
    unique
}

async fn run(cmd: &Cmd) -> Result<Output, CommandError> {
    process::output(cmd, Via::Local, &JobLog::new())
        .await?
        .check()
}

fn unreadable(command: &'static str, why: impl ToString) -> FlakeError {
    FlakeError::Unreadable {
        command,
        why: why.to_string(),
    }
}

fn list(nodes: &[NodeName]) -> String {
    nodes
        .iter()
        .map(NodeName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV_A: &str = "/nix/store/8waznyi2bnbzsg0v65lyraj2nsgbi052-web1.drv";
    const OUT_A: &str = "/nix/store/1wiplvxf2k2vsxv4af0sar32mzm8pcja-web1";
    const DRV_B: &str = "/nix/store/m8lhd67iix8fqa405fmkgmb3z5qab13q-db1.drv";
    const OUT_B: &str = "/nix/store/bv20qpnqhy7lkbxdxi510kiymrdlwd1w-db1";

    fn names(names: &[&str]) -> Vec<NodeName> {
        names.iter().map(|n| NodeName::new(*n).unwrap()).collect()
    }

    fn path(p: &str) -> StorePath {
        StorePath::new(p).unwrap()
    }

    #[test]
    fn eval_argv() {
        assert_eq!(
            eval_cmd("path:/srv/fleet", None).argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command flakes",
                "eval",
                "--no-write-lock-file",
                "--json",
                "path:/srv/fleet#nixosConfigurations",
                "--apply",
                "nodes: builtins.mapAttrs (name: node: { \
                 deployment = node.config.berth.deployment or { }; \
                 hasToplevel = node ? config.system.build.toplevel; \
                 }) nodes",
            ]
        );
    }

    #[test]
    fn eval_argv_of_one_node_maps_the_others_to_null() {
        let web1 = NodeName::new("web1").unwrap();
        assert_eq!(
            eval_cmd("path:/srv/fleet", Some(&web1))
                .argv()
                .last()
                .unwrap()
                .to_str()
                .unwrap(),
            "nodes: builtins.mapAttrs (name: node: if name == \"web1\" \
             then (node: { \
             deployment = node.config.berth.deployment or { }; \
             hasToplevel = node ? config.system.build.toplevel; \
             }) node else null) nodes"
        );
    }

    #[test]
    fn parse_eval_of_one_node_reads_it_alone() {
        let json = br#"{"a": null, "a b": null, "b": {"deployment": {"targetHost": "h2"}, "hasToplevel": true}}"#;
        let b = NodeName::new("b").unwrap();
        let nodes = parse_eval(json, Some(&b)).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].settings.target_host(&b), "h2");
        let c = NodeName::new("c").unwrap();
        assert_eq!(
            parse_eval(json, Some(&c)).unwrap_err().to_string(),
            "the flake has no node `c` (it has a, a b, b)"
        );
        // Without a name, every node must be there.
        let err = parse_eval(json, None).unwrap_err();
        assert!(matches!(err, FlakeError::Unreadable { .. }), "{err:?}");
    }

    #[test]
    fn drv_paths_argv_quotes_each_node_once() {
        let cmd = drv_paths_cmd(".", &names(&["web1", "host.example.org", "web1"]));
        assert_eq!(
            cmd.argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command flakes",
                "eval",
                "--no-write-lock-file",
                "--json",
                ".#nixosConfigurations",
                "--apply",
                "nodes: { \
                 \"web1\" = let t = nodes.\"web1\".config.system.build.toplevel; in { drv = t.drvPath; out = t.outPath; }; \
                 \"host.example.org\" = let t = nodes.\"host.example.org\".config.system.build.toplevel; in { drv = t.drvPath; out = t.outPath; }; \
                 }",
            ]
        );
    }

    #[test]
    fn realise_argv() {
        assert_eq!(
            crate::nix::realise(&[path(DRV_A), path(DRV_B)]).argv(),
            [
                "nix-store",
                "--realise",
                &format!("{DRV_A}!out"),
                &format!("{DRV_B}!out"),
            ]
        );
    }

    #[test]
    fn parse_eval_reads_sorts_and_defaults() {
        let json = br#"{
            "web1": { "deployment": { "targetHost": "h1", "tags": ["web"] }, "hasToplevel": true },
            "db1": { "deployment": {}, "hasToplevel": true }
        }"#;
        let nodes = parse_eval(json, None).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name.as_str(), "db1");
        assert_eq!(nodes[0].settings, DeploymentSettings::default());
        assert_eq!(nodes[1].name.as_str(), "web1");
        assert_eq!(nodes[1].settings.target_host(&nodes[1].name), "h1");
        assert_eq!(nodes[1].settings.tags, ["web"]);
        assert!(parse_eval(b"{}", None).unwrap().is_empty());
    }

    #[test]
    fn parse_eval_errors() {
        let err = parse_eval(
            br#"{ "bad": { "deployment": {}, "hasToplevel": false } }"#,
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node bad has no config.system.build.toplevel: is it a nixosConfiguration?"
        );
        let err = parse_eval(
            br#"{ "a b": { "deployment": {}, "hasToplevel": true } }"#,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "nixosConfigurations.\"a b\" has a name berth cannot deploy: it holds ' '"
            ),
            "{err}"
        );
        let err = parse_eval(
            br#"{ "w": { "deployment": { "magicRollback": "yes" }, "hasToplevel": true } }"#,
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("node w: berth.deployment.magicRollback is not valid: invalid type"),
            "{err}"
        );
        let err = parse_eval(b"warning: x\n[]", None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`nix eval` printed what berth cannot read: "),
            "{err}"
        );
    }

    #[test]
    fn parse_drv_paths_follows_node_order() {
        let json = format!(
            r#"{{ "db1": {{ "drv": "{DRV_B}", "out": "{OUT_B}" }},
                 "web1": {{ "drv": "{DRV_A}", "out": "{OUT_A}" }} }}"#
        );
        let nodes = names(&["web1", "db1"]);
        assert_eq!(
            parse_drv_paths(json.as_bytes(), &nodes).unwrap(),
            [
                Built {
                    node: nodes[0].clone(),
                    drv: path(DRV_A),
                    out: path(OUT_A)
                },
                Built {
                    node: nodes[1].clone(),
                    drv: path(DRV_B),
                    out: path(OUT_B)
                }
            ]
        );
        let err = parse_drv_paths(json.as_bytes(), &names(&["web2"])).unwrap_err();
        assert!(
            err.to_string().ends_with("no derivation for node web2"),
            "{err}"
        );
        let json = format!(r#"{{ "web1": {{ "drv": "{OUT_A}", "out": "{OUT_A}" }} }}"#);
        let err = parse_drv_paths(json.as_bytes(), &names(&["web1"])).unwrap_err();
        assert!(err.to_string().ends_with("not a derivation"), "{err}");
        let json = format!(r#"{{ "web1": {{ "drv": "{DRV_A}" }} }}"#);
        assert!(parse_drv_paths(json.as_bytes(), &names(&["web1"])).is_err());
    }

    #[test]
    fn parse_realise_pairs_lines_with_derivations() {
        let drvs = [path(DRV_A), path(DRV_B)];
        let stdout = format!("{OUT_A}\n{OUT_B}\n");
        assert_eq!(
            parse_realise(stdout.as_bytes(), &drvs).unwrap(),
            [path(OUT_A), path(OUT_B)]
        );
        let err = parse_realise(format!("{OUT_A}\n").as_bytes(), &drvs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`nix-store --realise` printed what berth cannot read: it printed 1 paths for 2 derivations"
        );
        assert!(parse_realise(b"/tmp/x\n/tmp/y\n", &drvs).is_err());
    }
}
