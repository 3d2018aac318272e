//! A fleet flake in a directory of its own, written from examples/fleet
//! (no nixpkgs; a toplevel whose activation serves /health and can
//! misbehave on purpose), for the tests that make system deploys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth::host::Host;
use berth::lab::Lab;
use berth::process::Cmd;

/// A fleet flake in a directory of its own, written from examples/fleet.
pub struct Fleet {
    pub dir: PathBuf,
    pub nodes: BTreeMap<String, serde_json::Value>,
}

impl Fleet {
    pub fn new(name: &str) -> Fleet {
        let dir = PathBuf::from(format!("/tmp/berth-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
        for file in ["flake.nix", "system.nix", "switch-to-configuration.sh"] {
            std::fs::copy(example.join(file), dir.join(file)).unwrap();
        }
        Fleet {
            dir,
            nodes: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, node: &str, spec: serde_json::Value) -> &mut Self {
        self.nodes.insert(node.to_owned(), spec);
        self.write()
    }

    pub fn update(&mut self, node: &str, changes: serde_json::Value) -> &mut Self {
        let spec = self.nodes.get_mut(node).unwrap().as_object_mut().unwrap();
        for (k, v) in changes.as_object().unwrap() {
            spec.insert(k.clone(), v.clone());
        }
        self.write()
    }

    pub fn write(&mut self) -> &mut Self {
        std::fs::write(
            self.dir.join("fleet.json"),
            serde_json::to_vec_pretty(&self.nodes).unwrap(),
        )
        .unwrap();
        self
    }

    pub fn flake(&self) -> String {
        format!("path:{}", self.dir.display())
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}#{node}", self.flake())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The generation number and store path of a host's system profile.
pub async fn generation(lab: &Lab, host: &str) -> (String, String) {
    let ssh = lab.connect(host).await.unwrap();
    let link = ssh
        .run(&Cmd::new("readlink").arg("/nix/var/nix/profiles/system"))
        .await
        .unwrap()
        .stdout_str();
    let path = ssh
        .run(&Cmd::new("readlink").args(["-f", "/nix/var/nix/profiles/system"]))
        .await
        .unwrap()
        .stdout_str();
    ssh.close().await.unwrap();
    (link.trim().to_owned(), path.trim().to_owned())
}
