//! What a lab made, recorded in `LABDIR/lab.json` before each thing is made,
//! so `berth lab down` can remove all of it after a crash or a killed run.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::net::{host_name, HostNet, SwitchNet};
use super::shape::Shaping;

/// A plain host runs only sshd; a systemd host boots a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKind {
    Plain,
    Systemd,
}

/// One lab host and everything made for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabHost {
    pub name: String,
    pub kind: HostKind,
    pub net: HostNet,
    /// Its directory: keys, configs, logs, its `/nix`, and for a systemd
    /// host the overlay of its root.
    pub dir: PathBuf,
    /// The process berth started for it (sshd, or systemd-nspawn).
    pub pid: Option<u32>,
    /// Mounts made in the machine's own mount namespace, to undo.
    pub mounts: Vec<PathBuf>,
    /// Whether the namespace and veth pair (and the pair's tc qdiscs) were
    /// asked for.
    pub net_made: bool,
}

impl LabHost {
    pub fn new(index: u8, kind: HostKind, net: HostNet, dir: &Path) -> Self {
        LabHost {
            name: host_name(index),
            kind,
            net,
            dir: dir.to_owned(),
            pid: None,
            mounts: Vec::new(),
            net_made: false,
        }
    }

    /// The host's private `/nix`.
    pub fn nix_dir(&self) -> PathBuf {
        self.dir.join("nix")
    }

    /// A plain host's `/var/lib/berth` (a systemd host has its own root).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// A plain host's `/etc/berth`: its agent.json and app manifests.
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The root a systemd host boots from (an overlay over `/`).
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A string the command line of this host's process contains, checked
    /// before berth signals a recorded pid, so a recycled pid is never hit.
    pub fn process_tag(&self) -> PathBuf {
        match self.kind {
            HostKind::Plain => self.dir.join("sshd_config"),
            HostKind::Systemd => self.root_dir(),
        }
    }

    /// Where the host's sshd (plain) or console (systemd) writes.
    pub fn log_file(&self) -> PathBuf {
        match self.kind {
            HostKind::Plain => self.dir.join("sshd.log"),
            HostKind::Systemd => self.dir.join("console.log"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub slot: u8,
    /// The switch namespace, its bridge and the uplink, recorded before
    /// they are made (none in a lab recorded by a berth from before the
    /// switch).
    #[serde(default)]
    pub switch: Option<SwitchNet>,
    /// The rates the lab's links were limited to.
    #[serde(default)]
    pub shaping: Shaping,
    pub hosts: Vec<LabHost>,
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

impl LabState {
    pub fn load(dir: &Path) -> io::Result<LabState> {
        let text = std::fs::read_to_string(state_file(dir))?;
        serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        tmp.as_file().sync_all()?;
        tmp.persist(state_file(dir)).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::net::{host_net, switch_net};
    use crate::lab::shape::Rate;

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = LabHost::new(2, HostKind::Systemd, host_net(9, 2), &dir.path().join("h2"));
        host.pid = Some(42);
        host.mounts.push(host.root_dir());
        LabState {
            slot: 9,
            switch: Some(switch_net(9)),
            shaping: Shaping {
                uplink: Some(Rate::parse("100mbit").unwrap()),
                link: Some(Rate::parse("1gbit").unwrap()),
            },
            hosts: vec![host],
        }
        .save(dir.path())
        .unwrap();
        let back = LabState::load(dir.path()).unwrap();
        assert_eq!(back.slot, 9);
        assert_eq!(back.hosts[0].name, "h2");
        assert_eq!(back.hosts[0].pid, Some(42));
        assert_eq!(back.hosts[0].mounts, [dir.path().join("h2/root")]);
        assert_eq!(back.hosts[0].net, host_net(9, 2));
        assert_eq!(back.switch, Some(switch_net(9)));
        assert_eq!(back.shaping.uplink.unwrap().to_string(), "100mbit");
        assert_eq!(back.shaping.link.unwrap().bits_per_second(), 1_000_000_000);
    }

    #[test]
    fn a_lab_recorded_before_the_switch_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"slot": 4, "hosts": [{"name": "h1", "kind": "plain",
            "net": {"netns": "berth-4-h1", "veth_out": "b4h1o", "veth_in": "b4h1i",
                    "out_addr": "10.231.4.5", "addr": "10.231.4.6", "prefix_len": 30},
            "dir": "/srv/lab/h1", "pid": 7, "mounts": [], "net_made": true}]}"#;
        std::fs::write(state_file(dir.path()), old).unwrap();
        let back = LabState::load(dir.path()).unwrap();
        assert_eq!(back.switch, None);
        assert_eq!(back.shaping, Shaping::default());
        assert_eq!(back.hosts[0].net.switch_netns, "");
        assert_eq!(back.hosts[0].net.veth_out, "b4h1o");
    }
}
