//! The layers of docs/ARCHITECTURE.md, checked on the source: cli →
//! command → context → domain → process, with the base modules (errors,
//! output, environment, the renderer) below all of them. A module may use
//! its own layer and the ones below it, never one above.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layer of a top-level module of `src/`, higher is further up; `None`
/// for the modules only tests build (they feed every parser).
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "main" | "cli" => 5,
        "command" => 4,
        "context" => 3,
        "agent" | "app" | "deploy" | "flake" | "github" | "host" | "journal" | "lab" | "nix"
        | "notify" | "progress" | "stage" | "state" => 2,
        "process" => 1,
        "error" | "output" | "env" | "diagnostics" | "lib" => 0,
        "fuzz" | "testing" => return None,
        other => panic!("src/{other}: a module tests/architecture.rs does not place in a layer"),
    })
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`, comments left out.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::c};`
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(own) = layer(&top) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        for used in uses(&text) {
            // A macro or a name the crate root re-exports is not a module.
            let Some(theirs) = layer_of_use(&used) else {
                continue;
            };
            if theirs > own {
                wrong.push(format!(
                    "src/{} (layer {own}) uses crate::{used} (layer {theirs})",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports up the layers:\n{}",
        wrong.join("\n")
    );
}

fn layer_of_use(name: &str) -> Option<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    if src.join(format!("{name}.rs")).exists() || src.join(name).is_dir() {
        layer(name)
    } else {
        None
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    let used = uses(
        "use crate::{cli, host::SshHost};\nlet x = crate::command::deploy::run; // crate::lab\n",
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["cli", "command", "host"]
    );
    assert!(layer("cli") > layer("command"));
    assert!(layer("command") > layer("context"));
    assert!(layer("context") > layer("app"));
    assert!(layer("app") > layer("process"));
    assert!(layer("process") > layer("error"));
}
