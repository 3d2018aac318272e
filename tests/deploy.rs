//! System deploys end to end, on a lab of four plain hosts (h1–h4) and one
//! systemd host (h5), with the example fleet (examples/fleet: no nixpkgs,
//! a toplevel whose activation serves /health and can misbehave on purpose).
//! Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::path::{Path, PathBuf};

use berth::host::Host;
use berth::lab::{HostKind, Lab, LabGuard};
use berth::process::Cmd;
use common::fleet::{generation, Fleet};
use common::{git, Run};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn berth(ssh_config: &Path, args: &[&str]) -> Run {
    Run::of(
        common::berth()
            .args(args)
            .env("BERTH_SSH_CONFIG", ssh_config),
    )
}

/// `berth deploy … --agent <this build>`: the lab's hosts see the machine's
/// files, so the agent is the binary under test.
fn deploy(lab: &Lab, args: &[&str]) -> Run {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--agent", BIN]);
    berth(&lab.ssh_config(), &all)
}

async fn exists_on(lab: &Lab, host: &str, path: &str) -> bool {
    let ssh = lab.connect(host).await.unwrap();
    let out = ssh
        .output(&Cmd::new("test").args(["-e", path]))
        .await
        .unwrap();
    ssh.close().await.unwrap();
    out.status.success()
}

async fn agent(lab: &Lab, host: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let ssh = lab.connect(host).await.unwrap();
    let out = ssh
        .output(&Cmd::new(BIN).arg("agent").args(args))
        .await
        .unwrap();
    ssh.close().await.unwrap();
    berth::agent::find_events(&out.stdout, "result")
        .into_iter()
        .chain(berth::agent::find_events(&out.stdout, "deployment"))
        .collect()
}

fn spec(host: &str, lab: &Lab, version: &str, tags: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "host": host,
        "address": lab.host(host).unwrap().net.addr.to_string(),
        "version": version,
        "tags": tags,
        "confirmTimeout": 3,
        "retries": 1,
    })
}

#[test]
fn system_deploys_on_lab_hosts() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = PathBuf::from(format!("/srv/berth-test-{}-deploy", std::process::id()));
        let kinds = [
            HostKind::Plain,
            HostKind::Plain,
            HostKind::Plain,
            HostKind::Plain,
            HostKind::Systemd,
        ];
        let mut lab = LabGuard::up(&dir, &kinds).await.expect("lab up");
        // Every run builds new systems, so nothing is already in a store.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let v = |n: u32| format!("{n}.{nonce}");
        let mut fleet = Fleet::new("fleet");
        for (node, host) in [
            ("web1", "h1"),
            ("web2", "h2"),
            ("web3", "h3"),
            ("web4", "h4"),
        ] {
            fleet.set(node, spec(host, &lab, &v(1), &["web"]));
        }
        fleet.set("sys5", spec("h5", &lab, &v(1), &["sys"]));

        // One host.
        let run = deploy(&lab, &[&fleet.node("web1")]);
        assert_eq!(run.code, 0);
        assert!(
            run.stderr.contains("web1 (h1): deployed (generation 1)"),
            "{}",
            run.stderr
        );
        let (link, path) = generation(&lab, "h1").await;
        assert_eq!(link, "system-1-link");
        assert!(
            path.ends_with(&format!("nixos-system-web1-{}", v(1))),
            "{path}"
        );

        // The same again: a cheap check, no copy, no activation.
        let run = deploy(&lab, &["--json", &fleet.node("web1")]);
        assert_eq!(run.code, 0);
        let phases: Vec<String> = run
            .events("phase")
            .iter()
            .map(|e| e["phase"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(phases, ["connect", "check"], "{phases:?}");
        assert_eq!(run.events("host_result")[0]["outcome"], "unchanged");
        assert_eq!(generation(&lab, "h1").await.0, "system-1-link");

        // Four hosts at once, chosen by tag; the systemd host is not one of them.
        let run = deploy(&lab, &["--json", &fleet.flake(), "--on", "@web", "-p", "4"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let results = run.events("host_result");
        // Events come as hosts finish; the order is theirs.
        let mut outcomes: Vec<(&str, &str)> = results
            .iter()
            .map(|r| (r["node"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
            .collect();
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                ("web1", "unchanged"),
                ("web2", "deployed"),
                ("web3", "deployed"),
                ("web4", "deployed")
            ]
        );
        assert!(!exists_on(&lab, "h5", "/nix/var/nix/profiles/system").await);

        // A failing HTTP health check: back to the recorded generation, the
        // failed one deleted.
        fleet.update(
            "web2",
            serde_json::json!({ "version": v(2), "behaviour": "unhealthy" }),
        );
        let run = deploy(&lab, &[&fleet.node("web2")]);
        assert_eq!(run.code, 1);
        assert!(
            run.stderr
                .contains("web2 (h2): rolled back: health check GET http://"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("answered 404 (expected 200"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .contains("back on generation 1; deleted generation 2"),
            "{}",
            run.stderr
        );
        assert_eq!(generation(&lab, "h2").await.0, "system-1-link");
        assert!(!exists_on(&lab, "h2", "/nix/var/nix/profiles/system-2-link").await);

        // Failed units (switch-to-configuration exits 4) count as a failure.
        fleet.update(
            "web4",
            serde_json::json!({ "version": v(2), "behaviour": "failed-units" }),
        );
        let run = deploy(&lab, &[&fleet.node("web4")]);
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains("failed units (exit 4)"),
            "{}",
            run.stderr
        );
        assert_eq!(generation(&lab, "h4").await.0, "system-1-link");

        // A switch that hangs: stopped at its deadline (with what it
        // started), and the host rolled back to the recorded generation.
        fleet.update(
            "web4",
            serde_json::json!({ "version": v(2), "behaviour": "hang" }),
        );
        let run = deploy(&lab, &[&fleet.node("web4"), "--activation-timeout", "3"]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("did not finish within 3s: stopped it"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("web4 (h4): rolled back:") && run.stderr.contains("back on generation 1"),
            "{}",
            run.stderr
        );
        assert_eq!(generation(&lab, "h4").await.0, "system-1-link");
        let ssh = lab.connect("h4").await.unwrap();
        let hung = ssh
            .run(&Cmd::new("sh").args([
                "-c",
                r#"for p in $(pgrep -f '^sleep 2147483647'); do [ "$(readlink /proc/$p/ns/net)" = "$(readlink /proc/self/ns/net)" ] && echo "$p"; done; true"#,
            ]))
            .await
            .unwrap()
            .stdout_str();
        ssh.close().await.unwrap();
        assert_eq!(hung.trim(), "", "the hung switch outlived its deadline");

        // An activation that takes the host's network down: the host rolls
        // itself back when no confirmation comes, and berth says so.
        fleet.update(
            "web3",
            serde_json::json!({ "version": v(2), "behaviour": "link-down" }),
        );
        let run = deploy(&lab, &[&fleet.node("web3")]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("web3 (h3): rolled back"),
            "{}",
            run.stderr
        );
        assert_eq!(generation(&lab, "h3").await.0, "system-1-link");

        // An activation that stops sshd, on the systemd host.
        let run = deploy(&lab, &[&fleet.node("sys5")]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        fleet.update(
            "sys5",
            serde_json::json!({ "version": v(2), "behaviour": "kill-sshd" }),
        );
        let run = deploy(&lab, &[&fleet.node("sys5")]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("sys5 (h5): rolled back"),
            "{}",
            run.stderr
        );
        assert_eq!(generation(&lab, "h5").await.0, "system-1-link");

        // Units that must be active and commands on the host are checked too.
        fleet.update(
            "sys5",
            serde_json::json!({ "version": v(3), "behaviour": "healthy", "units": ["ssh.service"],
                                "commands": [["test", "-s", "/nix/var/berth-example/www/health"]] }),
        );
        let run = deploy(&lab, &[&fleet.node("sys5")]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        fleet.update("sys5", serde_json::json!({ "version": v(4), "units": ["berth-example-missing.service"] }));
        let run = deploy(&lab, &[&fleet.node("sys5")]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("unit berth-example-missing.service is inactive, not active"), "{}", run.stderr);
        fleet.update("sys5", serde_json::json!({ "version": v(5), "units": [], "commands": [["false"]] }));
        let run = deploy(&lab, &[&fleet.node("sys5")]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("health command failed: `false`"), "{}", run.stderr);
        assert_eq!(generation(&lab, "h5").await.0, "system-2-link");

        // A unit that failed during the switch fails the deploy, even when
        // switch-to-configuration itself exits 0.
        fleet.update("sys5", serde_json::json!({ "version": v(6), "commands": [], "behaviour": "failed-unit" }));
        let run = deploy(&lab, &[&fleet.node("sys5")]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        assert!(run.stderr.contains("failed units after the switch: berth-example-broken.service"), "{}", run.stderr);
        assert_eq!(generation(&lab, "h5").await.0, "system-2-link");

        // Built on the host: the result never comes back to this machine.
        fleet.update(
            "web4",
            serde_json::json!({ "version": v(3), "behaviour": "healthy" }),
        );
        let run = deploy(&lab, &[&fleet.node("web4"), "--build-on-target"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(
            run.stderr.contains("building on the host"),
            "{}",
            run.stderr
        );
        let (_, path) = generation(&lab, "h4").await;
        assert!(
            path.ends_with(&format!("nixos-system-web4-{}", v(3))),
            "{path}"
        );
        assert!(
            !Path::new(&path).exists(),
            "{path} came back to the deployer's store"
        );

        // Built on a separate build host (h4) and copied from there to h3.
        fleet.update(
            "web3",
            serde_json::json!({ "version": v(3), "behaviour": "healthy" }),
        );
        let run = deploy(&lab, &[&fleet.node("web3"), "--build-host", "root@h4"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let (_, path) = generation(&lab, "h3").await;
        assert!(
            path.ends_with(&format!("nixos-system-web3-{}", v(3))),
            "{path}"
        );
        assert!(
            exists_on(&lab, "h4", &path).await,
            "the build host lacks {path}"
        );
        assert!(
            !Path::new(&path).exists(),
            "{path} came to the deployer's store"
        );

        // plan: the closure diff and the units that would restart.
        fleet.update(
            "web2",
            serde_json::json!({ "version": v(3), "behaviour": "healthy" }),
        );
        let run = berth(
            &lab.ssh_config(),
            &["--json", "plan", &fleet.node("web2"), "--agent", BIN],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let plan = &run.events("plan")[0];
        assert_eq!(plan["closure"]["changed"][0]["name"], "nixos-system-web2");
        assert_eq!(plan["closure"]["changed"][0]["from"][0], v(1).as_str());
        assert_eq!(plan["closure"]["changed"][0]["to"][0], v(3).as_str());
        assert_eq!(plan["units"]["restart"][0], "example-web.service");
        assert!(run.stderr.contains("example-web.service"), "{}", run.stderr);
        assert_eq!(
            generation(&lab, "h2").await.0,
            "system-1-link",
            "plan changed the host"
        );

        // A host held with `berth lock` refuses deploys by anyone else.
        let ssh_config = lab.ssh_config();
        let lock = |args: &[&str]| {
            let mut all = vec!["lock"];
            all.extend_from_slice(args);
            all.extend_from_slice(&["--host", "h2", "--agent", BIN]);
            berth(&ssh_config, &all)
        };
        let run = lock(&["acquire", "--owner", "ops", "--reason", "disk swap"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let run = deploy(&lab, &[&fleet.node("web2")]);
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains("the host is locked by ops") && run.stderr.contains("disk swap"),
            "{}",
            run.stderr
        );
        assert_eq!(lock(&["release", "--owner", "ops"]).code, 0);

        // Two deploys to one host at once: the second refuses, naming the first.
        let (_, running) = generation(&lab, "h1").await;
        let pending = agent(
            &lab,
            "h1",
            &[
                "activate",
                "--id",
                "held-by-test",
                "--node",
                "web1",
                "--path",
                &running,
                "--goal",
                "test",
                "--confirm-timeout",
                "600",
                "--actor",
                "tester@lab",
            ],
        )
        .await;
        assert_eq!(pending[0]["outcome"], "pending");
        fleet.update("web1", serde_json::json!({ "version": v(2) }));
        let run = deploy(&lab, &[&fleet.node("web1")]);
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains("held-by-test of web1 by tester@lab"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("still pending"), "{}", run.stderr);

        // At boot, an unconfirmed deployment is rolled back.
        let checked = agent(&lab, "h1", &["boot-check"]).await;
        assert_eq!(checked[0]["outcome"], "rolled_back");
        assert_eq!(checked[0]["deployment"]["id"], "held-by-test");

        // … also across a real reboot of the systemd host.
        let (_, running) = generation(&lab, "h5").await;
        let pending = agent(
            &lab,
            "h5",
            &[
                "activate",
                "--id",
                "before-reboot",
                "--node",
                "sys5",
                "--path",
                &running,
                "--goal",
                "test",
                "--confirm-timeout",
                "600",
                "--actor",
                "tester@lab",
            ],
        )
        .await;
        assert_eq!(pending[0]["outcome"], "pending");
        lab.reboot("h5").await.expect("reboot h5");
        let checked = agent(&lab, "h5", &["boot-check"]).await;
        assert_eq!(checked[0]["outcome"], "rolled_back", "{checked:?}");
        let shown = agent(&lab, "h5", &["show", "--id", "before-reboot"]).await;
        assert_eq!(shown[0]["status"], "rolled_back");
        assert_eq!(shown[0]["failure_phase"], "boot");

        // history reads what the host recorded.
        let run = berth(
            &lab.ssh_config(),
            &["history", &fleet.node("web2"), "--agent", BIN],
        );
        assert_eq!(run.code, 0);
        let lines: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.contains("switch"))
            .collect();
        assert_eq!(lines.len(), 2, "{}", run.stderr);
        assert!(
            lines[0].contains("rolled_back") && lines[0].contains("failed at health"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("confirmed"), "{}", lines[1]);

        // A failing canary stops the rest, which are reported as skipped.
        fleet.update(
            "web1",
            serde_json::json!({ "version": v(4), "behaviour": "unhealthy" }),
        );
        fleet.update("web2", serde_json::json!({ "version": v(4) }));
        let run = deploy(
            &lab,
            &[
                "--json",
                &fleet.flake(),
                "--on",
                "web1,web2,web3",
                "--canary",
                "1",
                "-p",
                "2",
            ],
        );
        assert_eq!(run.code, 1, "{}", run.stderr);
        let mut outcomes: Vec<(String, String)> = run
            .events("host_result")
            .iter()
            .map(|r| {
                (
                    r["node"].as_str().unwrap().to_owned(),
                    r["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        outcomes.sort();
        assert_eq!(
            outcomes,
            [
                ("web1".into(), "rolled_back".into()),
                ("web2".into(), "skipped".into()),
                ("web3".into(), "skipped".into())
            ]
        );
        assert!(
            run.stderr
                .contains("web2 (h2): skipped: a canary host failed"),
            "{}",
            run.stderr
        );
        assert_eq!(generation(&lab, "h2").await.0, "system-1-link");

        // A node reached by address, with its own sshOptions (key and
        // known_hosts), which berth's connections and nix copy both honour.
        let address = lab.host("h2").unwrap().net.addr.to_string();
        let key = lab.dir().join("id_ed25519");
        let known = lab.dir().join("known_hosts");
        fleet.update(
            "web2",
            serde_json::json!({
                "host": address,
                "version": v(5),
                "sshOptions": ["-i", key, "-o", format!("UserKnownHostsFile={}", known.display()), "-oIdentitiesOnly=yes"],
            }),
        );
        let run = deploy(&lab, &[&fleet.node("web2")]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains(&format!("web2 ({address}): deployed")), "{}", run.stderr);
        fleet.update("web2", serde_json::json!({ "sshOptions": ["-R", "8080:localhost:80"] }));
        let run = deploy(&lab, &[&fleet.node("web2")]);
        assert_eq!(run.code, 1);
        assert!(run.stderr.contains("sshOptions `-R` is not supported"), "{}", run.stderr);

        superseded_deploys(&lab, &v(10), &v(11)).await;

        stage_guard(&lab, &mut fleet, &v(20)).await;

        bad_input_touches_nothing(&lab, &mut fleet, &v(1)).await;

        drop(fleet);
        lab.down().await.expect("lab down");
    });
}

/// Commits everything in `dir` and returns the commit.
fn commit(dir: &Path) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "fleet"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A directory removed when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Revisions of a git flake: recorded in history and status, and with
/// `--skip-superseded` an older commit leaves alone a host that runs a
/// newer one. On h4, as node rev4 (h4's own node is done with by now).
async fn superseded_deploys(lab: &Lab, old_version: &str, new_version: &str) {
    let mut fleet = Fleet::new("revs");
    let dir = fleet.dir.clone();
    git(&dir, &["init", "-q"]);
    let node = format!("{}#rev4", dir.display());
    let outcome = |run: &Run| {
        let result = &run.events("host_result")[0];
        (
            result["outcome"].as_str().unwrap().to_owned(),
            result["why"].as_str().unwrap_or("").to_owned(),
        )
    };
    // The newest deployment the host recorded.
    let last = |lab: &Lab, node: String| {
        let run = berth(
            &lab.ssh_config(),
            &["--json", "history", &node, "--limit", "1", "--agent", BIN],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.events("deployment")[0].clone()
    };

    // The host has no revision recorded for rev4: it is deployed, and its
    // revision recorded.
    fleet.set("rev4", spec("h4", lab, old_version, &[]));
    let old = commit(&dir);
    let run = deploy(lab, &["--json", &node, "--skip-superseded"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(outcome(&run).0, "deployed");
    assert_eq!(last(lab, node.clone())["revision"], old.as_str());
    let run = berth(
        &lab.ssh_config(),
        &["--json", "status", &node, "--agent", BIN],
    );
    assert_eq!(
        run.events("node_status")[0]["status"]["revision"],
        old.as_str()
    );
    assert!(
        run.stderr.contains(&format!(" at {}", &old[..12])),
        "{}",
        run.stderr
    );

    fleet.update("rev4", serde_json::json!({ "version": new_version }));
    let new = commit(&dir);
    let run = deploy(lab, &[&node]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let on_new = generation(lab, "h4").await;
    assert!(on_new.1.ends_with(new_version), "{on_new:?}");

    // The older commit, after the newer one: left alone before anything is
    // built or copied.
    git(&dir, &["checkout", "-q", "--detach", &old]);
    let run = deploy(lab, &["--json", &node, "--skip-superseded"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        outcome(&run),
        (
            "unchanged".into(),
            format!(
                "superseded: rev4 runs {}, which already contains {}",
                &new[..12],
                &old[..12]
            )
        )
    );
    assert!(!run.stderr.contains("building"), "{}", run.stderr);
    assert!(
        !run.events("phase").iter().any(|p| p["phase"] == "copy"),
        "{}",
        run.stdout
    );
    assert_eq!(generation(lab, "h4").await, on_new);

    // A newer commit that changes nothing for rev4 is recorded all the
    // same, without activating anything: the commit it supersedes is left
    // alone afterwards too.
    git(&dir, &["checkout", "-q", "--detach", &new]);
    std::fs::write(dir.join("README"), "not part of any system\n").unwrap();
    let later = commit(&dir);
    let run = deploy(lab, &["--json", &node]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        outcome(&run),
        ("unchanged".into(), "already running this system".into())
    );
    let recorded = last(lab, node.clone());
    assert_eq!(
        (
            &recorded["goal"],
            &recorded["revision"],
            &recorded["status"]
        ),
        (
            &serde_json::json!("unchanged"),
            &serde_json::json!(later),
            &serde_json::json!("confirmed")
        )
    );
    assert_eq!(generation(lab, "h4").await, on_new);
    git(&dir, &["checkout", "-q", "--detach", &new]);
    let run = deploy(lab, &["--json", &node, "--skip-superseded"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        outcome(&run).1,
        format!(
            "superseded: rev4 runs {}, which already contains {}",
            &later[..12],
            &new[..12]
        )
    );

    // The same commit: unchanged.
    git(&dir, &["checkout", "-q", "--detach", &later]);
    let run = deploy(lab, &["--json", &node, "--skip-superseded"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        outcome(&run),
        (
            "unchanged".into(),
            format!("rev4 already runs {}", &later[..12])
        )
    );

    // A shallow clone of the older commit (as CI checks out) cannot tell
    // what the host's newer commit contains: that node is not deployed.
    git(&dir, &["tag", "old", &old]);
    let shallow = Removed(PathBuf::from(format!("{}-shallow", dir.display())));
    let _ = std::fs::remove_dir_all(&shallow.0);
    git(
        Path::new("/"),
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            "--branch",
            "old",
            &format!("file://{}", dir.display()),
            shallow.0.to_str().unwrap(),
        ],
    );
    let run = deploy(
        lab,
        &[
            &format!("{}#rev4", shallow.0.display()),
            "--skip-superseded",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("is a shallow clone") && run.stderr.contains("fetch-depth: 0"),
        "{}",
        run.stderr
    );
    assert_eq!(generation(lab, "h4").await, on_new);

    // Uncommitted changes: there is no commit to compare, a usage error.
    git(&dir, &["checkout", "-q", "--detach", &old]);
    fleet.update("rev4", serde_json::json!({ "version": "dirty" }));
    let run = deploy(lab, &[&node, "--skip-superseded"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("has uncommitted changes") && run.stderr.contains("hint: "),
        "{}",
        run.stderr
    );
    git(&dir, &["checkout", "-q", "--", "fleet.json"]);

    // Without the flag, the older commit deploys.
    let run = deploy(lab, &[&node]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let on_old = generation(lab, "h4").await;
    assert!(on_old.1.ends_with(old_version), "{on_old:?}");
    assert_eq!(last(lab, node.clone())["revision"], old.as_str());

    // The agent holds an activation to what the check saw: a host whose
    // system changed since is refused, and nothing changes.
    let refused = agent(
        lab,
        "h4",
        &[
            "activate",
            "--id",
            "stale-check",
            "--node",
            "rev4",
            "--path",
            &on_new.1,
            "--actor",
            "tester@lab",
            "--revision",
            &later,
            "--expect-revision",
            &later,
        ],
    )
    .await;
    assert_eq!(refused[0]["outcome"], "busy", "{refused:?}");
    assert!(
        refused[0]["message"]
            .as_str()
            .unwrap()
            .contains("changed since berth checked it"),
        "{refused:?}"
    );
    assert_eq!(generation(lab, "h4").await, on_old);
}

/// `--stage`: a node that declares another stage, or none, is refused
/// before anything is built or copied; one that declares it deploys.
async fn stage_guard(lab: &Lab, fleet: &mut Fleet, version: &str) {
    fleet.update(
        "web3",
        serde_json::json!({ "version": version, "stage": "production" }),
    );
    fleet.update("web4", serde_json::json!({ "version": version }));
    let before3 = generation(lab, "h3").await;
    let before4 = generation(lab, "h4").await;

    let run = deploy(lab, &[&fleet.node("web3"), "--stage", "staging"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "error: node web3 declares stage `production`, not `staging`: \
             refusing to deploy it with --stage staging"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: "), "{}", run.stderr);
    assert!(!run.stderr.contains("building"), "{}", run.stderr);
    assert_eq!(generation(lab, "h3").await, before3);

    // A node without a stage fails closed; BERTH_STAGE is the flag's default.
    let run = Run::of(
        common::berth()
            .args([
                "deploy",
                &fleet.flake(),
                "--on",
                "web3,web4",
                "--agent",
                BIN,
            ])
            .env("BERTH_SSH_CONFIG", lab.ssh_config())
            .env("BERTH_STAGE", "production"),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "error: node web4 declares no stage: refusing to deploy it with --stage production"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("berth.deployment.stage = \"production\";"),
        "{}",
        run.stderr
    );
    assert_eq!(generation(lab, "h3").await, before3);
    assert_eq!(generation(lab, "h4").await, before4);

    let run = deploy(lab, &[&fleet.node("web3"), "--stage", "Prod"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("`Prod` is not a valid stage"),
        "{}",
        run.stderr
    );

    // The declared stage deploys; without --stage nothing is checked.
    let run = deploy(lab, &[&fleet.node("web3"), "--stage", "production"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after3 = generation(lab, "h3").await;
    assert_ne!(after3, before3);
    assert!(
        after3.1.ends_with(&format!("nixos-system-web3-{version}")),
        "{after3:?}"
    );
    let run = deploy(lab, &[&fleet.node("web4")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_ne!(generation(lab, "h4").await, before4);
}

async fn bad_input_touches_nothing(lab: &Lab, fleet: &mut Fleet, version: &str) {
    let before = agent(lab, "h1", &["history", "--node", "web1"]).await.len();

    let run = deploy(lab, &[&fleet.node("nope")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
    assert!(
        run.stderr.contains("web1"),
        "names the known nodes: {}",
        run.stderr
    );

    let run = deploy(lab, &[&fleet.flake(), "--on", "web*,"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.starts_with("error:"), "{}", run.stderr);

    let run = deploy(lab, &[&fleet.flake(), "--on", "@nosuchtag"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("@nosuchtag"), "{}", run.stderr);

    let broken = Fleet::new("broken");
    std::fs::write(
        broken.dir.join("flake.nix"),
        "{ outputs = { self }: { nixosConfigurations = ; }; }",
    )
    .unwrap();
    let run = deploy(lab, &[&broken.flake()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("syntax error"),
        "carries nix's message: {}",
        run.stderr
    );

    let bare = Fleet::new("bare");
    std::fs::write(
        bare.dir.join("flake.nix"),
        "{ outputs = { self }: { nixosConfigurations.web1 = { config = { }; }; }; }",
    )
    .unwrap();
    let run = deploy(lab, &[&bare.flake()]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("web1 has no config.system.build.toplevel"),
        "{}",
        run.stderr
    );

    let mut far = Fleet::new("far");
    far.set("lost", serde_json::json!({ "host": "h99.invalid", "address": "10.231.255.254", "version": version }));
    let run = deploy(lab, &[&far.node("lost")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("could not connect to root@h99.invalid"),
        "{}",
        run.stderr
    );

    // h1 offering a key that is not the recorded one.
    let known = lab.dir().join("known_hosts");
    let text = std::fs::read_to_string(&known).unwrap();
    let h2_key = text
        .lines()
        .find(|l| l.starts_with("h2,"))
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1;
    let wrong = lab.dir().join("known_hosts.wrong");
    let h1_addr = lab.host("h1").unwrap().net.addr;
    std::fs::write(&wrong, format!("h1,{h1_addr} {h2_key}\n")).unwrap();
    let config = lab.dir().join("ssh_config.wrong");
    let ssh_config = std::fs::read_to_string(lab.ssh_config())
        .unwrap()
        .replace(known.to_str().unwrap(), wrong.to_str().unwrap());
    std::fs::write(&config, ssh_config).unwrap();
    let run = berth(&config, &["deploy", &fleet.node("web1"), "--agent", BIN]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("known_hosts"), "{}", run.stderr);

    assert_eq!(
        agent(lab, "h1", &["history", "--node", "web1"]).await.len(),
        before,
        "bad input changed h1"
    );
}
