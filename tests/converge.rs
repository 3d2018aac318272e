//! `berth converge` on a plain lab host, following a local git repo of the
//! example fleet: a new revision is deployed, the same one is unchanged, a
//! pause holds until it expires, a revision that rolls back is blocked; with
//! `--require-ci`, against a replay of GitHub's API on the machine's address
//! in the lab's network: a failed check deploys nothing (and is asked again next
//! run), pending checks past the timeout skip the run, green ones deploy.
//! Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use berth::host::Host;
use berth::lab::{HostKind, Lab, LabGuard};
use berth::process::Cmd;
use serde_json::Value;

use common::{git, Commit, Server};

const BIN: &str = env!("CARGO_BIN_EXE_berth");
/// The repository whose checks `--require-ci` waits for.
const CI_REPO: &str = "berth-deploy/fleet";
const CI_TOKEN: &str = "ghp_lab";

fn commit(dir: &Path, spec: &serde_json::Value) {
    std::fs::write(
        dir.join("fleet.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "web1": spec })).unwrap(),
    )
    .unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "fleet"]);
}

fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"])
}

/// GitHub as far as `sha` of [`CI_REPO`] goes, on the machine's address in
/// the lab's network: the check runs `runs`, no commit statuses; any other commit is 404.
fn github(lab: &Lab, sha: &str, runs: Vec<Value>) -> Server {
    let ip = lab.host("h1").unwrap().net.out_addr;
    let sha = sha.to_owned();
    Server::start_on(ip.into(), move |target, _| {
        let commit = Commit {
            repo: CI_REPO,
            sha: &sha,
        };
        if target == commit.check_runs_path() {
            common::runs(runs.clone())
        } else if target == commit.status_path() {
            commit.statuses(vec![])
        } else {
            commit.not_found()
        }
    })
}

/// What h1's agent says it runs (`berth agent status`), asked on h1.
async fn host_status(h1: &dyn Host, state_dir: &str) -> Value {
    let out = h1
        .run(&Cmd::new(BIN).args([
            "agent",
            "status",
            "--node",
            "web1",
            "--state-dir",
            state_dir,
        ]))
        .await
        .unwrap();
    berth::agent::find_events(&out.stdout, "status")
        .pop()
        .expect("a status event")
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
        // One connection for every command the test runs on h1.
        let ssh = lab.connect("h1").await.unwrap();

        // Runs on h1 as its timer would; `env` is set there, not here.
        let converge_with = |extra: Vec<String>, env: Vec<(&'static str, String)>| {
            let ssh = &ssh;
            let flake = flake.clone();
            let state_arg = state_arg.clone();
            async move {
                let mut cmd = Cmd::new(BIN)
                    .args(["converge", "--json", "--flake", &flake, "--node", "web1"])
                    .args(["--state-dir", &state_arg, "--agent", BIN])
                    .args(extra);
                for (key, value) in env {
                    cmd = cmd.env(key, value);
                }
                let out = ssh.output(&cmd).await.unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                eprintln!("$ berth converge\n{stderr}");
                let event = berth::agent::find_events(&out.stdout, "converge")
                    .pop()
                    .unwrap_or_else(|| panic!("no converge event: {stderr}"));
                (out.status.code(), event, stderr)
            }
        };
        let converge = |extra: &[&str]| {
            converge_with(extra.iter().map(|a| a.to_string()).collect(), Vec::new())
        };
        // With `--require-ci`, asking `server` as GitHub's API.
        let gated = |server: &Server, ci_timeout: u64| {
            converge_with(
                vec![
                    "--require-ci".into(),
                    CI_REPO.into(),
                    "--ci-timeout".into(),
                    ci_timeout.to_string(),
                ],
                vec![
                    ("GITHUB_API_URL", server.url()),
                    ("GITHUB_TOKEN", CI_TOKEN.to_owned()),
                ],
            )
        };
        let profile = || async {
            let link = ssh
                .run(&Cmd::new("readlink").arg("/nix/var/nix/profiles/system"))
                .await
                .unwrap()
                .stdout_str();
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

        // --require-ci. Each revision below is healthy: only the gate keeps
        // it from being deployed.
        let before = host_status(&ssh, &state_arg).await;
        assert_eq!(before["profile"]["number"], 1, "{before}");
        assert!(before["last"]["id"].is_string(), "{before}");
        let job = |id: u64| format!("https://github.com/{CI_REPO}/actions/runs/7000/job/{id}");

        // A failed check: nothing deployed, the run names the check, exit 1.
        commit(&repo, &spec(3, "healthy"));
        let red_sha = head(&repo);
        let red = Commit {
            repo: CI_REPO,
            sha: &red_sha,
        };
        let server = github(
            &lab,
            &red_sha,
            vec![
                red.run(801, "build", "completed", Some("success")),
                red.run(802, "test", "completed", Some("failure")),
            ],
        );
        let (code, event, stderr) = gated(&server, 30).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(event["outcome"], "skipped", "{event}");
        assert_eq!(event["revision"], red_sha.as_str(), "{event}");
        let failed = format!("failed: test (failure, {})", job(802));
        let message = event["message"].as_str().unwrap();
        assert!(message.contains(&failed), "{message}");
        assert!(stderr.contains(&format!("FAIL test (failure, {})", job(802))));
        let after = host_status(&ssh, &state_arg).await;
        assert_eq!(after["profile"], before["profile"], "{after}");
        assert_eq!(after["last"]["id"], before["last"]["id"], "{after}");
        // One poll, of exactly this revision, with the token given on h1.
        assert_eq!(server.targets(), [red.check_runs_path(), red.status_path()]);
        for (_, headers) in server.requests.lock().unwrap().iter() {
            let token = format!("authorization: bearer {CI_TOKEN}");
            assert!(headers.contains(&token), "{headers:?}");
        }
        // Not blocked: the next run asks again, as checks may be re-run.
        let (code, event, _) = gated(&server, 30).await;
        assert_eq!(
            (code, event["outcome"].as_str()),
            (Some(1), Some("skipped"))
        );
        assert_eq!(server.targets().len(), 4);
        drop(server);

        // The next commit: checks still running when --ci-timeout ends
        // skip this run, exit 0.
        commit(&repo, &spec(4, "healthy"));
        let sha = head(&repo);
        let fixed = Commit {
            repo: CI_REPO,
            sha: &sha,
        };
        let server = github(
            &lab,
            &sha,
            vec![fixed.run(901, "build", "in_progress", None)],
        );
        let (code, event, stderr) = gated(&server, 1).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(event["outcome"], "skipped", "{event}");
        assert_eq!(event["revision"], sha.as_str(), "{event}");
        let message = event["message"].as_str().unwrap();
        assert!(
            message
                .ends_with("did not finish in time: still pending build; the next run tries again"),
            "{message}"
        );
        let after = host_status(&ssh, &state_arg).await;
        assert_eq!(after["profile"], before["profile"], "{after}");
        assert_eq!(after["last"]["id"], before["last"]["id"], "{after}");
        // Asked again before giving up, and only about this revision.
        let targets = server.targets();
        let polls = targets
            .iter()
            .filter(|t| **t == fixed.check_runs_path())
            .count();
        assert!(polls >= 2, "{targets:?}");
        assert!(
            targets
                .iter()
                .all(|t| *t == fixed.check_runs_path() || *t == fixed.status_path()),
            "{targets:?}"
        );
        drop(server);

        // Its checks green by the next run: deployed.
        let server = github(
            &lab,
            &sha,
            vec![
                fixed.run(901, "build", "completed", Some("success")),
                fixed.run(902, "lint", "completed", Some("skipped")),
            ],
        );
        let (code, event, stderr) = gated(&server, 30).await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(event["outcome"], "deployed", "{event}");
        assert_eq!(event["revision"], sha.as_str(), "{event}");
        assert!(stderr.contains("2 checks passed: build, lint"), "{stderr}");
        assert_eq!(
            server.targets(),
            [fixed.check_runs_path(), fixed.status_path()]
        );
        let after = host_status(&ssh, &state_arg).await;
        let path = after["profile"]["path"].as_str().unwrap();
        assert!(path.ends_with(&format!("-web1-4.{nonce}")), "{after}");
        assert_ne!(after["profile"]["number"], before["profile"]["number"]);
        let last = &after["last"];
        assert_eq!(last["status"], "confirmed", "{after}");
        assert_eq!(last["reason"], format!("converge {sha}"), "{after}");
        assert_eq!(last["to_path"], path, "{after}");
        assert!(last["actor"].as_str().unwrap().starts_with("converge@"));
        drop(server);

        // Once deployed, the next runs neither ask GitHub nor build: the
        // host already runs this commit (even were its checks red now).
        let server = github(
            &lab,
            &sha,
            vec![fixed.run(901, "build", "completed", Some("failure"))],
        );
        let (code, event, stderr) = gated(&server, 30).await;
        assert_eq!(
            (code, event["outcome"].as_str()),
            (Some(0), Some("unchanged")),
            "{stderr}"
        );
        assert!(server.targets().is_empty(), "{:?}", server.targets());
        assert!(!stderr.contains("building"), "{stderr}");
        drop(server);

        ssh.close().await.unwrap();
        drop(lab);
    });
}
