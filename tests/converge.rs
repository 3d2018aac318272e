//! `berth converge` on a plain lab host, following a local git repo of the
//! example fleet: a new revision is deployed, the same one is unchanged, a
//! pause holds until it expires, a revision that rolls back is blocked.
//! Needs root and the lab's packages (scripts/install-deps).

use std::path::{Path, PathBuf};
use std::process::Command;

use berth::host::Host;
use berth::lab::{HostKind, LabGuard};
use berth::process::Cmd;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

fn commit(dir: &Path, spec: &serde_json::Value) {
    std::fs::write(
        dir.join("fleet.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "web1": spec })).unwrap(),
    )
    .unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "fleet"]);
}

struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn converge_follows_a_git_flake_on_a_lab_host() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pid = std::process::id();
        let lab_dir = PathBuf::from(format!("/srv/berth-test-{pid}-converge"));
        let lab = LabGuard::up(&lab_dir, &[HostKind::Plain])
            .await
            .expect("lab up");
        let work = Removed(PathBuf::from(format!("/tmp/berth-test-{pid}-converge")));
        let _ = std::fs::remove_dir_all(&work.0);
        let repo = work.0.join("fleet");
        let state = work.0.join("state");
        std::fs::create_dir_all(&repo).unwrap();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet");
        for file in ["flake.nix", "system.nix", "switch-to-configuration.sh"] {
            std::fs::copy(example.join(file), repo.join(file)).unwrap();
        }
        git(&repo, &["init", "-q"]);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let address = lab.host("h1").unwrap().net.addr.to_string();
        let spec = |version: u32, behaviour: &str| {
            serde_json::json!({
                "host": "h1", "address": address, "version": format!("{version}.{nonce}"),
                "behaviour": behaviour, "confirmTimeout": 3,
            })
        };
        commit(&repo, &spec(1, "healthy"));
        let flake = format!("git+file://{}", repo.display());
        let state_arg = state.display().to_string();

        let converge = |extra: &'static [&'static str]| {
            let lab = &lab;
            let flake = flake.clone();
            let state_arg = state_arg.clone();
            async move {
                let ssh = lab.connect("h1").await.unwrap();
                let out = ssh
                    .output(
                        &Cmd::new(BIN)
                            .args(["converge", "--json", "--flake", &flake, "--node", "web1"])
                            .args(["--state-dir", &state_arg, "--agent", BIN])
                            .args(extra),
                    )
                    .await
                    .unwrap();
                ssh.close().await.unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                eprintln!("$ berth converge\n{stderr}");
                let event = berth::agent::find_events(&out.stdout, "converge")
                    .pop()
                    .unwrap_or_else(|| panic!("no converge event: {stderr}"));
                (out.status.code(), event, stderr)
            }
        };
        let profile = || async {
            let ssh = lab.connect("h1").await.unwrap();
            let link = ssh
                .run(&Cmd::new("readlink").arg("/nix/var/nix/profiles/system"))
                .await
                .unwrap()
                .stdout_str();
            ssh.close().await.unwrap();
            link.trim().to_owned()
        };

        // A new revision is deployed.
        let (code, event, stderr) = converge(&[]).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(event["outcome"], "deployed", "{event}");
        assert_eq!(event["revision"].as_str().unwrap().len(), 40, "{event}");
        assert_eq!(profile().await, "system-1-link");
        let history = Command::new(BIN)
            .args([
                "agent",
                "history",
                "--node",
                "web1",
                "--state-dir",
                &state_arg,
            ])
            .output()
            .unwrap();
        let last = berth::agent::find_events(&history.stdout, "deployment")
            .into_iter()
            .next()
            .expect("a deployment in the history");
        assert!(
            last["actor"].as_str().unwrap().starts_with("converge@"),
            "{last}"
        );
        // The commit is recorded with the deployment, as by a push deploy.
        assert_eq!(last["revision"], event["revision"], "{last}");

        // The same revision again: nothing to do.
        let (code, event, _) = converge(&[]).await;
        assert_eq!(
            (code, event["outcome"].as_str()),
            (Some(0), Some("unchanged"))
        );

        // A pause holds; an expired one is removed and the run goes on.
        let pause = state.join("converge-paused");
        let until = nonce as i64 / 1000 + 3600;
        std::fs::write(
            &pause,
            format!(r#"{{"until":{until},"reason":"maintenance","by":"alice"}}"#),
        )
        .unwrap();
        let (code, event, stderr) = converge(&[]).await;
        assert_eq!((code, event["outcome"].as_str()), (Some(0), Some("paused")));
        assert!(stderr.contains("by alice: maintenance"), "{stderr}");
        std::fs::write(&pause, r#"{"until":1000,"reason":"old","by":"bob"}"#).unwrap();
        let (code, event, stderr) = converge(&[]).await;
        assert_eq!(
            (code, event["outcome"].as_str()),
            (Some(0), Some("unchanged"))
        );
        assert!(stderr.contains("removed"), "{stderr}");
        assert!(!pause.exists());

        // A revision whose activation fails rolls back and is blocked.
        commit(&repo, &spec(2, "failed-units"));
        let (code, event, stderr) = converge(&[]).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(event["outcome"], "failed", "{event}");
        let bad = event["revision"].as_str().unwrap().to_owned();
        assert_eq!(profile().await, "system-1-link");
        let (code, event, stderr) = converge(&[]).await;
        assert_eq!(
            (code, event["outcome"].as_str()),
            (Some(0), Some("blocked")),
            "{stderr}"
        );
        assert_eq!(event["revision"], bad.as_str());

        drop(lab);
    });
}
