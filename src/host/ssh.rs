//! [`SshHost`]: a host reached over one multiplexed SSH connection.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use openssh::{KnownHosts, SessionBuilder};

use super::{Background, Host};
use crate::nix::{self, StorePath};
use crate::process::{
    self, Cmd, CommandError, Escalation, EscalationError, JobLog, Output, SudoMode, SudoPassword,
    SudoRefusal, Via,
};

/// How berth uses SSH, the same for its own connections and for `nix copy`.
#[derive(Clone, Debug)]
pub struct SshSettings {
    /// An ssh_config for every SSH use (`--ssh-config`).
    pub config_file: Option<PathBuf>,
    /// Trust and record the key of a host never seen before, instead of
    /// refusing it. A changed key is refused either way.
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// How a host reached as a user other than root runs what needs root
    /// (a node's `privilegeEscalationCommand`; sudo unless it says).
    pub escalation: Option<Escalation>,
    /// The sudo password, once read (`--ask-sudo-password`).
    pub sudo_password: SudoPassword,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            config_file: None,
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            escalation: Escalation::new(&["sudo".to_owned()]),
            sudo_password: SudoPassword::default(),
        }
    }
}

/// A node's `sshOptions` that berth cannot express in an ssh_config.
#[derive(Debug, thiserror::Error)]
#[error("sshOptions `{0}` is not supported: use `-o Key=Value`, `-p PORT`, `-i FILE`, `-J JUMP` or `-l USER`")]
pub struct UnsupportedSshOption(String);

impl SshSettings {
    /// These settings plus a node's `sshOptions` (ssh command-line words such
    /// as `-p 2222` or `-o Key=Value`). The options go into an ssh_config of
    /// their own, in `dir`, ahead of an `Include` of the config in use, so
    /// that berth's connections and `nix copy` see them alike.
    pub fn with_options(
        &self,
        options: &[String],
        dir: &Path,
    ) -> Result<SshSettings, UnsupportedSshOption> {
        if options.is_empty() {
            return Ok(self.clone());
        }
        let text = options_config(options, self.config_file.as_deref())?;
        let path = dir.join("ssh_config");
        std::fs::write(&path, text)
            .map_err(|e| UnsupportedSshOption(format!("(writing {}: {e})", path.display())))?;
        Ok(SshSettings {
            config_file: Some(path),
            ..self.clone()
        })
    }

    /// These settings with a node's `privilegeEscalationCommand`.
    pub fn escalating(self, command: &[String]) -> SshSettings {
        SshSettings {
            escalation: Escalation::new(command),
            ..self
        }
    }

    fn strict_host_key_checking(&self) -> &'static str {
        if self.accept_new_host_keys {
            "accept-new"
        } else {
            "yes"
        }
    }
}

/// `[user@]host`: where to connect, a name from ssh_config, DNS, Tailscale
/// MagicDNS or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    user: Option<String>,
    host: String,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "`{}` is not an SSH destination: expected `host` or `user@host`, each of letters, digits, \
     `.`, `-` and `_` (and `:` or `%` in a host's address), not starting with `-`",
    crate::error::printable(.0)
)]
pub struct InvalidDestination(String);

impl Destination {
    /// Reads `[user@]host`. Both parts are plain words: ssh splices them
    /// into its config's `%r`/`%h` (a `ProxyCommand` is a shell line), so
    /// nothing a shell reads as syntax gets through, nor an option.
    pub fn parse(text: &str) -> Result<Self, InvalidDestination> {
        let invalid = || InvalidDestination(text.to_owned());
        let (user, host) = match text.split_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, text),
        };
        let word_ok = |w: &str, extra: &str| {
            !w.is_empty()
                && !w.starts_with('-')
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c))
        };
        if !word_ok(host, ":%") || user.is_some_and(|u| !word_ok(u, "")) {
            return Err(invalid());
        }
        Ok(Destination {
            user: user.map(str::to_owned),
            host: host.to_owned(),
        })
    }
}

impl std::str::FromStr for Destination {
    type Err = InvalidDestination;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Destination::parse(s)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "{user}@{}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// The SSH connection to a host could not be made.
#[derive(Debug, thiserror::Error)]
#[error("could not connect to {destination} over SSH")]
pub struct ConnectError {
    destination: String,
    #[source]
    source: openssh::Error,
}

impl crate::error::Diagnose for ConnectError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: false,
        }
    }
}

impl ConnectError {
    /// What to do about it, from what ssh said.
    pub fn hint(&self) -> Option<String> {
        let said = format!("{:?}", self.source);
        let host = &self.destination;
        if said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || said.contains("Host key verification failed")
        {
            Some(format!(
                "the key {host} offered is not the one known_hosts has for it (or it has none): \
                 check the host, then fix known_hosts; for a host never seen before, \
                 pass --accept-new-host-keys"
            ))
        } else if said.contains("Permission denied") {
            Some(format!(
                "{host} refused berth's keys: check the user and that your key is in its authorized_keys"
            ))
        } else if said.contains("Could not resolve hostname") {
            Some(format!(
                "is `{host}` a name in your ssh_config (--ssh-config) or DNS?"
            ))
        } else {
            None
        }
    }
}

/// A host behind one multiplexed SSH connection. Every command, and
/// `nix copy`, rides that connection.
pub struct SshHost {
    destination: Destination,
    name: String,
    /// Shared with commands started in the background ([`Host::start`]),
    /// which keep the connection open while they run.
    session: std::sync::Arc<openssh::Session>,
    settings: SshSettings,
    log: JobLog,
    /// How its sudo takes commands, once the first one told (`None`: not
    /// yet known). A rule with NOPASSWD never gets the password.
    sudo: std::sync::Mutex<Option<SudoMode>>,
}

impl SshHost {
    /// Opens the host's master connection (BatchMode, host key checked
    /// against known_hosts).
    pub async fn connect(
        destination: &Destination,
        settings: &SshSettings,
    ) -> Result<SshHost, ConnectError> {
        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(if settings.accept_new_host_keys {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            })
            .connect_timeout(settings.connect_timeout)
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(std::env::temp_dir());
        if let Some(config) = &settings.config_file {
            builder.config_file(config);
        }
        if let Some(user) = &destination.user {
            builder.user(user.clone());
        }
        let session = builder
            .connect(&destination.host)
            .await
            .map_err(|source| ConnectError {
                destination: destination.to_string(),
                source,
            })?;
        tracing::debug!(host = %destination, "connected");
        Ok(SshHost {
            name: destination.to_string(),
            destination: destination.clone(),
            session: std::sync::Arc::new(session),
            settings: settings.clone(),
            log: JobLog::new(),
            sudo: std::sync::Mutex::new(None),
        })
    }

    /// The user berth logs in as, when it is not root and its commands
    /// that need root go through the escalation.
    fn escalation(&self) -> Option<(&Escalation, &str)> {
        let user = self.destination.user.as_deref()?;
        let escalation = self.settings.escalation.as_ref()?;
        (user != "root").then_some((escalation, user))
    }

    /// Whether commands that need root go through sudo (or another
    /// escalation) on this host.
    pub fn escalates(&self) -> bool {
        self.escalation().is_some()
    }

    async fn run_here(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        let via = Via::Ssh {
            session: &self.session,
            host: &self.name,
        };
        process::output(cmd, via, &self.log).await
    }

    /// `cmd` as root through the escalation. sudo is asked without a
    /// password first; where it wants one and berth has it, the command is
    /// run again with the password on stdin (sudo refused before running
    /// anything), and so is every later command on this host.
    async fn output_as_root(
        &self,
        cmd: &Cmd,
        escalation: &Escalation,
        user: &str,
    ) -> Result<Output, CommandError> {
        let password = self.settings.sudo_password.get();
        if !escalation.is_sudo() {
            return self
                .run_here(&escalation.wrap(cmd, SudoMode::NoPassword, None))
                .await;
        }
        let known = *self.sudo.lock().unwrap_or_else(|e| e.into_inner());
        let mut mode = known.unwrap_or(SudoMode::NoPassword);
        loop {
            let out = self.run_here(&escalation.wrap(cmd, mode, password)).await?;
            let refusal = (out.status.code() == Some(1))
                .then(|| SudoRefusal::of(&out.stderr))
                .flatten();
            let Some(refusal) = refusal else {
                *self.sudo.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
                return Ok(out);
            };
            let asked_without = mode == SudoMode::NoPassword;
            if refusal == SudoRefusal::PasswordRequired && asked_without && password.is_some() {
                mode = SudoMode::Password;
                continue;
            }
            let (host, user) = (self.name.clone(), user.to_owned());
            return Err(CommandError::Escalation(match refusal {
                SudoRefusal::PasswordRequired if asked_without => {
                    EscalationError::PasswordRequired { host, user }
                }
                SudoRefusal::PasswordRequired | SudoRefusal::WrongPassword => {
                    EscalationError::WrongPassword { host, user }
                }
                SudoRefusal::NotPermitted => EscalationError::NotPermitted {
                    host,
                    user,
                    command: cmd.to_string(),
                },
            }));
        }
    }

    /// The master connection's control socket.
    pub fn control_path(&self) -> &Path {
        self.session.control_socket()
    }

    /// The Nix store URI of this host.
    pub fn store_uri(&self) -> String {
        format!("ssh-ng://{}", self.destination)
    }

    /// `NIX_SSHOPTS` that make Nix's ssh use this host's connection and
    /// berth's SSH settings. Nix splits it on whitespace.
    pub fn nix_sshopts(&self) -> String {
        nix_sshopts(&self.settings, Some(self.control_path()))
    }

    /// Closes the master connection, or leaves it to the commands still
    /// running in the background, which close it when they end.
    pub async fn close(self) -> Result<(), openssh::Error> {
        match std::sync::Arc::try_unwrap(self.session) {
            Ok(session) => session.close().await,
            Err(_) => Ok(()),
        }
    }
}

/// An ssh_config that sets `options` for every host, then includes `base`
/// (or the user's and the system's configs, which `-F` would skip).
fn options_config(options: &[String], base: Option<&Path>) -> Result<String, UnsupportedSshOption> {
    let mut lines = vec!["# berth: a node's sshOptions, ahead of the config in use".to_owned()];
    let mut words = options.iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.strip_prefix('-').and_then(|w| w.chars().next()) {
            Some(flag) => (flag, &word[2..]),
            None => return Err(UnsupportedSshOption(word.clone())),
        };
        let value = if inline.is_empty() {
            words
                .next()
                .cloned()
                .ok_or_else(|| UnsupportedSshOption(word.clone()))?
        } else {
            inline.to_owned()
        };
        let line = match flag {
            'o' => value.replacen('=', " ", 1),
            'p' => format!("Port {value}"),
            'i' => format!("IdentityFile {value}"),
            'J' => format!("ProxyJump {value}"),
            'l' => format!("User {value}"),
            _ => return Err(UnsupportedSshOption(word.clone())),
        };
        if line.contains('\n') {
            return Err(UnsupportedSshOption(word.clone()));
        }
        lines.push(line);
    }
    match base {
        Some(base) => lines.push(format!("Include {}", base.display())),
        None => {
            lines.push("Include ~/.ssh/config".to_owned());
            lines.push("Include /etc/ssh/ssh_config".to_owned());
        }
    }
    Ok(lines.join("\n") + "\n")
}

impl SshSettings {
    /// `NIX_SSHOPTS` for a nix command that reaches more than one host (a
    /// copy from a build host to a target), so it cannot share one master.
    pub fn nix_sshopts(&self) -> String {
        nix_sshopts(self, None)
    }
}

fn nix_sshopts(settings: &SshSettings, control_path: Option<&Path>) -> String {
    let mut opts = Vec::new();
    if let Some(config) = &settings.config_file {
        opts.push(format!("-F {}", config.display()));
    }
    if let Some(control_path) = control_path {
        opts.push(format!("-o ControlPath={}", control_path.display()));
        opts.push("-o ControlMaster=no".to_owned());
    }
    opts.push("-o BatchMode=yes".to_owned());
    opts.push(format!(
        "-o StrictHostKeyChecking={}",
        settings.strict_host_key_checking()
    ));
    opts.join(" ")
}

#[async_trait]
impl Host for SshHost {
    fn name(&self) -> &str {
        &self.name
    }

    fn log(&self) -> &JobLog {
        &self.log
    }

    async fn output(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        match self.escalation().filter(|_| cmd.needs_root()) {
            Some((escalation, user)) => self.output_as_root(cmd, escalation, user).await,
            None => self.run_here(cmd).await,
        }
    }

    fn start(&self, cmd: Cmd, log: JobLog) -> Option<Background> {
        let (session, name) = (self.session.clone(), self.name.clone());
        Some(Background::spawn(async move {
            let via = Via::Ssh {
                session: &session,
                host: &name,
            };
            process::output(&cmd, via, &log).await
        }))
    }

    async fn copy_closure(&self, paths: &[StorePath]) -> Result<(), CommandError> {
        let cmd = nix::copy_to(&self.store_uri(), paths, Some(&self.nix_sshopts()));
        process::output(&cmd, Via::Local, &self.log)
            .await?
            .check()?;
        Ok(())
    }

    async fn sign_closure(&self, key_file: &Path, paths: &[StorePath]) -> Result<(), CommandError> {
        let cmd = nix::sign(
            key_file,
            paths,
            Some((&self.store_uri(), &self.nix_sshopts())),
        );
        process::output(&cmd, Via::Local, &self.log)
            .await?
            .check()?;
        Ok(())
    }

    async fn copy_derivations(&self, drvs: &[StorePath]) -> Result<(), CommandError> {
        let cmd =
            nix::copy_to(&self.store_uri(), drvs, Some(&self.nix_sshopts())).arg("--derivation");
        process::output(&cmd, Via::Local, &self.log)
            .await?
            .check()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_options_become_a_config_ahead_of_the_one_in_use() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let text = options_config(
            &words(&[
                "-p",
                "2222",
                "-oConnectTimeout=5",
                "-o",
                "ServerAliveCountMax=2",
                "-i",
                "/k",
            ]),
            Some(Path::new("/lab/ssh_config")),
        )
        .unwrap();
        assert_eq!(
            text,
            "# berth: a node's sshOptions, ahead of the config in use\n\
             Port 2222\nConnectTimeout 5\nServerAliveCountMax 2\nIdentityFile /k\n\
             Include /lab/ssh_config\n"
        );
        let text = options_config(&words(&["-J", "bastion"]), None).unwrap();
        assert!(text
            .ends_with("ProxyJump bastion\nInclude ~/.ssh/config\nInclude /etc/ssh/ssh_config\n"));
        for bad in [
            &["-v"][..],
            &["-p"],
            &["ConnectTimeout=5"],
            &["-R", "80:x:80"],
        ] {
            assert!(
                options_config(&words(bad), None).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn destinations() {
        let d = Destination::parse("root@h1").unwrap();
        assert_eq!((d.user.as_deref(), d.host.as_str()), (Some("root"), "h1"));
        assert_eq!(d.to_string(), "root@h1");
        assert_eq!(
            Destination::parse("10.231.1.2").unwrap().to_string(),
            "10.231.1.2"
        );
        for bad in [
            "",
            "@h1",
            "root@",
            "-oProxyCommand=x",
            "a b",
            "a@b@c",
            "h1/x",
            "h\n1",
            "$(id)@h1",
            "a`id`@h1",
            "u@h1;id",
            "'@h1",
            "u@h1|x",
            "u@ⅰ1",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in [
            "fe80::1%eth0",
            "deploy@web-1.tail1234.ts.net",
            "a_b@10.0.0.1",
        ] {
            assert_eq!(Destination::parse(good).unwrap().to_string(), good);
        }
        assert_eq!(
            Destination::parse("$(id)\n@h1").unwrap_err().to_string(),
            "`$(id)\\n@h1` is not an SSH destination: expected `host` or `user@host`, each of \
             letters, digits, `.`, `-` and `_` (and `:` or `%` in a host's address), not starting \
             with `-`"
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(256))]

        /// An accepted destination is words ssh and a shell take as they
        /// are, and reads back as itself.
        #[test]
        fn prop_destinations_are_plain_words(text in crate::testing::prop::text()) {
            if let Ok(d) = Destination::parse(&text) {
                proptest::prop_assert_eq!(d.to_string(), text.clone());
                proptest::prop_assert_eq!(crate::process::quote(std::ffi::OsStr::new(&text)), std::ffi::OsStr::new(&text));
                proptest::prop_assert!(!text.starts_with('-') && !text.contains("@-"));
            }
        }
    }

    #[test]
    fn nix_sshopts_ride_the_master_connection() {
        let settings = SshSettings {
            config_file: Some("/lab/ssh_config".into()),
            ..SshSettings::default()
        };
        assert_eq!(
            nix_sshopts(&settings, Some(Path::new("/tmp/.ssh-connection1/master"))),
            "-F /lab/ssh_config -o ControlPath=/tmp/.ssh-connection1/master \
             -o ControlMaster=no -o BatchMode=yes -o StrictHostKeyChecking=yes"
        );
        let accept = SshSettings {
            accept_new_host_keys: true,
            ..SshSettings::default()
        };
        assert!(nix_sshopts(&accept, Some(Path::new("/c")))
            .ends_with("StrictHostKeyChecking=accept-new"));
        assert_eq!(
            accept.nix_sshopts(),
            "-o BatchMode=yes -o StrictHostKeyChecking=accept-new"
        );
    }
}
