//! What `switch-to-configuration dry-activate` says activating a new system
//! would do to a host's systemd units, read from the lines it prints.

use std::fmt;

use super::StorePath;
use crate::process::Cmd;

/// The units activation would touch, each list in the script's order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnitChanges {
    pub stop: Vec<String>,
    pub restart: Vec<String>,
    pub reload: Vec<String>,
    pub start: Vec<String>,
    /// Changed units the script would leave running
    /// (`restartIfChanged = false`).
    pub skip: Vec<String>,
    /// systemd itself would be re-executed.
    pub restart_systemd: bool,
    /// Lines not recognised (the activation snippets' own dry-run output,
    /// wording from a newer script), kept so nothing is hidden.
    pub other: Vec<String>,
}

/// `TOPLEVEL/bin/switch-to-configuration dry-activate`, run as root on the
/// host. The script prints its findings on stderr.
pub fn dry_activate_cmd(toplevel: &StorePath) -> Cmd {
    Cmd::new(format!("{toplevel}/bin/switch-to-configuration")).arg("dry-activate")
}

/// The list a line that names units adds to, and the units, for the lines
/// both nixpkgs' Perl `switch-to-configuration` and its Rust successor
/// (`switch-to-configuration-ng`) print.
fn unit_line<'c, 'l>(
    changes: &'c mut UnitChanges,
    line: &'l str,
) -> Option<(&'c mut Vec<String>, &'l str)> {
    [
        ("would stop the following units:", &mut changes.stop),
        (
            "would NOT stop the following changed units:",
            &mut changes.skip,
        ),
        ("would restart the following units:", &mut changes.restart),
        ("would reload the following units:", &mut changes.reload),
        ("would start the following units:", &mut changes.start),
    ]
    .into_iter()
    .find_map(|(prefix, list)| Some((list, line.strip_prefix(prefix)?)))
}

/// Printed before the activation snippets run; says nothing about units.
const ACTIVATING: &str = "would activate the configuration...";
const RESTART_SYSTEMD: &str = "would restart systemd";

/// Reads the output of [`dry_activate_cmd`] (stderr, or stdout and stderr
/// together). Never fails: a line it does not know lands in `other`.
pub fn parse(output: &str) -> UnitChanges {
    let mut changes = UnitChanges::default();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == ACTIVATING {
            continue;
        }
        if line == RESTART_SYSTEMD {
            changes.restart_systemd = true;
            continue;
        }
        match unit_line(&mut changes, line) {
            Some((list, units)) => list.extend(
                units
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned),
            ),
            None => changes.other.push(line.to_owned()),
        }
    }
    changes
}

impl UnitChanges {
    /// Whether activation would stop, start, restart or reload nothing
    /// (unrecognised lines do not count).
    pub fn is_empty(&self) -> bool {
        !self.restart_systemd
            && self.stop.is_empty()
            && self.restart.is_empty()
            && self.reload.is_empty()
            && self.start.is_empty()
            && self.skip.is_empty()
    }
}

/// One line per kind of change, most disruptive first (`restart: a.service,
/// b.service`), then the unrecognised lines as `note:`. No trailing newline.
impl fmt::Display for UnitChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        if self.is_empty() {
            lines.push("no unit changes".to_owned());
        }
        if self.restart_systemd {
            lines.push("restart systemd".to_owned());
        }
        for (label, units) in [
            ("stop:   ", &self.stop),
            ("restart:", &self.restart),
            ("reload: ", &self.reload),
            ("start:  ", &self.start),
        ] {
            if !units.is_empty() {
                lines.push(format!("{label} {}", units.join(", ")));
            }
        }
        if !self.skip.is_empty() {
            // Says why a changed unit is listed yet left alone.
            lines.push(format!(
                "skip:    {} (changed, not restarted)",
                self.skip.join(", ")
            ));
        }
        lines.extend(self.other.iter().map(|line| format!("note:    {line}")));
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPLEVEL: &str = "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-nixos-system-web1-24.05";

    /// What nixpkgs' script prints for a typical upgrade, activation
    /// snippets' output included.
    const SAMPLE: &str = "\
would stop the following units: grafana.service, systemd-tmpfiles-resetup.service
would NOT stop the following changed units: display-manager.service, systemd-logind.service
would activate the configuration...
setting up /etc...
would restart systemd
would reload the following units: dbus-broker.service, firewall.service
would restart the following units: nginx.service, sshd.service, systemd-journald.service
would start the following units: grafana.service, systemd-tmpfiles-resetup.service
";

    #[test]
    fn argv() {
        let toplevel = StorePath::new(TOPLEVEL).unwrap();
        assert_eq!(
            dry_activate_cmd(&toplevel).argv(),
            [
                format!("{TOPLEVEL}/bin/switch-to-configuration").as_str(),
                "dry-activate"
            ]
        );
    }

    #[test]
    fn parses_a_realistic_dry_run() {
        let changes = parse(SAMPLE);
        assert_eq!(
            changes,
            UnitChanges {
                stop: vec![
                    "grafana.service".into(),
                    "systemd-tmpfiles-resetup.service".into()
                ],
                restart: vec![
                    "nginx.service".into(),
                    "sshd.service".into(),
                    "systemd-journald.service".into()
                ],
                reload: vec!["dbus-broker.service".into(), "firewall.service".into()],
                start: vec![
                    "grafana.service".into(),
                    "systemd-tmpfiles-resetup.service".into()
                ],
                skip: vec![
                    "display-manager.service".into(),
                    "systemd-logind.service".into()
                ],
                restart_systemd: true,
                other: vec!["setting up /etc...".into()],
            }
        );
        assert!(!changes.is_empty());
    }

    #[test]
    fn template_instances_and_odd_spacing_survive() {
        let changes = parse(
            "  would restart the following units: container@web.service,  getty@tty1.service \n\
             would restart the following units: a.service\n",
        );
        assert_eq!(
            changes.restart,
            ["container@web.service", "getty@tty1.service", "a.service"]
        );
        assert!(changes.other.is_empty());
    }

    #[test]
    fn unknown_lines_are_kept_not_guessed() {
        let changes = parse("would restart the following user units: pipewire.service\n\n");
        assert!(changes.is_empty());
        assert_eq!(
            changes.other,
            ["would restart the following user units: pipewire.service"]
        );
    }

    #[test]
    fn nothing_to_do() {
        let changes = parse("would activate the configuration...\n");
        assert_eq!(changes, UnitChanges::default());
        assert_eq!(changes.to_string(), "no unit changes");
        assert_eq!(parse("").to_string(), "no unit changes");
    }

    #[test]
    fn display_for_humans() {
        assert_eq!(
            parse(SAMPLE).to_string(),
            "restart systemd\n\
             stop:    grafana.service, systemd-tmpfiles-resetup.service\n\
             restart: nginx.service, sshd.service, systemd-journald.service\n\
             reload:  dbus-broker.service, firewall.service\n\
             start:   grafana.service, systemd-tmpfiles-resetup.service\n\
             skip:    display-manager.service, systemd-logind.service (changed, not restarted)\n\
             note:    setting up /etc..."
        );
        let only_note = parse("warning: something odd\n");
        assert_eq!(
            only_note.to_string(),
            "no unit changes\nnote:    warning: something odd"
        );
    }
}
