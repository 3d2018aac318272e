//! The closure diff behind `berth plan`: which packages a new system adds,
//! removes, upgrades or rebuilds compared with the one a host runs, like
//! `nvd diff`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use super::{InvalidStorePath, StorePath};
use crate::process::Cmd;

/// One store path of a closure and the size of its NAR serialisation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ClosureEntry {
    pub path: StorePath,
    pub nar_size: u64,
}

/// A package (store path name without its version) and its versions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Package {
    pub name: String,
    /// Sorted as Nix orders versions; `""` for a path without a version.
    pub versions: Vec<String>,
}

/// A package in both closures whose set of versions differs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub name: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
}

/// What moving a host from one closure to another changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClosureDiff {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<Change>,
    /// Packages with the same versions on both sides but other store paths:
    /// a changed dependency, build input or configuration.
    pub rebuilt: Vec<String>,
    pub size_before: u64,
    pub size_after: u64,
    pub paths_before: usize,
    pub paths_after: usize,
    pub paths_added: usize,
    pub paths_removed: usize,
}

/// Output of `nix path-info --json` that berth cannot read.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("`nix path-info --json` printed something that is not JSON")]
    Json(#[source] serde_json::Error),
    #[error("`nix path-info --json` printed JSON berth does not understand: {0}")]
    Shape(String),
    #[error("`{0}` is not a valid path in the store `nix path-info` asked")]
    NotValid(String),
    #[error(transparent)]
    StorePath(#[from] InvalidStorePath),
}

/// `nix path-info --json --recursive PATH`: every path of `path`'s closure
/// with its NAR size, in the store of wherever it runs.
///
/// The experimental feature is switched on here rather than expected in the
/// host's `nix.conf`: NixOS leaves `nix-command` off by default.
pub fn path_info_cmd(path: &StorePath) -> Cmd {
    Cmd::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args(["path-info", "--json", "--recursive"])
        .arg(path.as_str())
}

/// Reads what [`path_info_cmd`] printed, sorted by path.
///
/// Nix up to 2.18 prints an array of objects that each carry their `path`;
/// later versions print an object keyed by path (or, with `--json-format 2`,
/// `{"version": 2, "storeDir": …, "info": {…}}` keyed by base name).
pub fn parse_path_info(json: &[u8]) -> Result<Vec<ClosureEntry>, DiffError> {
    let value: Value = serde_json::from_slice(json).map_err(DiffError::Json)?;
    let mut entries = path_infos(&value)?
        .into_iter()
        .map(|(path, info)| entry(path, info))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    entries.dedup_by(|a, b| a.path == b.path);
    Ok(entries)
}

/// Each path `nix path-info --json` printed, with its object, in any of
/// the shapes Nix versions print (see [`parse_path_info`]).
pub(crate) fn path_infos(value: &Value) -> Result<Vec<(String, &Value)>, DiffError> {
    Ok(match value {
        Value::Array(items) => items
            .iter()
            .map(|info| {
                let path = info.get("path").and_then(Value::as_str).ok_or_else(|| {
                    DiffError::Shape("an element of the array has no \"path\"".into())
                })?;
                Ok((path.to_owned(), info))
            })
            .collect::<Result<Vec<_>, DiffError>>()?,
        Value::Object(map) if map.get("version").is_some_and(Value::is_number) => {
            let store_dir = map
                .get("storeDir")
                .and_then(Value::as_str)
                .unwrap_or("/nix/store");
            let Some(Value::Object(info)) = map.get("info") else {
                return Err(DiffError::Shape(
                    "a versioned object without \"info\"".into(),
                ));
            };
            info.iter()
                .map(|(key, info)| {
                    let path = if key.starts_with('/') {
                        key.clone()
                    } else {
                        format!("{store_dir}/{key}")
                    };
                    (path, info)
                })
                .collect()
        }
        Value::Object(map) => map
            .iter()
            .map(|(path, info)| (path.clone(), info))
            .collect(),
        _ => {
            return Err(DiffError::Shape(
                "neither an array nor an object at the top".into(),
            ))
        }
    })
}

fn entry(path: String, info: &Value) -> Result<ClosureEntry, DiffError> {
    // An invalid path is `null` in the keyed shape and `"valid": false` in
    // the array shape.
    if info.is_null() || info.get("valid") == Some(&Value::Bool(false)) {
        return Err(DiffError::NotValid(path));
    }
    let Some(nar_size) = info.get("narSize").and_then(Value::as_u64) else {
        return Err(DiffError::Shape(format!(
            "`{path}` has no numeric \"narSize\""
        )));
    };
    Ok(ClosureEntry {
        path: StorePath::new(path)?,
        nar_size,
    })
}

/// Splits a store path name into package name and version as
/// `builtins.parseDrvName` does: the name ends at the first dash followed by
/// something other than a letter. A `.drv` suffix is dropped first.
pub fn parse_drv_name(name: &str) -> (&str, &str) {
    let name = name.strip_suffix(".drv").unwrap_or(name);
    match name
        .as_bytes()
        .windows(2)
        .position(|w| w[0] == b'-' && !w[1].is_ascii_alphabetic())
    {
        Some(dash) => (&name[..dash], &name[dash + 1..]),
        None => (name, ""),
    }
}

/// Orders versions as Nix's `compareVersions` does (so `2.9` < `2.10` and
/// `1.0pre1` < `1.0`), then by text so that the order is total.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut rest_a, mut rest_b) = (a, b);
    while !rest_a.is_empty() || !rest_b.is_empty() {
        let (ca, ra) = next_component(rest_a);
        let (cb, rb) = next_component(rest_b);
        if component_lt(ca, cb) {
            return Ordering::Less;
        }
        if component_lt(cb, ca) {
            return Ordering::Greater;
        }
        (rest_a, rest_b) = (ra, rb);
    }
    a.cmp(b)
}

/// The next component of a version (a run of digits, or of other characters
/// up to a separator) and what follows it.
fn next_component(version: &str) -> (&str, &str) {
    let version = version.trim_start_matches(['.', '-']);
    let digits = version.starts_with(|c: char| c.is_ascii_digit());
    let end = version
        .find(|c: char| {
            if digits {
                !c.is_ascii_digit()
            } else {
                c.is_ascii_digit() || c == '.' || c == '-'
            }
        })
        .unwrap_or(version.len());
    version.split_at(end)
}

/// Nix's `componentsLT`: numbers compare as numbers and beat words, a
/// missing component is below a number, and `pre` is below everything.
fn component_lt(a: &str, b: &str) -> bool {
    let number = |c: &str| {
        if c.is_empty() {
            None
        } else {
            c.parse::<u64>().ok()
        }
    };
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x < y,
        (_, Some(_)) if a.is_empty() => true,
        _ if a == "pre" && b != "pre" => true,
        _ if b == "pre" => false,
        (_, Some(_)) => true,
        (Some(_), _) => false,
        _ => a < b,
    }
}

/// The versions and store paths one package has in one closure.
#[derive(Default)]
struct Side<'a> {
    versions: BTreeSet<&'a str>,
    paths: BTreeSet<&'a str>,
}

impl Side<'_> {
    fn sorted_versions(&self) -> Vec<String> {
        let mut versions: Vec<&str> = self.versions.iter().copied().collect();
        versions.sort_by(|a, b| compare_versions(a, b));
        versions.into_iter().map(str::to_owned).collect()
    }
}

fn by_package(entries: &[ClosureEntry]) -> BTreeMap<&str, Side<'_>> {
    let mut packages: BTreeMap<&str, Side> = BTreeMap::new();
    for entry in entries {
        let (name, version) = parse_drv_name(entry.path.name());
        let side = packages.entry(name).or_default();
        side.versions.insert(version);
        side.paths.insert(entry.path.as_str());
    }
    packages
}

/// The sum of NAR sizes, each distinct path counted once, and those paths.
fn totals(entries: &[ClosureEntry]) -> (u64, BTreeSet<&str>) {
    let mut paths = BTreeSet::new();
    let mut size = 0;
    for entry in entries {
        if paths.insert(entry.path.as_str()) {
            size += entry.nar_size;
        }
    }
    (size, paths)
}

/// What replacing closure `before` with closure `after` changes, each list
/// sorted by package name.
pub fn diff(before: &[ClosureEntry], after: &[ClosureEntry]) -> ClosureDiff {
    let (old, new) = (by_package(before), by_package(after));
    let mut out = ClosureDiff::default();
    for (&name, was) in &old {
        match new.get(name) {
            None => out.removed.push(Package {
                name: name.to_owned(),
                versions: was.sorted_versions(),
            }),
            Some(now) if now.versions != was.versions => out.changed.push(Change {
                name: name.to_owned(),
                from: was.sorted_versions(),
                to: now.sorted_versions(),
            }),
            Some(now) if now.paths != was.paths => out.rebuilt.push(name.to_owned()),
            Some(_) => {}
        }
    }
    for (&name, now) in &new {
        if !old.contains_key(name) {
            out.added.push(Package {
                name: name.to_owned(),
                versions: now.sorted_versions(),
            });
        }
    }
    let (size_before, paths_before) = totals(before);
    let (size_after, paths_after) = totals(after);
    out.size_before = size_before;
    out.size_after = size_after;
    out.paths_before = paths_before.len();
    out.paths_after = paths_after.len();
    out.paths_added = paths_after.difference(&paths_before).count();
    out.paths_removed = paths_before.difference(&paths_after).count();
    out
}

impl ClosureDiff {
    /// Whether any package was added, removed or changed version (rebuilds
    /// do not count).
    pub fn has_package_changes(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

/// Versions for humans: comma-separated, a missing version as `(none)`.
fn show_versions(versions: &[String]) -> String {
    versions
        .iter()
        .map(|v| if v.is_empty() { "(none)" } else { v.as_str() })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One package per line under `changed:`, `added:` and `removed:`, names in
/// one column; then the rebuilt names and the closure's totals. No trailing
/// newline.
impl fmt::Display for ClosureDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .changed
            .iter()
            .map(|c| c.name.chars().count())
            .chain(self.added.iter().map(|p| p.name.chars().count()))
            .chain(self.removed.iter().map(|p| p.name.chars().count()))
            .max()
            .unwrap_or(0);
        let mut lines = Vec::new();
        let row = |name: &str, versions: String| {
            format!("  {name:<width$}  {versions}")
                .trim_end()
                .to_owned()
        };
        // A package whose only "version" is none shows as its name alone.
        let listed = |versions: &[String]| {
            if versions.iter().all(String::is_empty) {
                String::new()
            } else {
                show_versions(versions)
            }
        };
        if !self.has_package_changes() {
            lines.push("no package changes".to_owned());
        }
        if !self.changed.is_empty() {
            lines.push("changed:".to_owned());
            for c in &self.changed {
                let versions = format!("{} → {}", show_versions(&c.from), show_versions(&c.to));
                lines.push(row(&c.name, versions));
            }
        }
        for (title, packages) in [("added:", &self.added), ("removed:", &self.removed)] {
            if !packages.is_empty() {
                lines.push(title.to_owned());
                for p in packages {
                    lines.push(row(&p.name, listed(&p.versions)));
                }
            }
        }
        if !self.rebuilt.is_empty() {
            lines.push(format!("rebuilt: {}", self.rebuilt.join(", ")));
        }
        lines.push(format!(
            "closure: {} → {} paths (+{}, -{}), {} → {} ({})",
            self.paths_before,
            self.paths_after,
            self.paths_added,
            self.paths_removed,
            human_size(self.size_before.into()),
            human_size(self.size_after.into()),
            human_delta(i128::from(self.size_after) - i128::from(self.size_before)),
        ));
        f.write_str(&lines.join("\n"))
    }
}

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// A size in binary units with three significant digits (`512 B`,
/// `8.40 MiB`, `12.5 GiB`); negative sizes keep their minus sign.
pub fn human_size(bytes: i128) -> String {
    let sign = if bytes < 0 { "-" } else { "" };
    let magnitude = bytes.unsigned_abs();
    if magnitude < 1024 {
        return format!("{sign}{magnitude} B");
    }
    let mut value = magnitude as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = match value {
        v if v < 10.0 => 2,
        v if v < 100.0 => 1,
        _ => 0,
    };
    format!("{sign}{value:.decimals$} {}", UNITS[unit])
}

/// A change in size: [`human_size`] with a `+` on growth, `0 B` for none.
pub fn human_delta(bytes: i128) -> String {
    if bytes > 0 {
        format!("+{}", human_size(bytes))
    } else {
        human_size(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{self, JobLog, Via};

    fn path(hash_char: char, name: &str) -> StorePath {
        let hash: String = std::iter::repeat_n(hash_char, 32).collect();
        StorePath::new(format!("/nix/store/{hash}-{name}")).unwrap()
    }

    fn entry(hash_char: char, name: &str, nar_size: u64) -> ClosureEntry {
        ClosureEntry {
            path: path(hash_char, name),
            nar_size,
        }
    }

    #[test]
    fn path_info_argv() {
        let p = path('a', "nixos-system-web1-24.05");
        assert_eq!(
            path_info_cmd(&p).argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
                "--recursive",
                p.as_str()
            ]
        );
        assert!(path_info_cmd(&p).get_env().is_empty());
        assert!(path_info_cmd(&p).get_cwd().is_none());
    }

    #[test]
    fn drv_names_split_like_parse_drv_name() {
        for (full, name, version) in [
            ("hello-2.12.1", "hello", "2.12.1"),
            ("perl5.38.2-URI-5.21", "perl5.38.2-URI", "5.21"),
            (
                "nixos-system-web1-24.05.20240601.abc",
                "nixos-system-web1",
                "24.05.20240601.abc",
            ),
            ("etc", "etc", ""),
            ("system-path", "system-path", ""),
            ("util-linux-2.39-bin", "util-linux", "2.39-bin"),
            (
                "python3.11-requests-2.31.0",
                "python3.11-requests",
                "2.31.0",
            ),
            ("hello-2.12.1.drv", "hello", "2.12.1"),
            ("apache-httpd-2.0.48", "apache-httpd", "2.0.48"),
            ("7zip_archiver-0.2", "7zip_archiver", "0.2"),
            ("gcc-1-2", "gcc", "1-2"),
            ("bash--1-2", "bash", "-1-2"),
            ("xvidtune-?1-2", "xvidtune", "?1-2"),
            ("trailing-", "trailing-", ""),
            ("unit-nginx.service", "unit-nginx.service", ""),
        ] {
            assert_eq!(parse_drv_name(full), (name, version), "{full}");
        }
    }

    #[test]
    fn versions_order_like_nix() {
        use Ordering::*;
        for (a, b, want) in [
            ("2.9", "2.10", Less),
            ("2.12", "2.12.1", Less),
            ("1.0pre1", "1.0", Less),
            ("2.3a", "2.3.1", Less),
            ("3.0.14", "3.0.13", Greater),
            ("1.0", "1.0", Equal),
            ("", "1.0", Less),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        }
    }

    const ARRAY_JSON: &str = r#"[{"path":"/nix/store/jrziagdf77x2m6bpsmd8nczfn2jfrdhn-diff-test-1.0","narHash":"sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=","narSize":120,"references":[],"deriver":"/nix/store/c8hr6vz48sw4a3jkirkn5vmfglpfd6wh-diff-test-1.0.drv","registrationTime":1795424860,"ultimate":true},{"path":"/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-2.12","narHash":"sha256-AAAA","narSize":4096,"references":["/nix/store/jrziagdf77x2m6bpsmd8nczfn2jfrdhn-diff-test-1.0"]}]"#;

    const OBJECT_JSON: &str = r#"{"/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-2.12":{"narHash":"sha256-AAAA","narSize":4096,"references":["/nix/store/jrziagdf77x2m6bpsmd8nczfn2jfrdhn-diff-test-1.0"],"storeDir":"/nix/store"},"/nix/store/jrziagdf77x2m6bpsmd8nczfn2jfrdhn-diff-test-1.0":{"narHash":"sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=","narSize":120,"references":[],"storeDir":"/nix/store"}}"#;

    fn expected_entries() -> Vec<ClosureEntry> {
        vec![
            ClosureEntry {
                path: StorePath::new("/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-2.12")
                    .unwrap(),
                nar_size: 4096,
            },
            ClosureEntry {
                path: StorePath::new("/nix/store/jrziagdf77x2m6bpsmd8nczfn2jfrdhn-diff-test-1.0")
                    .unwrap(),
                nar_size: 120,
            },
        ]
    }

    #[test]
    fn parses_the_array_of_nix_2_8() {
        assert_eq!(
            parse_path_info(ARRAY_JSON.as_bytes()).unwrap(),
            expected_entries()
        );
    }

    #[test]
    fn parses_the_object_keyed_by_path() {
        assert_eq!(
            parse_path_info(OBJECT_JSON.as_bytes()).unwrap(),
            expected_entries()
        );
    }

    #[test]
    fn parses_json_format_2() {
        let json = r#"{"version":2,"storeDir":"/nix/store","info":{"67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-2.12":{"narSize":4096,"references":[]},"jrziagdf77x2m6bpsmd8nczfn2jfrdhn-diff-test-1.0":{"narSize":120,"references":[]}}}"#;
        assert_eq!(
            parse_path_info(json.as_bytes()).unwrap(),
            expected_entries()
        );
    }

    #[test]
    fn rejects_invalid_paths_and_odd_json() {
        let null = r#"{"/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-2.12":null}"#;
        assert!(matches!(
            parse_path_info(null.as_bytes()),
            Err(DiffError::NotValid(p)) if p.ends_with("hello-2.12")
        ));
        let invalid =
            r#"[{"path":"/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-hello-2.12","valid":false}]"#;
        assert!(matches!(
            parse_path_info(invalid.as_bytes()),
            Err(DiffError::NotValid(_))
        ));
        assert!(matches!(
            parse_path_info(b"[{\"narSize\":1}]"),
            Err(DiffError::Shape(_))
        ));
        assert!(matches!(
            parse_path_info(b"{\"/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-x\":{}}"),
            Err(DiffError::Shape(_))
        ));
        assert!(matches!(
            parse_path_info(b"{\"/tmp/x\":{\"narSize\":1}}"),
            Err(DiffError::StorePath(_))
        ));
        assert!(matches!(parse_path_info(b"42"), Err(DiffError::Shape(_))));
        assert!(matches!(
            parse_path_info(b"not json"),
            Err(DiffError::Json(_))
        ));
        assert!(parse_path_info(b"[]").unwrap().is_empty());
    }

    fn before() -> Vec<ClosureEntry> {
        vec![
            entry('0', "hello-2.12", 100_000),
            entry('1', "openssl-3.0.13", 5_000_000),
            entry('2', "nano-7.2", 2_000_000),
            entry('3', "etc", 1_000),
            entry('4', "system-path", 2_000),
            entry('5', "util-linux-2.39-bin", 300_000),
            entry('6', "util-linux-2.39-lib", 400_000),
            entry('7', "glibc-2.39-52", 30_000_000),
        ]
    }

    fn after() -> Vec<ClosureEntry> {
        vec![
            entry('a', "hello-2.12.1", 110_000),
            entry('b', "openssl-3.0.14", 5_100_000),
            entry('c', "ripgrep-14.1.0", 4_000_000),
            entry('d', "etc", 1_100),
            entry('f', "system-path", 2_100),
            entry('5', "util-linux-2.39-bin", 300_000),
            entry('6', "util-linux-2.39-lib", 400_000),
            entry('7', "glibc-2.39-52", 30_000_000),
        ]
    }

    #[test]
    fn diff_sorts_packages_into_kinds() {
        let d = diff(&before(), &after());
        assert_eq!(
            d.changed,
            [
                Change {
                    name: "hello".into(),
                    from: vec!["2.12".into()],
                    to: vec!["2.12.1".into()],
                },
                Change {
                    name: "openssl".into(),
                    from: vec!["3.0.13".into()],
                    to: vec!["3.0.14".into()],
                },
            ]
        );
        assert_eq!(
            d.added,
            [Package {
                name: "ripgrep".into(),
                versions: vec!["14.1.0".into()],
            }]
        );
        assert_eq!(
            d.removed,
            [Package {
                name: "nano".into(),
                versions: vec!["7.2".into()],
            }]
        );
        assert_eq!(d.rebuilt, ["etc", "system-path"]);
        assert_eq!(d.size_before, 37_803_000);
        assert_eq!(d.size_after, 39_913_200);
        assert_eq!((d.paths_before, d.paths_after), (8, 8));
        assert_eq!((d.paths_added, d.paths_removed), (5, 5));
        assert!(d.has_package_changes());
    }

    #[test]
    fn diff_of_a_closure_with_itself_is_empty() {
        let d = diff(&before(), &before());
        assert!(!d.has_package_changes());
        assert!(d.rebuilt.is_empty());
        assert_eq!((d.paths_added, d.paths_removed), (0, 0));
        assert_eq!(d.size_before, d.size_after);
    }

    #[test]
    fn versions_of_several_outputs_are_one_sorted_set() {
        let old = [
            entry('0', "util-linux-2.9-bin", 1),
            entry('1', "util-linux-2.9-lib", 1),
        ];
        let new = [
            entry('2', "util-linux-2.10-lib", 1),
            entry('3', "util-linux-2.10-bin", 1),
            entry('4', "util-linux-2.9-bin", 1),
        ];
        let d = diff(&old, &new);
        assert_eq!(
            d.changed,
            [Change {
                name: "util-linux".into(),
                from: vec!["2.9-bin".into(), "2.9-lib".into()],
                to: vec!["2.9-bin".into(), "2.10-bin".into(), "2.10-lib".into()],
            }]
        );
    }

    #[test]
    fn display_for_humans() {
        let d = diff(&before(), &after());
        assert_eq!(
            d.to_string(),
            "changed:\n\
             \x20 hello    2.12 → 2.12.1\n\
             \x20 openssl  3.0.13 → 3.0.14\n\
             added:\n\
             \x20 ripgrep  14.1.0\n\
             removed:\n\
             \x20 nano     7.2\n\
             rebuilt: etc, system-path\n\
             closure: 8 → 8 paths (+5, -5), 36.1 MiB → 38.1 MiB (+2.01 MiB)"
        );
    }

    #[test]
    fn display_without_package_changes() {
        let d = diff(&before(), &before());
        assert_eq!(
            d.to_string(),
            "no package changes\nclosure: 8 → 8 paths (+0, -0), 36.1 MiB → 36.1 MiB (0 B)"
        );
        let rebuilt = diff(&[entry('0', "etc", 2048)], &[entry('1', "etc", 1024)]);
        assert_eq!(
            rebuilt.to_string(),
            "no package changes\nrebuilt: etc\nclosure: 1 → 1 paths (+1, -1), 2.00 KiB → 1.00 KiB (-1.00 KiB)"
        );
    }

    #[test]
    fn display_of_packages_without_versions() {
        let d = diff(
            &[entry('0', "foo", 1), entry('1', "bar", 1)],
            &[entry('2', "foo-1.0", 1), entry('3', "baz", 1)],
        );
        assert_eq!(
            d.to_string(),
            "changed:\n\
             \x20 foo  (none) → 1.0\n\
             added:\n\
             \x20 baz\n\
             removed:\n\
             \x20 bar\n\
             closure: 2 → 2 paths (+2, -2), 2 B → 2 B (0 B)"
        );
    }

    #[test]
    fn human_sizes() {
        for (bytes, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (8_808_038, "8.40 MiB"),
            (1_299_227_607, "1.21 GiB"),
            (52_428_800, "50.0 MiB"),
            (524_288_000, "500 MiB"),
            (-1536, "-1.50 KiB"),
            (-5, "-5 B"),
        ] {
            assert_eq!(human_size(bytes), want, "{bytes}");
        }
        assert_eq!(human_delta(8_808_038), "+8.40 MiB");
        assert_eq!(human_delta(-8_808_038), "-8.40 MiB");
        assert_eq!(human_delta(0), "0 B");
        assert_eq!(human_size(u64::MAX.into()), "16.0 EiB");
    }

    /// Builds a store path with no nixpkgs: `builtins.derivation` and /bin/sh.
    async fn build(expr: &str) -> StorePath {
        let cmd =
            Cmd::new("nix").args(["build", "--impure", "--no-link", "--json", "--expr", expr]);
        let out = process::output(&cmd, Via::Local, &JobLog::new())
            .await
            .unwrap()
            .check()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        StorePath::new(json[0]["outputs"]["out"].as_str().unwrap()).unwrap()
    }

    async fn closure(path: &StorePath) -> Vec<ClosureEntry> {
        let out = process::output(&path_info_cmd(path), Via::Local, &JobLog::new())
            .await
            .unwrap()
            .check()
            .unwrap();
        parse_path_info(&out.stdout).unwrap()
    }

    #[tokio::test]
    async fn real_nix_path_info() {
        let dep_expr = r#"builtins.derivation { name = "diff-test-1.0"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "echo hi > $out" ]; }"#;
        let dep = build(dep_expr).await;
        // A second path that refers to the first, so the closure has two.
        let top = build(&format!(
            r#"builtins.derivation {{ name = "diff-test-top-2.0"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" "echo ${{{dep_expr}}} > $out" ]; }}"#
        ))
        .await;

        let old = closure(&dep).await;
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].path, dep);
        assert!(old[0].nar_size > 0);

        let new = closure(&top).await;
        let mut paths: Vec<&StorePath> = new.iter().map(|e| &e.path).collect();
        paths.sort();
        let mut want = vec![&dep, &top];
        want.sort();
        assert_eq!(paths, want);

        let d = diff(&old, &new);
        assert_eq!(
            d.added,
            [Package {
                name: "diff-test-top".into(),
                versions: vec!["2.0".into()],
            }]
        );
        assert!(d.changed.is_empty() && d.removed.is_empty() && d.rebuilt.is_empty());
        assert_eq!((d.paths_added, d.paths_removed), (1, 0));
        assert_eq!(d.size_after, new.iter().map(|e| e.nar_size).sum::<u64>());
    }
}
