//! What the fan-out tests share (tests/fanout.rs, tests/faults_fanout.rs):
//! a shaped lab of plain hosts, a fleet whose nodes' systems differ but
//! share a closure of leaves, the deployer's uplink counter, and the
//! deploy itself.

use std::path::{Path, PathBuf};

use berth::lab::{HostKind, LabGuard, Rate, Shaping};

use super::Run;

pub const BIN: &str = env!("CARGO_BIN_EXE_berth");
/// Leaves in each system's closure, and the bytes of each.
pub const LEAVES: usize = 24;
pub const LEAF_BYTES: usize = 256 * 1024;

/// A lab of `hosts` plain hosts behind a 40 Mbit/s uplink, 1 Gbit/s each.
pub async fn lab(name: &str, hosts: usize) -> LabGuard {
    let dir = PathBuf::from(format!("/srv/berth-test-{}-{name}", std::process::id()));
    let shaping = Shaping {
        uplink: Some(Rate::parse("40mbit").unwrap()),
        link: Some(Rate::parse("1gbit").unwrap()),
    };
    LabGuard::up_shaped(&dir, &vec![HostKind::Plain; hosts], shaping)
        .await
        .expect("lab up")
}

/// A flake of nodes `fan1`…`fanN` (hosts h1…hN, tag `fan`): each system
/// its own toplevel, all of them referring to the same [`LEAVES`] random
/// leaves. `salt` makes new leaves and systems.
pub struct FanFleet {
    pub dir: PathBuf,
}

impl FanFleet {
    pub fn new(name: &str, hosts: usize) -> FanFleet {
        let dir = PathBuf::from(format!("/tmp/berth-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let flake = format!(
            r#"{{
  outputs = _: let
    system = "x86_64-linux";
    salt = builtins.readFile ./salt;
    leaf = i: builtins.derivation {{
      name = "fan-leaf-${{salt}}-${{toString i}}";
      inherit system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      args = ["-c" "head -c {LEAF_BYTES} /dev/urandom > $out"];
    }};
    leaves = builtins.genList leaf {LEAVES};
    toplevel = name: builtins.derivation {{
      name = "nixos-system-${{name}}-${{salt}}";
      inherit system;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      paths = builtins.concatStringsSep "\n" (map toString leaves);
      args = ["-c" ''
        mkdir -p $out/bin
        printf '%s\n' "$paths" > $out/closure
        printf '#!/bin/sh\nexit 0\n' > $out/bin/switch-to-configuration
        chmod +x $out/bin/switch-to-configuration
      ''];
    }};
    node = i: {{
      config = {{
        system.build.toplevel = toplevel "fan${{toString i}}";
        berth.deployment = {{
          targetHost = "h${{toString i}}";
          confirmTimeout = 10;
          tags = ["fan"];
        }};
      }};
    }};
  in {{
    nixosConfigurations = builtins.listToAttrs (builtins.genList (i: {{
      name = "fan${{toString (i + 1)}}";
      value = node (i + 1);
    }}) {hosts});
  }};
}}
"#
        );
        std::fs::write(dir.join("flake.nix"), flake).unwrap();
        let fleet = FanFleet { dir };
        fleet.salt("1");
        fleet
    }

    /// New leaves and systems from now on.
    pub fn salt(&self, salt: &str) {
        std::fs::write(self.dir.join("salt"), salt).unwrap();
    }

    pub fn flake(&self) -> String {
        format!("path:{}", self.dir.display())
    }
}

impl Drop for FanFleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `berth --json deploy FLAKE --on @fan -p 8 --agent <this build>` plus
/// `args`, against the lab.
pub fn deploy_cmd(lab: &LabGuard, fleet: &FanFleet, args: &[&str]) -> std::process::Command {
    let mut cmd = super::berth();
    cmd.args(["--json", "deploy"])
        .arg(fleet.flake())
        .args(["--on", "@fan", "-p", "8", "--agent", BIN])
        .args(args)
        .env("BERTH_SSH_CONFIG", lab.ssh_config());
    cmd
}

pub fn deploy(lab: &LabGuard, fleet: &FanFleet, args: &[&str]) -> Run {
    Run::of(&mut deploy_cmd(lab, fleet, args))
}

/// Bytes the machine has sent into the lab over its uplink so far.
pub fn uplink_sent(lab: &LabGuard) -> u64 {
    let dev = &lab.switch().expect("the lab has a switch").uplink_out;
    let path = Path::new("/sys/class/net")
        .join(dev)
        .join("statistics/tx_bytes");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// The bytes of a system's closure as NARs (what a copy carries).
pub const CLOSURE_BYTES: u64 = (LEAVES * LEAF_BYTES) as u64;

/// The `message`s of the `phase` events of `node` in a --json deploy's
/// stdout.
pub fn phases(run: &Run, node: &str) -> Vec<String> {
    run.events("phase")
        .iter()
        .filter(|e| e["node"] == node)
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// A signing key pair in `dir`: the secret key file and the public key.
pub fn key(dir: &Path, name: &str) -> (PathBuf, String) {
    let run = Run::of(
        super::berth()
            .args(["keys", "generate", "--name", name, "--dir"])
            .arg(dir),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    (
        dir.join(format!("{name}.secret")),
        run.stdout.trim().to_owned(),
    )
}
