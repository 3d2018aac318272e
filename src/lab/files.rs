//! The text of the files a lab writes: sshd configs, the ssh_config and
//! known_hosts that make `ssh -F LABDIR/ssh_config h1` work. Pure functions.

use std::fmt::Write;
use std::path::Path;

use super::state::LabHost;

/// The sshd_config of a plain host: its own key, the lab's client key, one
/// address, no PAM (it runs outside any login session).
pub fn plain_sshd_config(host: &LabHost, host_key: &Path, authorized_keys: &Path) -> String {
    format!(
        "# written by berth lab up\n\
         ListenAddress {addr}\n\
         HostKey {key}\n\
         AuthorizedKeysFile {auth}\n\
         PidFile none\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         MaxSessions 64\n\
         LogLevel VERBOSE\n\
         Subsystem sftp internal-sftp\n",
        addr = host.net.addr,
        key = host_key.display(),
        auth = authorized_keys.display(),
    )
}

/// A drop-in for the booted container's own sshd (Debian's
/// `sshd_config` includes `sshd_config.d/*.conf` first, so these win).
pub fn container_sshd_dropin(host_key_in_container: &str) -> String {
    format!(
        "# written by berth lab up\n\
         HostKey {host_key_in_container}\n\
         PermitRootLogin prohibit-password\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         MaxSessions 64\n\
         LogLevel VERBOSE\n"
    )
}

/// An ssh_config with one alias per host.
pub fn ssh_config(hosts: &[LabHost], client_key: &Path, known_hosts: &Path) -> String {
    let mut out = String::from("# written by berth lab up; use it as `ssh -F <this file> h1`\n");
    for host in hosts {
        let _ = write!(
            out,
            "\nHost {name}\n  \
             HostName {addr}\n  \
             User root\n  \
             IdentityFile \"{key}\"\n  \
             IdentitiesOnly yes\n  \
             UserKnownHostsFile \"{known}\"\n  \
             StrictHostKeyChecking yes\n  \
             BatchMode yes\n",
            name = host.name,
            addr = host.net.addr,
            key = client_key.display(),
            known = known_hosts.display(),
        );
    }
    out
}

/// known_hosts lines: each host's key under its alias and its address.
/// `public_keys` holds each host's `.pub` file (`type key comment`).
pub fn known_hosts<'a>(entries: impl IntoIterator<Item = (&'a LabHost, &'a str)>) -> String {
    let mut out = String::new();
    for (host, public_key) in entries {
        let key: Vec<&str> = public_key.split_whitespace().take(2).collect();
        let _ = writeln!(out, "{},{} {}", host.name, host.net.addr, key.join(" "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::net::host_net;
    use crate::lab::state::HostKind;

    fn host() -> LabHost {
        LabHost::new(1, HostKind::Plain, host_net(3, 1), Path::new("/srv/lab/h1"))
    }

    #[test]
    fn ssh_config_names_each_host() {
        let text = ssh_config(
            &[host()],
            Path::new("/srv/lab/id_ed25519"),
            Path::new("/srv/lab/known_hosts"),
        );
        assert!(
            text.contains("\nHost h1\n  HostName 10.231.3.2\n  User root\n"),
            "{text}"
        );
        assert!(
            text.contains("IdentityFile \"/srv/lab/id_ed25519\""),
            "{text}"
        );
        assert!(text.contains("StrictHostKeyChecking yes"), "{text}");
    }

    #[test]
    fn known_hosts_lists_alias_and_address_without_comment() {
        let h = host();
        let text = known_hosts([(&h, "ssh-ed25519 AAAAC3Nza root@box\n")]);
        assert_eq!(text, "h1,10.231.3.2 ssh-ed25519 AAAAC3Nza\n");
    }

    #[test]
    fn plain_sshd_listens_only_on_its_address() {
        let text = plain_sshd_config(&host(), Path::new("/k"), Path::new("/a"));
        assert!(text.contains("ListenAddress 10.231.3.2\n"));
        assert!(text.contains("HostKey /k\n") && text.contains("AuthorizedKeysFile /a\n"));
    }
}
