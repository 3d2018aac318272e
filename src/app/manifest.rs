//! The app manifest: what the agent needs to deploy a service — its
//! directory, unit, repository, health check, commands and databases. The
//! NixOS module writes it to `/etc/berth/services/<service>.json`; flags of
//! `berth app deploy` override it. The schema is documented in docs/app.md.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::character;
use crate::stage::Stage;

/// In the health URL: the port of the instance checked.
pub const PORT_PLACEHOLDER: &str = "{port}";
/// In the health URL: the number of the instance checked.
pub const INSTANCE_PLACEHOLDER: &str = "{instance}";

/// Where the NixOS module writes manifests.
pub const MANIFEST_DIR: &str = "/etc/berth/services";

/// The manifest version this berth reads.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: u32,
    pub service: String,
    /// The service's directory: `repo.git`, `releases/`, `current`,
    /// `data/`, `snapshots/`.
    pub dir: PathBuf,
    /// The systemd unit that runs `current`: `<name>.service`, or with
    /// instances the template `<name>@.service`, run as `<name>@1.service`
    /// … `<name>@N.service`.
    pub unit: String,
    /// How many instances of the template a deploy runs (1 for a plain
    /// unit).
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// The most instances `berth app scale` may run [default: `instances`].
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// The first instance's port (instance `i` listens on `port + i - 1`):
    /// what `{port}` in the health URL stands for.
    #[serde(default)]
    pub port: Option<u16>,
    /// Where the code is fetched from (any URL git fetches).
    pub repository: Option<String>,
    /// Revisions must be reachable from this branch (unless forced).
    #[serde(default = "default_branch")]
    pub branch: String,
    /// The repository's files that make up the service (gitignore-like
    /// globs, see src/app/changes.rs); empty: all of them.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Files whose changes alone are not worth a notification: docs and
    /// tests.
    #[serde(default = "super::changes::default_quiet")]
    pub quiet_paths: Vec<String>,
    pub health: Health,
    #[serde(default)]
    pub commands: Commands,
    #[serde(default)]
    pub data: Data,
    /// Releases kept, newest first; the current and the previous one are
    /// kept whatever this says.
    #[serde(default = "default_keep")]
    pub keep_releases: usize,
    /// Snapshots kept.
    #[serde(default = "default_keep")]
    pub keep_snapshots: usize,
    /// Extra environment for the install, build and migrate commands.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// The stage the service belongs to (`production`, `staging`):
    /// `berth app deploy --stage` refuses to deploy it for another one.
    #[serde(default)]
    pub stage: Option<Stage>,
    /// Whether `berth app deploy --skip-snapshot` may run in CI without
    /// `--allow-skip-snapshot-in-ci`.
    #[serde(default)]
    pub allow_skip_snapshot: bool,
    /// Whether systemd holds the service's listening socket
    /// (`<name>.socket`): connections wait in its queue while a deploy has
    /// the service stopped, and the unit's start waits while the agent
    /// holds it ([`Layout::hold`]), so nothing writes during a migration.
    #[serde(default)]
    pub socket_activation: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Checked over loopback, e.g. `http://127.0.0.1:3000/health`.
    pub url: String,
    /// The status a healthy app answers.
    #[serde(default = "default_status")]
    pub status: u16,
    /// Seconds the app has to become healthy after it starts.
    #[serde(default = "default_health_timeout")]
    pub timeout: u64,
    /// Seconds it must stay healthy (no restart, still answering) after it
    /// first answers.
    #[serde(default = "default_settle")]
    pub settle: u64,
    /// Whether the answer must carry the deployed revision (its first 12
    /// characters, anywhere in the body).
    #[serde(default)]
    pub expect_revision: bool,
}

/// Shell commands run as the service's user (`sh -c`) in the new release.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commands {
    /// Installs dependencies, with a frozen lockfile.
    pub install: Option<String>,
    pub build: Option<String>,
    /// Runs with the service stopped, after the snapshot.
    pub migrate: Option<String>,
}

/// What the service keeps in `data/`: snapshot before each deploy and
/// backed up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// SQLite databases, relative to the service directory or absolute
    /// inside it.
    #[serde(default)]
    pub sqlite: Vec<PathBuf>,
    /// PostgreSQL databases, by name (backed up by the module's timer).
    #[serde(default)]
    pub postgres: Vec<String>,
    /// Files and directories, as `sqlite`.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Globs the backup leaves out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// The most instances a service may run (`berth.services.<name>.instances`
/// and `maxInstances` have the same bound).
pub const MAX_INSTANCES: u32 = 32;

/// A count of instances as `berth app scale` takes it: a whole number
/// from 1 to [`MAX_INSTANCES`].
pub fn parse_instances(text: &str) -> Result<u32, String> {
    let rule = format!("a count of instances is a whole number from 1 to {MAX_INSTANCES}");
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_INSTANCES).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range: {rule}")),
        Err(_) => Err(format!(
            "`{}` is not a number: {rule}",
            crate::error::printable(text)
        )),
    }
}

fn default_instances() -> u32 {
    1
}
fn default_branch() -> String {
    "main".into()
}
fn default_keep() -> usize {
    5
}
fn default_status() -> u16 {
    200
}
fn default_health_timeout() -> u64 {
    60
}
fn default_settle() -> u64 {
    3
}

/// Flags that override the manifest (and stand in for it on a host without
/// the module).
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Manifest overrides")]
pub struct Overrides {
    /// The git repository to fetch from
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// The health check URL, over loopback on the host
    #[arg(long, value_name = "URL")]
    pub health_url: Option<String>,
    /// An SQLite database to snapshot (repeat for several; replaces the manifest's list)
    #[arg(long = "db", value_name = "PATH")]
    pub dbs: Vec<PathBuf>,
    /// The install command (e.g. `bun install --frozen-lockfile`)
    #[arg(long, value_name = "CMD")]
    pub install: Option<String>,
    /// The build command
    #[arg(long, value_name = "CMD")]
    pub build: Option<String>,
    /// The migrate command, run with the service stopped
    #[arg(long, value_name = "CMD")]
    pub migrate: Option<String>,
    /// The systemd unit
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
}

impl Overrides {
    /// The same flags, for the agent's command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut flag = |name: &str, value: &Option<String>| {
            if let Some(v) = value {
                args.extend([format!("--{name}"), v.clone()]);
            }
        };
        flag("repo", &self.repo);
        flag("health-url", &self.health_url);
        flag("install", &self.install);
        flag("build", &self.build);
        flag("migrate", &self.migrate);
        flag("unit", &self.unit);
        for db in &self.dbs {
            args.extend(["--db".into(), db.display().to_string()]);
        }
        args
    }

    fn is_empty(&self) -> bool {
        self.to_args().is_empty()
    }
}

/// A manifest that cannot be used. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("unknown service `{service}`: there is no {}", .path.display())]
    Unknown { service: String, path: PathBuf },
    #[error("could not read the manifest {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the manifest {} is not valid", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the manifest {} has version {found}; this berth reads version {VERSION}", .path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("service `{}`: {problem}", crate::error::printable(.service))]
    Invalid { service: String, problem: String },
}

impl crate::error::Diagnose for ManifestError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: true,
        }
    }
}

impl ManifestError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ManifestError::Unknown { service, .. } => Some(format!(
                "enable `berth.services.{service}` in the host's NixOS configuration, or give \
                 --repo and --health-url to deploy without a manifest"
            )),
            ManifestError::Version { .. } => Some(
                "use the berth the host's NixOS configuration installs (`--agent berth`)".into(),
            ),
            _ => None,
        }
    }
}

/// What a service name may hold, for error messages.
pub const SERVICE_NAME_RULE: &str = "a service name is lowercase letters, digits, `-` and `_`, \
     starts with a letter or digit, and is at most 64 characters long";

/// The name of a service, `berth.services.<name>`: also its user, its unit
/// (`<name>.service`), its directory (`/var/lib/<name>`) and its manifest
/// (`<name>.json`). The rule keeps it one plain path component (no `/`,
/// no `..`, no leading `.` or `-`), a plain shell word and a user name ssh
/// takes as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

/// A service name that breaks [`SERVICE_NAME_RULE`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{}` is not a valid service name: {why} ({SERVICE_NAME_RULE})", crate::error::printable(.text))]
pub struct InvalidServiceName {
    pub text: String,
    pub why: String,
}

impl ServiceName {
    pub fn new(text: impl Into<String>) -> Result<Self, InvalidServiceName> {
        let text = text.into();
        let why = match text.chars().next() {
            None => Some("it is empty".to_owned()),
            Some(first) if !(first.is_ascii_lowercase() || first.is_ascii_digit()) => {
                Some(format!("it starts with {}", character(first)))
            }
            _ => text
                .chars()
                .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
                .map(|bad| format!("it holds {}", character(bad)))
                .or_else(|| {
                    (text.len() > 64).then(|| format!("it is {} characters long", text.len()))
                }),
        };
        match why {
            None => Ok(ServiceName(text)),
            Some(why) => Err(InvalidServiceName { text, why }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ServiceName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for ServiceName {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ServiceName {
    type Err = InvalidServiceName;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ServiceName::new(text)
    }
}

impl Manifest {
    /// Reads `service`'s manifest from `dir` and applies `overrides`. With
    /// no manifest, the overrides must name at least the repository and the
    /// health URL; the directory is then `/var/lib/<service>` and the unit
    /// `<service>.service`.
    pub fn load(
        dir: &Path,
        service: &str,
        overrides: &Overrides,
    ) -> Result<Manifest, ManifestError> {
        let invalid = |problem: String| ManifestError::Invalid {
            service: service.to_owned(),
            problem,
        };
        if let Err(e) = ServiceName::new(service) {
            return Err(invalid(e.why + "; " + SERVICE_NAME_RULE));
        }
        let path = dir.join(format!("{service}.json"));
        // Without the module's manifest, the one the last deploy used
        // (given by flags) lets status, rollback and locks work too.
        let saved = Manifest::bare(service).layout().saved_manifest();
        let mut manifest = match read(&path)? {
            Some(m) => m,
            None => match read(&saved)? {
                Some(m) => m,
                None if overrides.repo.is_some() && overrides.health_url.is_some() => {
                    Manifest::bare(service)
                }
                None => {
                    return Err(ManifestError::Unknown {
                        service: service.to_owned(),
                        path,
                    })
                }
            },
        };
        if manifest.service != service {
            return Err(invalid(format!(
                "{} is the manifest of `{}`",
                path.display(),
                manifest.service
            )));
        }
        if !overrides.is_empty() {
            manifest.apply(overrides);
        }
        manifest.validate().map_err(invalid)?;
        Ok(manifest)
    }

    /// The defaults of a service without a manifest.
    fn bare(service: &str) -> Manifest {
        Manifest {
            version: VERSION,
            service: service.to_owned(),
            dir: PathBuf::from(format!("/var/lib/{service}")),
            unit: format!("{service}.service"),
            instances: default_instances(),
            max_instances: None,
            port: None,
            repository: None,
            branch: default_branch(),
            paths: Vec::new(),
            quiet_paths: super::changes::default_quiet(),
            health: Health {
                url: String::new(),
                status: default_status(),
                timeout: default_health_timeout(),
                settle: default_settle(),
                expect_revision: false,
            },
            commands: Commands::default(),
            data: Data::default(),
            keep_releases: default_keep(),
            keep_snapshots: default_keep(),
            environment: BTreeMap::new(),
            stage: None,
            allow_skip_snapshot: false,
            socket_activation: false,
        }
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(repo) = &o.repo {
            self.repository = Some(repo.clone());
        }
        if let Some(url) = &o.health_url {
            self.health.url = url.clone();
        }
        if !o.dbs.is_empty() {
            self.data.sqlite = o.dbs.clone();
        }
        for (slot, value) in [
            (&mut self.commands.install, &o.install),
            (&mut self.commands.build, &o.build),
            (&mut self.commands.migrate, &o.migrate),
        ] {
            if value.is_some() {
                slot.clone_from(value);
            }
        }
        if let Some(unit) = &o.unit {
            self.unit = unit.clone();
        }
    }

    /// Checks what the deploy relies on, and makes data paths absolute.
    fn validate(&mut self) -> Result<(), String> {
        if !self.dir.is_absolute() || has_dot_dot(&self.dir) || self.dir == Path::new("/") {
            return Err(format!(
                "its directory {} must be an absolute path below /, without `..`",
                self.dir.display()
            ));
        }
        if !self.unit.contains('.') {
            self.unit.push_str(".service");
        }
        if self.unit.starts_with('-')
            || self
                .unit
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(format!("`{}` is not a systemd unit name", self.unit));
        }
        if let Some(repo) = &self.repository {
            if repo.is_empty() || repo.starts_with('-') || repo.contains(char::is_control) {
                return Err(format!(
                    "its repository `{}` is not a URL git can fetch: it must not be empty, \
                     start with `-` (git would read an option) or hold control characters",
                    crate::error::printable(repo)
                ));
            }
        }
        if !(self.health.url.starts_with("http://") || self.health.url.starts_with("https://")) {
            return Err(format!(
                "the health URL `{}` must be an http:// or https:// URL",
                self.health.url
            ));
        }
        self.validate_instances()?;
        for patterns in [&self.paths, &self.quiet_paths] {
            super::changes::Filter::new(patterns)?;
        }
        super::release::check(&super::release::Wanted::Ref(self.branch.clone()))
            .map_err(|e| format!("its branch: {e}"))?;
        if let Some(key) = self.environment.keys().find(|k| !is_variable_name(k)) {
            return Err(format!(
                "its environment names the variable `{}`: a variable name is letters, digits \
                 and `_`, and does not start with a digit",
                crate::error::printable(key)
            ));
        }
        let dir = self.dir.clone();
        for path in self
            .data
            .sqlite
            .iter_mut()
            .chain(self.data.files.iter_mut())
        {
            *path = inside(&dir, path)?;
        }
        Ok(())
    }

    /// Checks `instances`, `maxInstances`, the unit they need and the
    /// health URL each instance is checked on; fills in `maxInstances`.
    fn validate_instances(&mut self) -> Result<(), String> {
        let bound = |what: &str, n: u32| {
            if (1..=MAX_INSTANCES).contains(&n) {
                Ok(())
            } else {
                Err(format!(
                    "its {what} is {n}: a service runs 1 to {MAX_INSTANCES} instances"
                ))
            }
        };
        bound("instances", self.instances)?;
        let max = self.max_instances.unwrap_or(self.instances);
        bound("maxInstances", max)?;
        if max < self.instances {
            return Err(format!(
                "its maxInstances ({max}) is below its instances ({})",
                self.instances
            ));
        }
        self.max_instances = Some(max);
        if self.socket_activation && (max > 1 || self.is_template()) {
            return Err(format!(
                "it asks for socket activation and runs up to {max} instances of `{}`: \
                 socket activation is for one plain unit (`{}.service`)",
                self.unit, self.service
            ));
        }
        if max > 1 && !self.is_template() {
            return Err(format!(
                "it runs up to {max} instances, but its unit `{}` is not a template unit \
                 (`{}@.service`)",
                self.unit, self.service
            ));
        }
        let url = &self.health.url;
        if url.contains(PORT_PLACEHOLDER) && self.port.is_none() {
            return Err(format!(
                "its health URL `{url}` holds {PORT_PLACEHOLDER}, but it has no port"
            ));
        }
        if max > 1 && !url.contains(PORT_PLACEHOLDER) && !url.contains(INSTANCE_PLACEHOLDER) {
            return Err(format!(
                "its health URL `{url}` would check all its instances at one address: put \
                 {PORT_PLACEHOLDER} (each instance's port) or {INSTANCE_PLACEHOLDER} (its number) \
                 in it"
            ));
        }
        if let Some(port) = self.port {
            if u32::from(port) + max - 1 > u32::from(u16::MAX) {
                return Err(format!(
                    "its {max} instances would need ports {port} to {}, past 65535",
                    u32::from(port) + max - 1
                ));
            }
        }
        Ok(())
    }

    /// The most instances `berth app scale` may run.
    pub fn max_instances(&self) -> u32 {
        self.max_instances.unwrap_or(self.instances)
    }

    /// Whether the unit is a template (`<name>@.service`), run as
    /// instances.
    pub fn is_template(&self) -> bool {
        self.unit.ends_with("@.service")
    }

    /// The unit of instance `i` (from 1): `<name>@<i>.service`, or the plain
    /// unit.
    pub fn instance_unit(&self, i: u32) -> String {
        match self.unit.strip_suffix("@.service") {
            Some(prefix) => format!("{prefix}@{i}.service"),
            None => self.unit.clone(),
        }
    }

    /// The units of instances `1..=count` (the plain unit, once, without a
    /// template).
    pub fn instance_units(&self, count: u32) -> Vec<String> {
        if self.is_template() {
            (1..=count).map(|i| self.instance_unit(i)).collect()
        } else {
            vec![self.unit.clone()]
        }
    }

    /// The health URL of instance `i`: `{port}` is its port, `{instance}`
    /// its number.
    pub fn health_url(&self, i: u32) -> String {
        let mut url = self
            .health
            .url
            .replace(INSTANCE_PLACEHOLDER, &i.to_string());
        if let Some(port) = self.port {
            let port = u32::from(port) + i.saturating_sub(1);
            url = url.replace(PORT_PLACEHOLDER, &port.to_string());
        }
        url
    }

    pub fn layout(&self) -> Layout {
        Layout {
            dir: self.dir.clone(),
        }
    }
}

/// Reads a manifest file; `None` when there is none.
fn read(path: &Path) -> Result<Option<Manifest>, ManifestError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ManifestError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if m.version != VERSION {
        return Err(ManifestError::Version {
            path: path.to_owned(),
            found: m.version,
        });
    }
    Ok(Some(m))
}

/// Whether `name` can name an environment variable (as the shell's `NAME`).
fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn has_dot_dot(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

/// `path` made absolute against `dir`; an error when it leaves `dir`.
fn inside(dir: &Path, path: &Path) -> Result<PathBuf, String> {
    let full = dir.join(path);
    if has_dot_dot(path) || !full.starts_with(dir) || full == dir {
        return Err(format!(
            "the data path {} is outside the service's directory {}",
            path.display(),
            dir.display()
        ));
    }
    Ok(full)
}

/// Where a service's things are, under its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo.git")
    }
    pub fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }
    pub fn release(&self, revision: &str) -> PathBuf {
        self.releases().join(revision)
    }
    /// The symlink the unit runs from.
    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.dir.join("snapshots")
    }
    pub fn snapshot(&self, id: &str) -> PathBuf {
        self.snapshots().join(id)
    }
    /// berth's records of this service: its state database.
    pub fn state(&self) -> PathBuf {
        self.dir.join(".berth")
    }
    /// The manifest the last deploy used.
    pub fn saved_manifest(&self) -> PathBuf {
        self.state().join("manifest.json")
    }
    /// How many instances `berth app scale` left running, until the next
    /// deploy or boot.
    pub fn scale(&self) -> PathBuf {
        self.state().join("scale.json")
    }
    /// Present while a deploy, rollback or restore has the service stopped
    /// on purpose: the unit of a socket-activated service waits for it to
    /// go before starting (its `ExecStartPre`), so a connection arriving
    /// then does not start the app on data being migrated or restored.
    pub fn hold(&self) -> PathBuf {
        self.state().join("hold")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, service: &str, json: serde_json::Value) {
        std::fs::write(dir.join(format!("{service}.json")), json.to_string()).unwrap();
    }

    impl Manifest {
        /// Writes `json` as `notes`' manifest in `dir` and loads it.
        fn load_json(dir: &Path, json: serde_json::Value) -> Manifest {
            write(dir, "notes", json);
            Manifest::load(dir, "notes", &Overrides::default()).unwrap()
        }
    }

    fn minimal(service: &str) -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "service": service,
            "dir": format!("/var/lib/{service}"),
            "unit": service,
            "repository": "https://example.com/notes.git",
            "health": { "url": "http://127.0.0.1:3000/health" },
            "data": { "sqlite": ["data/app.db", "/var/lib/notes/data/jobs.db"] },
        })
    }

    #[test]
    fn reads_a_manifest_with_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "notes", minimal("notes"));
        let m = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
        assert_eq!(m.unit, "notes.service");
        assert_eq!(m.branch, "main");
        assert!(m.paths.is_empty());
        assert_eq!(m.quiet_paths, crate::app::changes::default_quiet());
        assert_eq!((m.health.status, m.health.timeout), (200, 60));
        assert_eq!(
            m.data.sqlite,
            [
                PathBuf::from("/var/lib/notes/data/app.db"),
                PathBuf::from("/var/lib/notes/data/jobs.db")
            ]
        );
        assert_eq!(m.keep_releases, 5);
        assert_eq!(m.layout().current(), Path::new("/var/lib/notes/current"));
        assert_eq!(m.stage, None);
        assert!(!m.allow_skip_snapshot);
    }

    #[test]
    fn reads_the_stage_and_refuses_a_bad_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut json = minimal("notes");
        json["stage"] = "staging".into();
        write(tmp.path(), "notes", json.clone());
        let m = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
        assert_eq!(m.stage, Some(Stage::new("staging").unwrap()));
        json["stage"] = "Staging".into();
        write(tmp.path(), "notes", json);
        let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert!(chain.contains("`Staging` is not a valid stage"), "{chain}");
    }

    #[test]
    fn flags_override_the_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "notes", minimal("notes"));
        let o = Overrides {
            health_url: Some("http://127.0.0.1:9/ok".into()),
            dbs: vec!["data/other.db".into()],
            migrate: Some("./migrate".into()),
            ..Overrides::default()
        };
        let m = Manifest::load(tmp.path(), "notes", &o).unwrap();
        assert_eq!(m.health.url, "http://127.0.0.1:9/ok");
        assert_eq!(
            m.data.sqlite,
            [PathBuf::from("/var/lib/notes/data/other.db")]
        );
        assert_eq!(m.commands.migrate.as_deref(), Some("./migrate"));
        assert_eq!(
            o.to_args(),
            [
                "--health-url",
                "http://127.0.0.1:9/ok",
                "--migrate",
                "./migrate",
                "--db",
                "data/other.db"
            ]
        );
    }

    #[test]
    fn an_unknown_service_says_how_to_declare_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Manifest::load(tmp.path(), "ghost", &Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown service `ghost`: there is no "),
            "{err}"
        );
        assert!(err.hint().unwrap().contains("berth.services.ghost"));
        // Flags can stand in for the manifest.
        let o = Overrides {
            repo: Some("/srv/ghost.git".into()),
            health_url: Some("http://127.0.0.1:1/".into()),
            ..Overrides::default()
        };
        let m = Manifest::load(tmp.path(), "ghost", &o).unwrap();
        assert_eq!(m.dir, Path::new("/var/lib/ghost"));
    }

    #[test]
    fn refuses_paths_outside_the_service_and_bad_names() {
        let tmp = tempfile::tempdir().unwrap();
        for (db, ok) in [
            ("data/app.db", true),
            ("../other/app.db", false),
            ("/etc/shadow", false),
            ("/var/lib/notes", false),
            ("/var/lib/notesX/app.db", false),
        ] {
            let mut json = minimal("notes");
            json["data"]["sqlite"] = serde_json::json!([db]);
            write(tmp.path(), "notes", json);
            let result = Manifest::load(tmp.path(), "notes", &Overrides::default());
            assert_eq!(result.is_ok(), ok, "{db}: {result:?}");
            if let Err(err) = result {
                assert!(
                    err.to_string().contains("outside the service's directory"),
                    "{err}"
                );
            }
        }
        assert!(Manifest::load(tmp.path(), "../etc", &Overrides::default()).is_err());
        let mut json = minimal("notes");
        json["unit"] = "a b".into();
        write(tmp.path(), "notes", json);
        assert!(Manifest::load(tmp.path(), "notes", &Overrides::default()).is_err());
        let mut json = minimal("notes");
        json["quietPaths"] = serde_json::json!(["docs/", "tests/[unit"]);
        write(tmp.path(), "notes", json);
        let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`tests/[unit`"), "{err}");
    }

    /// Names that try to be a shell, a path or an option: each refused,
    /// naming the text (control characters escaped) and the rule.
    #[test]
    fn hostile_service_names_are_refused_with_the_rule() {
        let long = "a".repeat(65);
        let cases = [
            ("", "it is empty"),
            ("'", "it starts with '\\''"),
            ("a'b", "it holds '\\''"),
            ("a\"b", "it holds '\"'"),
            ("$(touch /tmp/x)", "it starts with '$'"),
            ("a$(id)", "it holds '$'"),
            ("a`id`", "it holds '`'"),
            ("a\nb", "it holds '\\n'"),
            ("..", "it starts with '.'"),
            ("a/../b", "it holds '/'"),
            ("/etc", "it starts with '/'"),
            ("-oProxyCommand=x", "it starts with '-'"),
            ("Notes", "it starts with 'N'"),
            ("nоtes", "it holds 'о' (U+043E)"), // a Cyrillic о
            (long.as_str(), "it is 65 characters long"),
        ];
        for (text, why) in cases {
            let err = ServiceName::new(text).unwrap_err();
            assert_eq!(err.why, why, "{text:?}");
            let shown = crate::error::printable(text);
            assert_eq!(
                err.to_string(),
                format!("`{shown}` is not a valid service name: {why} ({SERVICE_NAME_RULE})")
            );
            let tmp = tempfile::tempdir().unwrap();
            let err = Manifest::load(tmp.path(), text, &Overrides::default()).unwrap_err();
            assert!(matches!(err, ManifestError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains(why), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
        for good in ["notes", "0x", "a-b_c", &"a".repeat(64)] {
            assert_eq!(ServiceName::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn refuses_a_bad_branch_or_environment() {
        let tmp = tempfile::tempdir().unwrap();
        for (field, value, says) in [
            (
                "branch",
                serde_json::json!("-x"),
                "its branch: `-x` is not a branch or tag name",
            ),
            (
                "environment",
                serde_json::json!({"A=B": "c"}),
                "the variable `A=B`",
            ),
            (
                "environment",
                serde_json::json!({"": "c"}),
                "the variable ``",
            ),
            (
                "environment",
                serde_json::json!({"1X": "c"}),
                "the variable `1X`",
            ),
            (
                "repository",
                serde_json::json!("--upload-pack=touch /tmp/x"),
                "its repository `--upload-pack=touch /tmp/x` is not a URL git can fetch",
            ),
            (
                "repository",
                serde_json::json!("a\nb"),
                "`a\\nb` is not a URL",
            ),
        ] {
            let mut json = minimal("notes");
            json[field] = value;
            write(tmp.path(), "notes", json);
            let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        let mut json = minimal("notes");
        json["environment"] = serde_json::json!({"NODE_ENV": "production", "_X1": ""});
        write(tmp.path(), "notes", json);
        Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
    }

    /// A path as a manifest might hold it: relative or absolute, with
    /// `.`, `..`, doubled and trailing slashes.
    fn data_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let part = prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            Just("notes".to_owned()),
            Just("var".to_owned()),
            Just("lib".to_owned()),
            "[a-z.]{1,4}",
        ];
        (any::<bool>(), proptest::collection::vec(part, 0..6)).prop_map(|(absolute, parts)| {
            format!("{}{}", if absolute { "/" } else { "" }, parts.join("/"))
        })
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(256))]

        /// An accepted service name is one plain path component, a plain
        /// shell word and an SSH user, and reads back as itself.
        #[test]
        fn prop_service_names_are_safe_everywhere_they_go(text in crate::testing::prop::text()) {
            match ServiceName::new(text.as_str()) {
                Ok(name) => {
                    let mut parts = Path::new(name.as_str()).components();
                    proptest::prop_assert!(matches!(parts.next(), Some(Component::Normal(_))));
                    proptest::prop_assert!(parts.next().is_none());
                    proptest::prop_assert!(!name.starts_with(['-', '.']));
                    proptest::prop_assert_eq!(crate::process::quote(name.as_ref()), std::ffi::OsStr::new(&text));
                    let destination = format!("{name}@h1");
                    proptest::prop_assert!(crate::host::Destination::parse(&destination).is_ok());
                    proptest::prop_assert_eq!(name.to_string().parse::<ServiceName>().unwrap(), name);
                }
                Err(e) => {
                    let message = e.to_string();
                    let shown = crate::error::printable(&text);
                    proptest::prop_assert!(message.contains(&shown), "{}", message);
                    proptest::prop_assert!(message.contains(SERVICE_NAME_RULE));
                    proptest::prop_assert!(!message.contains(|c: char| c.is_control()));
                }
            }
        }

        /// Whatever a manifest's data paths say, the ones accepted are
        /// inside the service's directory, and never the directory itself.
        #[test]
        fn prop_data_paths_stay_inside_the_service(paths in proptest::collection::vec(data_path(), 1..4)) {
            let mut json = minimal("notes");
            json["data"] = serde_json::json!({ "sqlite": paths.clone(), "files": paths });
            json["quietPaths"] = serde_json::json!([]);
            let mut m: Manifest = serde_json::from_value(json).unwrap();
            if m.validate().is_ok() {
                let dir = Path::new("/var/lib/notes");
                for path in m.data.sqlite.iter().chain(&m.data.files) {
                    proptest::prop_assert!(path.starts_with(dir) && path != dir, "{:?}", path);
                    proptest::prop_assert!(!has_dot_dot(path), "{:?}", path);
                }
            }
        }

        /// Any bytes as a manifest file: an error or a manifest, never a
        /// panic; and whatever service, unit or directory a parsable one
        /// names, an accepted one is safe to use.
        #[test]
        fn prop_any_manifest_file_is_read_or_refused(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            unit in crate::testing::prop::text(),
            dir in prop_oneof_dirs(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join("notes.json"), &bytes).unwrap();
            let _ = Manifest::load(tmp.path(), "notes", &Overrides::default());
            let mut json = minimal("notes");
            json["unit"] = unit.clone().into();
            json["dir"] = dir.into();
            json["data"] = serde_json::json!({});
            // No globs to compile: they have tests of their own.
            json["quietPaths"] = serde_json::json!([]);
            write(tmp.path(), "notes", json);
            if let Ok(m) = Manifest::load(tmp.path(), "notes", &Overrides::default()) {
                proptest::prop_assert!(m.dir.is_absolute() && !has_dot_dot(&m.dir) && m.dir != Path::new("/"));
                proptest::prop_assert!(!m.unit.starts_with('-'));
                proptest::prop_assert!(!m.unit.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()));
            }
        }
    }

    fn prop_oneof_dirs() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![data_path(), crate::testing::prop::text()]
    }

    #[test]
    fn instances_name_their_units_and_health_urls() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manifest::load_json(tmp.path(), minimal("notes"));
        assert_eq!((m.instances, m.max_instances()), (1, 1));
        assert!(!m.is_template());
        assert_eq!(m.instance_units(1), ["notes.service"]);
        assert_eq!(m.health_url(1), "http://127.0.0.1:3000/health");

        let mut json = minimal("notes");
        json["unit"] = "notes@".into();
        json["instances"] = 3.into();
        json["maxInstances"] = 4.into();
        json["port"] = 8090.into();
        json["health"]["url"] = "http://127.0.0.1:{port}/health?i={instance}".into();
        let m = Manifest::load_json(tmp.path(), json);
        assert_eq!(m.unit, "notes@.service");
        assert!(m.is_template());
        assert_eq!(m.max_instances(), 4);
        assert_eq!(
            m.instance_units(3),
            ["notes@1.service", "notes@2.service", "notes@3.service"]
        );
        assert_eq!(m.health_url(1), "http://127.0.0.1:8090/health?i=1");
        assert_eq!(m.health_url(3), "http://127.0.0.1:8092/health?i=3");
    }

    #[test]
    fn refuses_instances_it_cannot_run() {
        let tmp = tempfile::tempdir().unwrap();
        let template = |changes: serde_json::Value| {
            let mut json = minimal("notes");
            json["unit"] = "notes@.service".into();
            json["instances"] = 2.into();
            json["port"] = 3000.into();
            json["health"]["url"] = "http://127.0.0.1:{port}/health".into();
            for (k, v) in changes.as_object().unwrap() {
                json[k] = v.clone();
            }
            json
        };
        for (json, says) in [
            (
                template(serde_json::json!({ "instances": 0 })),
                "its instances is 0: a service runs 1 to 32 instances",
            ),
            (
                template(serde_json::json!({ "instances": 33 })),
                "its instances is 33",
            ),
            (
                template(serde_json::json!({ "maxInstances": 1 })),
                "its maxInstances (1) is below its instances (2)",
            ),
            (
                template(serde_json::json!({ "unit": "notes.service" })),
                "its unit `notes.service` is not a template unit (`notes@.service`)",
            ),
            (
                template(serde_json::json!({ "port": null })),
                "holds {port}, but it has no port",
            ),
            (
                template(serde_json::json!({ "port": 65535 })),
                "would need ports 65535 to 65536, past 65535",
            ),
            (
                template(
                    serde_json::json!({ "health": { "url": "http://127.0.0.1:3000/health" } }),
                ),
                "would check all its instances at one address: put {port}",
            ),
            (
                template(serde_json::json!({ "socketActivation": true })),
                "socket activation is for one plain unit (`notes.service`)",
            ),
        ] {
            write(tmp.path(), "notes", json);
            let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        // One instance of a template is fine (scaled up later).
        write(
            tmp.path(),
            "notes",
            template(serde_json::json!({ "instances": 1 })),
        );
        Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap();
    }

    #[test]
    fn a_count_of_instances_is_a_whole_number_from_1_to_32() {
        assert_eq!(parse_instances("1"), Ok(1));
        assert_eq!(parse_instances("32"), Ok(32));
        for (text, says) in [
            ("0", "0 is out of range"),
            ("33", "33 is out of range"),
            ("-1", "`-1` is not a number"),
            ("three", "`three` is not a number"),
            ("", "`` is not a number"),
            ("2\n", "`2\\n` is not a number"),
        ] {
            let err = parse_instances(text).unwrap_err();
            assert!(err.starts_with(says), "{text:?}: {err}");
            assert!(err.ends_with("a count of instances is a whole number from 1 to 32"));
        }
    }

    #[test]
    fn refuses_a_newer_manifest_and_another_services() {
        let tmp = tempfile::tempdir().unwrap();
        let mut json = minimal("notes");
        json["version"] = 2.into();
        write(tmp.path(), "notes", json);
        let err = Manifest::load(tmp.path(), "notes", &Overrides::default()).unwrap_err();
        assert!(
            matches!(err, ManifestError::Version { found: 2, .. }),
            "{err}"
        );
        write(tmp.path(), "wiki", minimal("notes"));
        assert!(Manifest::load(tmp.path(), "wiki", &Overrides::default()).is_err());
    }
}
