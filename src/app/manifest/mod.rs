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
mod tests;
