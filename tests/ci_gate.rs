//! `berth ci-gate` against a real HTTP server on 127.0.0.1 that replays
//! GitHub API answers, poll by poll: checks pending then green, one failed,
//! none triggered, a required check that never comes, a failed commit
//! status, an unknown commit, pagination.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use common::{events, run, runs, Commit, Server};

const REPO: &str = "berth-deploy/notes";
const SHA: &str = "3f2a9c1e0b7d4c65a8e1f0d2b3c4a5e6f7081920";
const COMMIT: Commit<'static> = Commit {
    repo: REPO,
    sha: SHA,
};

/// berth, talking to `server` as GitHub's API.
fn berth_with(server: &Server) -> Command {
    let mut cmd = common::berth();
    cmd.env("GITHUB_API_URL", server.url());
    cmd
}

fn berth(server: &Server) -> Command {
    let mut cmd = berth_with(server);
    cmd.args(["ci-gate", "--repo", REPO, "--sha", SHA]);
    cmd
}

#[test]
fn pending_then_green_passes() {
    let server = Server::start(|target, hit| {
        if target == COMMIT.check_runs_path() {
            let (status, conclusion) = match hit {
                0 | 1 => ("in_progress", None),
                _ => ("completed", Some("success")),
            };
            runs(vec![
                COMMIT.run(101, "build", status, conclusion),
                COMMIT.run(102, "lint", "completed", Some("skipped")),
            ])
        } else if target == COMMIT.status_path() {
            COMMIT.statuses(vec![])
        } else {
            COMMIT.not_found()
        }
    });
    let (code, stdout, stderr) = run(berth(&server).env("GITHUB_TOKEN", "ghp_test").args([
        "--json",
        "--require",
        "build",
        "--interval",
        "0.1",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let build = format!("https://github.com/{REPO}/actions/runs/7000/job/101");
    assert_eq!(
        lines,
        [
            "waiting for the checks of berth-deploy/notes@3f2a9c1".to_owned(),
            format!("wait build (in_progress, {build})"),
            format!("ok   lint (skipped, https://github.com/{REPO}/actions/runs/7000/job/102)"),
            format!("ok   build (success, {build})"),
            "2 checks passed: build, lint".to_owned(),
        ]
    );
    // Three polls: two while build ran, one after.
    let polls = server
        .targets()
        .iter()
        .filter(|t| **t == COMMIT.check_runs_path())
        .count();
    assert_eq!(polls, 3);
    let events = events(&stdout);
    assert_eq!(events.len(), 4, "{stdout}");
    assert_eq!(
        events[0],
        json!({"event": "check", "name": "build", "kind": "check_run", "state": "pending",
               "conclusion": "in_progress", "url": build})
    );
    assert_eq!(events[2]["state"], "passed");
    assert_eq!(
        events[3],
        json!({"event": "ci_gate", "repo": REPO, "sha": SHA, "outcome": "passed",
               "passed": ["build", "lint"], "failed": [], "pending": []})
    );
    // What GitHub asks of a client.
    let requests = server.requests.lock().unwrap();
    let headers = &requests[0].1;
    for want in [
        "authorization: bearer ghp_test",
        "accept: application/vnd.github+json",
        "x-github-api-version: 2022-11-28",
    ] {
        assert!(headers.iter().any(|h| h == want), "{want} in {headers:?}");
    }
    assert!(headers.iter().any(|h| h.starts_with("user-agent: berth/")));
}

#[test]
fn a_failed_check_fails_naming_it() {
    let server = Server::start(|target, _| {
        if target == COMMIT.check_runs_path() {
            runs(vec![
                COMMIT.run(201, "build", "completed", Some("success")),
                COMMIT.run(202, "test", "completed", Some("failure")),
                COMMIT.run(203, "e2e", "queued", None),
            ])
        } else if target == COMMIT.status_path() {
            COMMIT.statuses(vec![])
        } else {
            COMMIT.not_found()
        }
    });
    let (code, stdout, stderr) = run(berth(&server).arg("--json"));
    assert_eq!(code, 1, "{stderr}");
    let url = format!("https://github.com/{REPO}/actions/runs/7000/job/202");
    assert!(
        stderr.contains(&format!("FAIL test (failure, {url})")),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!(
            "the checks of berth-deploy/notes@3f2a9c1 failed: test (failure, {url})\n"
        )),
        "{stderr}"
    );
    let last = events(&stdout).pop().unwrap();
    assert_eq!(last["outcome"], "failed");
    assert_eq!(last["failed"], json!(["test"]));
    assert_eq!(last["pending"], json!(["e2e"]));
}

#[test]
fn no_checks_at_all_pass_at_once() {
    let server = Server::start(|target, _| {
        if target == COMMIT.check_runs_path() {
            runs(vec![])
        } else if target == COMMIT.status_path() {
            COMMIT.statuses(vec![])
        } else {
            COMMIT.not_found()
        }
    });
    let (code, _, stderr) = run(&mut berth(&server));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("no checks on berth-deploy/notes@3f2a9c1: no workflow ran for it"),
        "{stderr}"
    );
    assert_eq!(
        server.targets(),
        [COMMIT.check_runs_path(), COMMIT.status_path()]
    );
}

#[test]
fn a_required_check_that_never_comes_times_out() {
    let server = Server::start(|target, _| {
        if target == COMMIT.check_runs_path() {
            runs(vec![COMMIT.run(301, "build", "completed", Some("success"))])
        } else if target == COMMIT.status_path() {
            COMMIT.statuses(vec![])
        } else {
            COMMIT.not_found()
        }
    });
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run(berth(&server).args([
        "--json",
        "--require",
        "deploy-preview",
        "--timeout",
        "2",
        "--interval",
        "0.2",
    ]));
    assert_eq!(code, 4, "{stderr}");
    assert!(started.elapsed().as_secs_f64() < 4.0);
    assert!(
        stderr.ends_with(
            "the checks of berth-deploy/notes@3f2a9c1 did not finish in time: \
             still pending deploy-preview\n"
        ),
        "{stderr}"
    );
    let last = events(&stdout).pop().unwrap();
    assert_eq!(last["outcome"], "timed_out");
    assert_eq!(last["pending"], json!(["deploy-preview"]));
    assert_eq!(last["passed"], json!(["build"]));
    // Polled all along, and build reported once.
    assert!(server.targets().len() >= 6, "{:?}", server.targets());
    assert_eq!(stderr.matches("ok   build").count(), 1, "{stderr}");
}

#[test]
fn a_failed_commit_status_fails() {
    let server = Server::start(|target, _| {
        if target == COMMIT.check_runs_path() {
            runs(vec![COMMIT.run(401, "build", "completed", Some("success"))])
        } else if target == COMMIT.status_path() {
            COMMIT.statuses(vec![json!({
                "url": format!("https://api.github.com/repos/{REPO}/statuses/{SHA}"),
                "id": 501,
                "state": "failure",
                "description": "2 tests failed",
                "target_url": "https://ci.example.com/job/notes/88",
                "context": "ci/jenkins",
                "created_at": "2026-11-23T12:00:00Z",
                "updated_at": "2026-11-23T12:04:00Z"
            })])
        } else {
            COMMIT.not_found()
        }
    });
    let (code, _, stderr) = run(&mut berth(&server));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("failed: ci/jenkins (failure, https://ci.example.com/job/notes/88)"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_commit_is_a_usage_error() {
    let server = Server::start(|_, _| COMMIT.not_found());
    let (code, _, stderr) = run(&mut berth(&server));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("error: no commit {SHA} in {REPO}\n")),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: check the repository and the commit"),
        "{stderr}"
    );
    assert!(stderr.contains("GITHUB_TOKEN is not set"), "{stderr}");
}

#[test]
fn a_refused_token_is_named() {
    let server = Server::start(|_, _| {
        (
            401,
            String::new(),
            r#"{"message":"Bad credentials","status":"401"}"#.into(),
        )
    });
    let (code, _, stderr) = run(berth(&server).env("GITHUB_TOKEN", "ghp_old"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("error: GitHub does not accept GITHUB_TOKEN (401 Unauthorized)"),
        "{stderr}"
    );
}

#[test]
fn every_page_of_check_runs_is_read() {
    // The `Link` header names the server's own port, known once it runs.
    let port = Arc::new(AtomicU16::new(0));
    let own_port = port.clone();
    let server = Server::start(move |target, _| {
        let page2 = format!("{}&page=2", COMMIT.check_runs_path());
        let page = |run: Value| json!({ "total_count": 2, "check_runs": [run] }).to_string();
        if target == COMMIT.check_runs_path() {
            let next = format!(
                "http://127.0.0.1:{}{page2}",
                own_port.load(Ordering::SeqCst)
            );
            let link = format!("Link: <{next}>; rel=\"next\", <{next}>; rel=\"last\"\r\n");
            (
                200,
                link,
                page(COMMIT.run(601, "build", "completed", Some("success"))),
            )
        } else if target == page2 {
            (
                200,
                String::new(),
                page(COMMIT.run(602, "test", "completed", Some("failure"))),
            )
        } else if target == COMMIT.status_path() {
            COMMIT.statuses(vec![])
        } else {
            COMMIT.not_found()
        }
    });
    port.store(server.port(), Ordering::SeqCst);
    let (code, _, stderr) = run(&mut berth(&server));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("failed: test (failure"), "{stderr}");
    assert!(stderr.contains("ok   build (success"), "{stderr}");
}

/// A server whose only check failed.
fn red() -> Server {
    Server::start(|target, _| {
        if target == COMMIT.check_runs_path() {
            runs(vec![COMMIT.run(
                701,
                "test",
                "completed",
                Some("cancelled"),
            )])
        } else if target == COMMIT.status_path() {
            COMMIT.statuses(vec![])
        } else {
            COMMIT.not_found()
        }
    })
}

#[test]
fn app_deploy_with_a_red_gate_deploys_nothing() {
    let server = red();
    let mut cmd = berth_with(&server);
    cmd.args(["app", "deploy", "notes", "--host", "nowhere.invalid"])
        .args(["--rev", SHA, "--ci-gate", REPO]);
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(
            "error: nothing was deployed: the checks of berth-deploy/notes@3f2a9c1 failed: \
             test (cancelled, https://github.com/berth-deploy/notes/actions/runs/7000/job/701)\n"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("nowhere.invalid"), "{stderr}");
}

#[test]
fn gated_deploys_need_an_exact_commit() {
    let server = red();
    let gated = |args: &[&str]| {
        let mut cmd = berth_with(&server);
        cmd.env_remove("GITHUB_SHA").args(args);
        run(&mut cmd)
    };
    let (code, _, stderr) = gated(&[
        "app",
        "deploy",
        "notes",
        "--host",
        "h",
        "--rev",
        "3f2a9c1",
        "--ci-gate",
        REPO,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--ci-gate needs a full commit SHA in --rev, not `3f2a9c1`"),
        "{stderr}"
    );
    let (code, _, stderr) = gated(&[
        "app",
        "deploy",
        "notes",
        "--host",
        "h",
        "--ref",
        "main",
        "--ci-gate",
        REPO,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not --ref or --tag"), "{stderr}");

    // A system deploy gates on the flake's own commit, before evaluating
    // it (this flake has no nixosConfigurations to evaluate).
    let flake = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| common::git(flake.path(), args);
    std::fs::write(flake.path().join("flake.nix"), "{ outputs = _: { }; }\n").unwrap();
    git(&["init", "-q"]);
    git(&["add", "flake.nix"]);
    git(&["commit", "-q", "-m", "fleet"]);
    let head = git(&["rev-parse", "HEAD"]);
    let target = format!("{}#web", flake.path().display());
    let (code, _, stderr) = gated(&["deploy", &target, "--ci-gate", REPO]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("no commit {head}")), "{stderr}");
    assert!(
        server.targets().iter().any(|t| t.contains(&head)),
        "{:?}",
        server.targets()
    );
    // --ci-sha wins; the red checks stop the deploy before evaluation.
    let (code, _, stderr) = gated(&["deploy", &target, "--ci-gate", REPO, "--ci-sha", SHA]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("nothing was deployed"), "{stderr}");
    // A dirty tree has no commit: say what to do.
    std::fs::write(
        flake.path().join("flake.nix"),
        "{ outputs = _: { x = 1; }; }\n",
    )
    .unwrap();
    let (code, _, stderr) = gated(&["deploy", &target, "--ci-gate", REPO]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("the flake has none"), "{stderr}");
    assert!(stderr.contains("--ci-sha SHA"), "{stderr}");
}
