//! Nix profiles and their generations (`system` → `system-7-link` → store
//! path), read straight from the filesystem of the host the agent runs on.

use std::io;
use std::path::{Path, PathBuf};

use crate::process::Cmd;

/// One generation of a profile.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Generation {
    pub number: u64,
    /// What the generation points at (a store path).
    pub path: PathBuf,
}

/// `system-7-link` → 7, for profile `system`.
fn generation_number(profile_name: &str, link_name: &str) -> Option<u64> {
    link_name
        .strip_prefix(profile_name)?
        .strip_prefix('-')?
        .strip_suffix("-link")?
        .parse()
        .ok()
}

/// The generation `profile` points at now, if it exists.
pub fn current(profile: &Path) -> io::Result<Option<Generation>> {
    let link = match std::fs::read_link(profile) {
        Ok(link) => link,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = profile_name(profile);
    let number = link
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| generation_number(&name, f));
    Ok(number.map(|number| Generation {
        number,
        path: std::fs::canonicalize(profile).unwrap_or(link),
    }))
}

/// Every generation of `profile`, oldest first.
pub fn list(profile: &Path) -> io::Result<Vec<Generation>> {
    let dir = profile.parent().unwrap_or(Path::new("/"));
    let name = profile_name(profile);
    let mut generations = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(number) = entry
            .file_name()
            .to_str()
            .and_then(|f| generation_number(&name, f))
        else {
            continue;
        };
        let path = std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path());
        generations.push(Generation { number, path });
    }
    generations.sort_by_key(|g| g.number);
    Ok(generations)
}

fn profile_name(profile: &Path) -> String {
    profile
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Points `profile` back at generation `number`, without making a new one.
pub fn switch_generation(profile: &Path, number: u64) -> Cmd {
    Cmd::new("nix-env")
        .arg("-p")
        .arg(profile)
        .args(["--switch-generation", &number.to_string()])
}

/// Deletes generation `number` of `profile`.
pub fn delete_generation(profile: &Path, number: u64) -> Cmd {
    Cmd::new("nix-env")
        .arg("-p")
        .arg(profile)
        .args(["--delete-generations", &number.to_string()])
}

/// `<toplevel>/bin/switch-to-configuration <goal>`.
pub fn switch_to_configuration(toplevel: &Path, goal: &str) -> Cmd {
    Cmd::new(toplevel.join("bin/switch-to-configuration")).arg(goal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_numbers_come_from_link_names() {
        assert_eq!(generation_number("system", "system-7-link"), Some(7));
        assert_eq!(generation_number("system", "system-12-link"), Some(12));
        assert_eq!(generation_number("system", "system"), None);
        assert_eq!(generation_number("system", "other-1-link"), None);
        assert_eq!(generation_number("system", "system-x-link"), None);
    }

    #[test]
    fn generations_of_a_real_profile_directory() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("system");
        for (n, target) in [(1, "a"), (2, "b"), (10, "c")] {
            std::fs::create_dir(dir.path().join(target)).unwrap();
            std::os::unix::fs::symlink(
                dir.path().join(target),
                dir.path().join(format!("system-{n}-link")),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink("system-2-link", &profile).unwrap();
        let now = current(&profile).unwrap().unwrap();
        assert_eq!(now.number, 2);
        assert_eq!(
            now.path,
            std::fs::canonicalize(dir.path().join("b")).unwrap()
        );
        let all: Vec<u64> = list(&profile).unwrap().iter().map(|g| g.number).collect();
        assert_eq!(all, [1, 2, 10]);
        assert_eq!(current(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn generation_commands() {
        let p = Path::new("/nix/var/nix/profiles/system");
        assert_eq!(
            switch_generation(p, 3).argv(),
            [
                "nix-env",
                "-p",
                "/nix/var/nix/profiles/system",
                "--switch-generation",
                "3"
            ]
        );
        assert_eq!(
            delete_generation(p, 4).argv(),
            [
                "nix-env",
                "-p",
                "/nix/var/nix/profiles/system",
                "--delete-generations",
                "4"
            ]
        );
        assert_eq!(
            switch_to_configuration(Path::new("/nix/store/x-sys"), "switch").argv(),
            ["/nix/store/x-sys/bin/switch-to-configuration", "switch"]
        );
    }
}
