//! Signed systems end to end, on a lab of one plain host (h1) whose
//! `/etc/berth/agent.json` trusts key A: a system signed with A is deployed
//! (built here, and built on the host and signed there); one unsigned,
//! signed with another key B, built on the host and not signed, or changed
//! in the host's store after it was signed is refused, and the host keeps
//! its generation. A broken agent.json refuses everything; none at all
//! deploys as before. Needs root and the lab's packages
//! (scripts/install-deps).

mod common;

use std::path::{Path, PathBuf};

use berth::host::Host;
use berth::lab::{HostKind, Lab, LabGuard};
use berth::process::Cmd;
use common::fleet::{generation, Fleet};
use common::Run;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// `berth deploy … --agent <this build>` against the lab.
fn deploy(lab: &Lab, args: &[&str]) -> Run {
    Run::of(
        common::berth()
            .arg("deploy")
            .args(args)
            .args(["--agent", BIN])
            .env("BERTH_SSH_CONFIG", lab.ssh_config()),
    )
}

/// `berth keys generate --name NAME --dir DIR`: the secret key file and
/// the public key it printed.
fn generate(dir: &Path, name: &str) -> (PathBuf, String) {
    let run = Run::of(
        common::berth()
            .args(["keys", "generate", "--name", name, "--dir"])
            .arg(dir),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let secret = dir.join(format!("{name}.secret"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    let public = run.stdout.trim().to_owned();
    assert!(public.starts_with(&format!("{name}:")), "{public}");
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("{name}.public")))
            .unwrap()
            .trim(),
        public
    );
    (secret, public)
}

/// What h1's running system says it is (its activation serves /version).
fn version_served(lab: &Lab) -> String {
    let addr = lab.host("h1").unwrap().net.addr;
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{addr}:8080/version"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The newest deployment on h1, from its agent's history.
async fn last_deployment(lab: &Lab) -> serde_json::Value {
    let ssh = lab.connect("h1").await.unwrap();
    let out = ssh
        .output(&Cmd::new(BIN).args(["agent", "history", "--limit", "1"]))
        .await
        .unwrap();
    ssh.close().await.unwrap();
    berth::agent::find_events(&out.stdout, "deployment")
        .into_iter()
        .next()
        .expect("a deployment")
}

/// The refusal of a system built from `version`: exit 1, nothing changed,
/// the trusted key named, a hint; the host keeps `before`, recorded as a
/// deployment that failed in phase `verify`.
async fn assert_refused(
    lab: &Lab,
    run: &Run,
    before: &(String, String),
    served: &str,
    says: &[&str],
) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("web1 (h1): failed, nothing changed: refusing /nix/store/"),
        "{}",
        run.stderr
    );
    for text in says {
        assert!(run.stderr.contains(text), "no {text:?} in:\n{}", run.stderr);
    }
    assert_eq!(&generation(lab, "h1").await, before);
    assert_eq!(version_served(lab), served);
    let d = last_deployment(lab).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["failure_phase"], "verify", "{d}");
}

#[test]
fn signed_systems_on_a_lab_host() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = PathBuf::from(format!("/srv/berth-test-{}-sign", std::process::id()));
        let lab = LabGuard::up(&dir, &[HostKind::Plain]).await.expect("lab up");
        let keys = tempfile::tempdir().unwrap();
        let (key_a, public_a) = generate(keys.path(), "test-a");
        let (key_b, _) = generate(keys.path(), "test-b");
        let key_a = key_a.to_str().unwrap();
        let key_b = key_b.to_str().unwrap();
        // h1's own /etc/berth, as the NixOS module would write it.
        let agent_json = lab.host("h1").unwrap().etc_dir().join("agent.json");
        let config = serde_json::json!({ "trustedPublicKeys": [public_a], "nixTrustedPublicKeys": [] });
        std::fs::write(&agent_json, config.to_string()).unwrap();

        // Every run builds new systems, so none is signed already.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let v = |n: u32| format!("{n}.{nonce}");
        let mut fleet = Fleet::new("sign");
        let addr = lab.host("h1").unwrap().net.addr.to_string();
        fleet.set(
            "web1",
            serde_json::json!({ "host": "h1", "address": addr, "version": v(1), "confirmTimeout": 5, "retries": 1 }),
        );
        let node = fleet.node("web1");

        // 1. Signed with the key h1 trusts: deployed.
        let run = deploy(&lab, &[&node, "--sign-key", key_a]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains("signing 1 system with"), "{}", run.stderr);
        assert!(
            run.stderr.contains("web1 (h1): deployed (generation 1)"),
            "{}",
            run.stderr
        );
        let first = generation(&lab, "h1").await;
        assert_eq!(first.0, "system-1-link");
        let served = version_served(&lab);
        assert!(served.contains(&v(1)), "{served}");

        // 2. Not signed: refused before anything changed, naming the key.
        fleet.update("web1", serde_json::json!({ "version": v(2) }));
        let run = deploy(&lab, &[&node]);
        assert_refused(
            &lab,
            &run,
            &first,
            &served,
            &[
                "it is not signed by a key this host trusts (test-a)",
                "nothing was changed",
                "hint: sign it with `berth deploy --sign-key FILE`, FILE the secret key of test-a",
            ],
        )
        .await;

        // 3. Signed, but with a key h1 does not trust.
        let run = deploy(&lab, &[&node, "--sign-key", key_b]);
        assert_refused(
            &lab,
            &run,
            &first,
            &served,
            &["it is not signed by a key this host trusts (test-a)"],
        )
        .await;

        // 4. Signed with A, then changed in h1's store after the copy: the
        // signature still matches the path's recorded hash, the contents
        // do not.
        fleet.update("web1", serde_json::json!({ "version": v(3) }));
        let run = deploy(&lab, &["--dry-run", "--json", &node]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let toplevel = run.events("plan")[0]["toplevel"].as_str().unwrap().to_owned();
        let sign = Cmd::new("nix")
            .args(["--extra-experimental-features", "nix-command", "store", "sign", "--key-file", key_a, &toplevel]);
        berth::host::LocalHost::new().run(&sign).await.unwrap();
        let copy = Cmd::new("nix")
            .args(["--extra-experimental-features", "nix-command", "copy", "--no-check-sigs", "--to", "ssh-ng://h1", &toplevel])
            .env("NIX_SSHOPTS", format!("-F {}", lab.ssh_config().display()));
        berth::host::LocalHost::new().run(&copy).await.unwrap();
        let in_h1 = lab
            .host("h1")
            .unwrap()
            .nix_dir()
            .join(toplevel.trim_start_matches("/nix/"))
            .join("bin/switch-to-configuration");
        let mut script = std::fs::read_to_string(&in_h1).unwrap();
        script.push_str("\necho tampered\n");
        std::fs::write(&in_h1, script).unwrap();
        let run = deploy(&lab, &[&node, "--sign-key", key_a]);
        assert_refused(
            &lab,
            &run,
            &first,
            &served,
            &[
                "paths of its closure lack a valid signature of a key this host trusts (test-a) or were changed after they were signed",
                &format!("{toplevel} (modified)"),
            ],
        )
        .await;

        // 5. Built on h1 and not signed: built on the host is not enough.
        fleet.update("web1", serde_json::json!({ "version": v(4), "buildOnTarget": true }));
        let run = deploy(&lab, &[&node]);
        assert_refused(
            &lab,
            &run,
            &first,
            &served,
            &["it is not signed by a key this host trusts (test-a)"],
        )
        .await;

        // 6. Built on h1 and signed there from here, the key never copied.
        let run = deploy(&lab, &[&node, "--sign-key", key_a]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stderr.contains("web1 (h1): deployed (generation 2)"),
            "{}",
            run.stderr
        );
        let second = generation(&lab, "h1").await;
        assert!(second.1.ends_with(&v(4)), "{second:?}");
        let served = version_served(&lab);
        assert!(served.contains(&v(4)), "{served}");

        // 7. An agent.json that is there but broken refuses even a signed
        // system: the agent does not guess.
        fleet.update("web1", serde_json::json!({ "version": v(5), "buildOnTarget": false }));
        std::fs::write(&agent_json, "{\"trustedPublicKeys\": [\"test-a\"]}").unwrap();
        let run = deploy(&lab, &[&node, "--sign-key", key_a]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("refusing to activate: /etc/berth/agent.json is not valid"),
            "{}",
            run.stderr
        );
        assert_eq!(generation(&lab, "h1").await, second);

        // 8. No agent.json at all: nothing is required, as before signing.
        std::fs::remove_file(&agent_json).unwrap();
        fleet.update("web1", serde_json::json!({ "version": v(6) }));
        let run = deploy(&lab, &[&node]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(generation(&lab, "h1").await.0, "system-3-link");

        // A --sign-key that is not a secret key stops before anything is built.
        let run = deploy(&lab, &[&node, "--sign-key", &format!("{}/test-a.public", keys.path().display())]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains("is not a Nix secret key"), "{}", run.stderr);
        assert!(run.stderr.contains("hint: make a key pair with `berth keys generate"), "{}", run.stderr);
        assert!(!run.stderr.contains(&public_a[7..]), "no key material in messages");

        lab.down().await.expect("lab down");
    });
}
