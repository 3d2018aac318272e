//! `berth-nix-fmt [--check] PATH...`: formats .nix files in place with the
//! alejandra library, or with `--check` lists those that are not formatted
//! and exits 1. A directory stands for the .nix files under it (hidden
//! entries and cargo's `target` skipped). A file that does not parse is an
//! error either way.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: berth-nix-fmt [--check] PATH...";

fn main() -> ExitCode {
    let mut check = false;
    let mut files = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "--version" => {
                println!("alejandra {}", alejandra::version::VERSION);
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with('-') => {
                eprintln!("error: unknown flag {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => {
                if let Err(err) = collect(Path::new(&arg), &mut files) {
                    eprintln!("error: cannot read {arg}: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if files.is_empty() {
        eprintln!("error: no paths given\n{USAGE}");
        return ExitCode::from(2);
    }

    let mut failed = false;
    for path in files {
        let path = path.display().to_string();
        let before = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("error: cannot read {path}: {err}");
                failed = true;
                continue;
            }
        };
        match alejandra::format::in_memory(path.clone(), before) {
            (alejandra::format::Status::Error(err), _) => {
                eprintln!("error: {path} does not parse: {err}");
                failed = true;
            }
            (alejandra::format::Status::Changed(false), _) => {}
            (alejandra::format::Status::Changed(true), after) => {
                if check {
                    eprintln!("formatting: {path} is not formatted");
                    failed = true;
                } else if let Err(err) = std::fs::write(&path, after) {
                    eprintln!("error: cannot write {path}: {err}");
                    failed = true;
                } else {
                    eprintln!("formatted {path}");
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Adds `path` to `files`, or the .nix files under it when it is a
/// directory, in name order.
fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    for entry in entries {
        let skipped = entry.file_name().is_some_and(|name| {
            let name = name.to_string_lossy();
            name.starts_with('.') || name == "target"
        });
        if skipped {
            continue;
        }
        if entry.is_dir() {
            collect(&entry, files)?;
        } else if entry.extension().is_some_and(|ext| ext == "nix") {
            files.push(entry);
        }
    }
    Ok(())
}
