//! Becoming root on a host reached as another user: the node's
//! `privilegeEscalationCommand` (sudo by default) in front of the commands
//! that need root ([`Cmd::as_root`]), and the sudo password, read once from
//! the terminal and given to each host's sudo on its stdin, never in argv,
//! the environment, logs or events.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

use super::Cmd;

/// A secret: shown as `<redacted>` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<String>);

impl Secret {
    pub fn new(text: String) -> Self {
        Secret(Arc::new(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The sudo password of this run: empty until asked for, then shared by
/// every host (the settings of each node hold the same cell).
#[derive(Clone, Debug, Default)]
pub struct SudoPassword(Arc<OnceLock<Secret>>);

impl SudoPassword {
    pub fn get(&self) -> Option<&Secret> {
        self.0.get()
    }

    /// Keeps `password` (the first one given wins).
    pub fn set(&self, password: Secret) {
        let _ = self.0.set(password);
    }
}

/// How a host reached as a user other than root runs what needs root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// The command put in front, e.g. `["sudo"]`, `["doas"]`, `["run0"]`.
    command: Vec<String>,
}

/// How sudo is asked: without a password, or with one on stdin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SudoMode {
    /// `sudo -n`: fails at once where a password is required.
    NoPassword,
    /// `sudo -k -S -p ''`: reads the password from the first line of stdin,
    /// every time (`-k`: a cached credential would leave the line unread,
    /// for the command to get).
    Password,
}

impl Escalation {
    /// `command` in front of what needs root; `None` for an empty command.
    pub fn new(command: &[String]) -> Option<Self> {
        (!command.is_empty()).then(|| Escalation {
            command: command.to_vec(),
        })
    }

    /// Whether the program is sudo, which berth knows how to give a
    /// password to.
    pub fn is_sudo(&self) -> bool {
        std::path::Path::new(&self.command[0])
            .file_name()
            .is_some_and(|name| name == "sudo")
    }

    /// The program in front, for messages.
    pub fn program(&self) -> &str {
        &self.command[0]
    }

    /// `cmd` run as root: `sudo -n -- PROGRAM ARGS…` (or with the
    /// password's line ahead of `cmd`'s stdin), or the configured command
    /// with the argv appended. The environment and working directory of
    /// `cmd` stay outside: sudo resets the environment, and what runs as
    /// root must not depend on it.
    pub fn wrap(&self, cmd: &Cmd, mode: SudoMode, password: Option<&Secret>) -> Cmd {
        let mut wrapped = Cmd::new(&self.command[0]).args(&self.command[1..]);
        if self.is_sudo() {
            wrapped = match mode {
                SudoMode::NoPassword => wrapped.arg("-n"),
                SudoMode::Password => wrapped.args(["-k", "-S", "-p", ""]),
            };
            wrapped = wrapped.arg("--");
        }
        wrapped = wrapped.arg(cmd.program()).args(cmd.get_args());
        for (key, value) in cmd.get_env() {
            wrapped = wrapped.env(key, value);
        }
        if let Some(dir) = cmd.get_cwd() {
            wrapped = wrapped.cwd(dir);
        }
        if let Some(timeout) = cmd.get_timeout() {
            wrapped = wrapped.timeout(timeout);
        }
        let mut stdin = Vec::new();
        if let (SudoMode::Password, Some(password)) = (mode, password) {
            stdin.extend_from_slice(password.expose().as_bytes());
            stdin.push(b'\n');
        }
        match cmd.get_stdin() {
            Some(bytes) => stdin.extend_from_slice(bytes),
            None if stdin.is_empty() => return wrapped.stdio(cmd.get_stdio()),
            None => {}
        }
        wrapped.stdin(stdin).stdio(cmd.get_stdio())
    }
}

/// What sudo's stderr says went wrong before it ran the command, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SudoRefusal {
    /// `sudo -n` and the rule asks for a password.
    PasswordRequired,
    /// The password given was wrong (or none came on stdin).
    WrongPassword,
    /// No rule lets the user run this command as root.
    NotPermitted,
}

impl SudoRefusal {
    /// Reads sudo's own lines (`sudo: …`, `Sorry, try again.`) in
    /// `stderr`. sudo prints them in the host's language; berth runs it in
    /// whatever the login gives, so it also knows sudo's exit status 1.
    pub fn of(stderr: &[u8]) -> Option<SudoRefusal> {
        let text = String::from_utf8_lossy(stderr);
        let said = |needle: &str| {
            text.lines()
                .any(|line| line.starts_with("sudo: ") && line.contains(needle))
        };
        if said("a password is required") {
            Some(SudoRefusal::PasswordRequired)
        } else if said("incorrect password attempt")
            || said("no password was provided")
            || text.lines().any(|l| l.starts_with("Sorry, try again"))
        {
            Some(SudoRefusal::WrongPassword)
        } else if [
            // The sudoers policy's own lines, without the `sudo: ` (Debian
            // 12's sudo 1.9.13: `Sorry, user deploy is not allowed to
            // execute …`, `norule is not in the sudoers file.`, `Sorry, user
            // … may not run sudo on …`).
            "is not allowed to execute",
            "is not in the sudoers file",
            "may not run sudo",
        ]
        .iter()
        .any(|needle| text.lines().any(|l| l.contains(needle)))
        {
            Some(SudoRefusal::NotPermitted)
        } else {
            None
        }
    }
}

/// Why a host could not become root; nothing ran as root on it.
#[derive(Debug, thiserror::Error)]
pub enum EscalationError {
    #[error(
        "sudo on {host} wants a password for {user} (or has no rule that lets {user} run berth's \
         agent), and berth has none to give it"
    )]
    PasswordRequired { host: String, user: String },
    #[error("sudo on {host} refused the password given for {user}")]
    WrongPassword { host: String, user: String },
    #[error("sudo on {host} does not let {user} run `{command}` as root")]
    NotPermitted {
        host: String,
        user: String,
        command: String,
    },
}

impl crate::error::Diagnose for EscalationError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        let hint = match self {
            EscalationError::PasswordRequired { user, .. } => format!(
                "give {user} a rule that needs no password (berth.agent.deployUsers = [ \"{user}\" ] \
                 allows berth's agent and nothing else), or run berth at a terminal with \
                 --ask-sudo-password"
            ),
            EscalationError::WrongPassword { .. } => {
                "nothing was changed on the host: run again and type the password of the node's \
                 targetUser"
                    .into()
            }
            EscalationError::NotPermitted { user, .. } => format!(
                "add {user} to berth.agent.deployUsers on the host (a sudo rule for berth's agent), \
                 or deploy as a user whose sudo allows it"
            ),
        };
        crate::error::Diagnosis {
            hint: Some(hint),
            usage: false,
        }
    }
}

/// Reads a password from the terminal (`/dev/tty`) with echo off, after
/// `prompt` on it. Fails when there is no terminal.
pub fn read_password(prompt: &str) -> io::Result<Secret> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr on a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // TCSANOW, not TCSAFLUSH: a password typed ahead of the prompt is kept.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let read = (|| -> io::Result<String> {
        let mut out = &tty;
        out.write_all(prompt.as_bytes())?;
        out.flush()?;
        let mut line = String::new();
        io::BufReader::new(&tty).read_line(&mut line)?;
        Ok(line)
    })();
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    let mut line = read?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(Secret::new(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sudo_goes_in_front_of_the_argv_alone() {
        let sudo = Escalation::new(&words(&["sudo"])).unwrap();
        let cmd = Cmd::new("/run/current-system/sw/bin/berth")
            .args(["agent", "status", "--node", "web1"])
            .env("K", "V");
        let plain = sudo.wrap(&cmd, SudoMode::NoPassword, None);
        assert_eq!(
            plain.argv(),
            [
                "sudo",
                "-n",
                "--",
                "/run/current-system/sw/bin/berth",
                "agent",
                "status",
                "--node",
                "web1"
            ]
        );
        assert_eq!(plain.get_env(), [("K".into(), "V".into())]);
        assert_eq!(plain.get_stdin(), None);

        let password = Secret::new("hunter2".into());
        let with = sudo.wrap(
            &cmd.clone().stdin("{}\n"),
            SudoMode::Password,
            Some(&password),
        );
        assert_eq!(
            with.argv()[..6],
            ["sudo", "-k", "-S", "-p", "", "--"].map(std::ffi::OsStr::new)
        );
        assert_eq!(with.get_stdin(), Some(&b"hunter2\n{}\n"[..]));
        // The password is in no word of the command, nor in its Debug.
        assert!(!with.to_string().contains("hunter2"));
        assert!(!format!("{with:?}").contains("hunter2"));
        assert!(!format!("{password:?}").contains("hunter2"));
    }

    #[test]
    fn other_programs_get_the_argv_as_is() {
        let doas = Escalation::new(&words(&["doas", "-u", "root"])).unwrap();
        assert!(!doas.is_sudo());
        let cmd = Cmd::new("berth").args(["agent", "confirm"]);
        assert_eq!(
            doas.wrap(&cmd, SudoMode::NoPassword, None).argv(),
            ["doas", "-u", "root", "berth", "agent", "confirm"]
        );
        assert!(Escalation::new(&[]).is_none());
        assert!(Escalation::new(&words(&["/usr/bin/sudo", "-H"]))
            .unwrap()
            .is_sudo());
    }

    #[test]
    fn sudo_refusals_are_told_apart() {
        let of = |s: &str| SudoRefusal::of(s.as_bytes());
        assert_eq!(
            of("sudo: a password is required\n"),
            Some(SudoRefusal::PasswordRequired)
        );
        assert_eq!(
            of("Sorry, try again.\nsudo: 1 incorrect password attempt\n"),
            Some(SudoRefusal::WrongPassword)
        );
        assert_eq!(
            of("sudo: no password was provided\n"),
            Some(SudoRefusal::WrongPassword)
        );
        assert_eq!(
            of("Sorry, user deploy is not allowed to execute '/bin/bash' as root on h1.\n"),
            Some(SudoRefusal::NotPermitted)
        );
        for not_permitted in [
            "sudo: deploy is not in the sudoers file.\n",
            // Debian 12's sudo, measured (tests/deploy_user_lab.rs).
            "norule is not in the sudoers file.\n",
            "Sorry, user deploy may not run sudo on h1.\n",
        ] {
            assert_eq!(
                of(not_permitted),
                Some(SudoRefusal::NotPermitted),
                "{not_permitted}"
            );
        }
        assert_eq!(of("error: the agent said no\n"), None);
    }
}
