//! `berth deploy` with `berth.deployment.tailscale.enable`, through the built
//! binary: a stand-in `tailscale` first on PATH prints a status document (in
//! the shape of `tailscale status --json`) and records that it ran. Needs
//! nix (2.8 or later, flakes) and a writable store; no daemon, no network.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A tailnet where web1 is online and web2 has been offline since a given
/// time; values invented, field names and shapes as tailscale prints them.
const STATUS: &str = r#"{
  "Version": "1.76.6-t1f1a0f5a8-g4e2c1d3e1",
  "TUN": true,
  "BackendState": "Running",
  "AuthURL": "",
  "TailscaleIPs": ["100.101.1.1", "fd7a:115c:a1e0::1"],
  "Self": {
    "ID": "nSelf1CNTRL",
    "PublicKey": "nodekey:0000000000000000000000000000000000000000000000000000000000000001",
    "HostName": "deployer",
    "DNSName": "deployer.tailnet-x.ts.net.",
    "OS": "linux",
    "UserID": 1234,
    "TailscaleIPs": ["100.101.1.1", "fd7a:115c:a1e0::1"],
    "LastSeen": "0001-01-01T00:00:00Z",
    "Online": true
  },
  "Health": [],
  "MagicDNSSuffix": "tailnet-x.ts.net",
  "CurrentTailnet": { "Name": "ops@example.com", "MagicDNSSuffix": "tailnet-x.ts.net", "MagicDNSEnabled": true },
  "Peer": {
    "nodekey:aa00000000000000000000000000000000000000000000000000000000000002": {
      "ID": "nWeb1CNTRL",
      "HostName": "web1",
      "DNSName": "web1.tailnet-x.ts.net.",
      "OS": "linux",
      "UserID": 1234,
      "TailscaleIPs": ["100.64.0.5", "fd7a:115c:a1e0::5"],
      "Tags": ["tag:web"],
      "LastSeen": "0001-01-01T00:00:00Z",
      "Online": true,
      "Active": true
    },
    "nodekey:bb00000000000000000000000000000000000000000000000000000000000003": {
      "ID": "nWeb2CNTRL",
      "HostName": "web2",
      "DNSName": "web2.tailnet-x.ts.net.",
      "OS": "linux",
      "UserID": 1234,
      "TailscaleIPs": ["100.64.0.6", "fd7a:115c:a1e0::6"],
      "LastSeen": "2024-04-28T17:42:10.5Z",
      "Online": false,
      "Active": false
    }
  },
  "User": { "1234": { "ID": 1234, "LoginName": "ops@example.com", "DisplayName": "Ops" } }
}"#;

/// A directory with a flake of two nodes, web1 and web2, both reached over
/// Tailscale, and a bin directory for the stand-in `tailscale`.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = PathBuf::from(format!(
            "/tmp/berth-tailscale-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("flake")).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        // The builder touches a marker outside the store (the sandbox is off
        // here), so a test can tell whether anything was built. The nonce
        // makes the derivation new on every run: a store path built before
        // would not run its builder again.
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let flake = r#"{
  outputs = { self }:
    let
      node = name: {
        config = {
          system.build.toplevel = builtins.derivation {
            name = "nixos-system-${name}";
            system = "x86_64-linux";
            builder = "/bin/sh";
            nonce = "@nonce@";
            args = [ "-c" "/usr/bin/touch @marker@ && /bin/mkdir -p $out/bin" ];
          };
          berth.deployment = {
            targetHost = name;
            tailscale.enable = true;
          };
        };
      };
    in
    { nixosConfigurations = { web1 = node "web1"; web2 = node "web2"; }; };
}
"#
        .replace("@nonce@", &nonce)
        .replace("@marker@", &dir.join("built").display().to_string());
        std::fs::write(dir.join("flake/flake.nix"), flake).unwrap();
        Fixture { dir }
    }

    /// Puts a `tailscale` on the stub PATH that prints `status` for
    /// `status --json` and records each call.
    fn stub_tailscale(&self, status: &str) {
        std::fs::write(self.dir.join("status.json"), status).unwrap();
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{calls}'\n\
             [ \"$*\" = 'status --json' ] || exit 64\n\
             exec /bin/cat '{status}'\n",
            calls = self.dir.join("calls").display(),
            status = self.dir.join("status.json").display(),
        );
        let path = self.dir.join("bin/tailscale");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn node(&self, node: &str) -> String {
        format!("path:{}#{node}", self.dir.join("flake").display())
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn built(&self) -> bool {
        self.dir.join("built").exists()
    }

    fn berth(&self, args: &[&str]) -> (i32, String, String) {
        let path = format!("{}:/usr/bin:/bin", self.dir.join("bin").display());
        let out = Command::new(BIN)
            .args(args)
            .env("PATH", path)
            .env("NO_COLOR", "1")
            .env_remove("BERTH_SSH_CONFIG")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("$ berth {}\n{stderr}", args.join(" "));
        (
            out.status.code().expect("berth was killed"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn offline_peer_fails_before_building() {
    let f = Fixture::new("offline");
    f.stub_tailscale(STATUS);
    let (code, stdout, stderr) = f.berth(&["deploy", &f.node("web2"), "--agent", "/bin/true"]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("error: node web2: could not resolve targetHost `web2` through Tailscale"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "caused by: tailscale peer web2.tailnet-x.ts.net is offline (last seen 2024-04-28T17:42:10.5Z)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hint: "), "{stderr}");
    assert!(!stderr.contains("building"), "{stderr}");
    assert!(!f.built(), "a system was built before the peer was checked");
    assert_eq!(f.calls(), ["status --json"]);
}

#[test]
fn online_peer_dry_run_shows_the_tailscale_address() {
    let f = Fixture::new("online");
    f.stub_tailscale(STATUS);
    let (code, _, stderr) = f.berth(&["deploy", &f.node("web1"), "--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("web1: tailscale web1.tailnet-x.ts.net -> 100.64.0.5"),
        "{stderr}"
    );
    let plan = stderr
        .lines()
        .find(|l| l.starts_with("web1: would "))
        .unwrap_or_else(|| panic!("no plan line:\n{stderr}"));
    assert!(plan.contains(" to 100.64.0.5 "), "{plan}");
    assert!(f.built());
    assert_eq!(f.calls(), ["status --json"]);

    // The same with --json: one `tailscale` event, and the plan's host.
    let (code, stdout, stderr) = f.berth(&["--json", "deploy", &f.node("web1"), "--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tailscale: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "tailscale")
        .collect();
    assert_eq!(
        tailscale,
        [&serde_json::json!({
            "event": "tailscale",
            "node": "web1",
            "target": "web1",
            "dns_name": "web1.tailnet-x.ts.net",
            "address": "100.64.0.5",
            "online": true
        })]
    );
    let plan = events.iter().find(|e| e["event"] == "plan").unwrap();
    assert_eq!(plan["host"], "100.64.0.5");
}

#[test]
fn missing_tailscale_is_a_usage_error_with_the_install_hint() {
    let f = Fixture::new("missing");
    assert!(!f.dir.join("bin/tailscale").exists());
    let (code, _, stderr) = f.berth(&["deploy", &f.node("web1"), "--agent", "/bin/true"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("error: `tailscale` is not installed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: install tailscale, or turn off berth.deployment.tailscale.enable"),
        "{stderr}"
    );
    assert!(!f.built());
}

#[test]
fn logged_out_tailscale_is_a_usage_error() {
    let f = Fixture::new("logged-out");
    f.stub_tailscale(
        r#"{"Version": "1.76.6", "BackendState": "NeedsLogin", "AuthURL": "", "TailscaleIPs": null,
            "Self": {"HostName": "deployer", "DNSName": "", "TailscaleIPs": null, "Online": false},
            "MagicDNSSuffix": "", "CurrentTailnet": null, "Peer": null, "User": null}"#,
    );
    let (code, _, stderr) = f.berth(&["deploy", &f.node("web1"), "--agent", "/bin/true"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("error: tailscale is not connected: BackendState=NeedsLogin"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: log in with `tailscale up`"),
        "{stderr}"
    );
    assert!(!f.built());
}

#[test]
fn unreachable_tailscaled_is_a_usage_error() {
    let f = Fixture::new("no-daemon");
    let path = f.dir.join("bin/tailscale");
    // What tailscale prints when tailscaled is not running.
    std::fs::write(
        &path,
        "#!/bin/sh\necho \"failed to connect to local tailscaled; it doesn't appear to be running (sudo systemctl start tailscaled ?)\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, _, stderr) = f.berth(&["deploy", &f.node("web1"), "--agent", "/bin/true"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("error: could not read the state of Tailscale"),
        "{stderr}"
    );
    assert!(
        stderr.contains("it doesn't appear to be running"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: is tailscaled running?"), "{stderr}");
    assert!(!f.built());
}
