//! `berth logs` and `berth exec` end to end, on one lab: a systemd host (h1)
//! running the test app `notes` (tests/common/app.rs) and three plain hosts
//! (h2–h4) without systemd, named by a fleet flake (tests/common/fleet.rs).
//! Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth::host::Host;
use berth::lab::HostKind;
use berth::process::Cmd;
use common::app::{Instances, World, SERVICE};
use common::fleet::Fleet;
use common::Run;

fn berth_cmd(w: &World, args: &[&str]) -> Command {
    let mut cmd = common::berth();
    cmd.args(args).env("BERTH_SSH_CONFIG", w.lab.ssh_config());
    cmd
}

fn berth(w: &World, args: &[&str]) -> Run {
    Run::of(&mut berth_cmd(w, args))
}

/// Runs `script` as root on the lab host `host`.
async fn sh_on(w: &World, host: &str, script: &str) -> String {
    let ssh = w.lab.connect(host).await.unwrap();
    let out = ssh
        .run(&Cmd::new("sh").args(["-c", script]))
        .await
        .unwrap_or_else(|e| panic!("{host}: {script}: {e}"));
    ssh.close().await.unwrap();
    out.stdout_str()
}

/// Waits up to `limit` for `done`.
async fn eventually(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done().await
}

/// The pids of this machine's processes whose command line names `word`.
fn processes_naming(word: &str) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(word) {
            found.insert(pid);
        }
    }
    found
}

#[test]
fn logs_and_exec_on_lab_hosts() {
    World::run_with(
        "logs",
        Instances::ONE,
        &[HostKind::Plain, HostKind::Plain, HostKind::Plain],
        async |w| scenarios(w).await,
    );
}

async fn scenarios(w: &World) {
    let rev = w.commit(serde_json::json!({ "v": 1 }), "main").await;
    let run = w.deploy(&rev, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let started = format!("app: revision {rev}, instance 1 on http");

    let mut fleet = Fleet::new("logs");
    let spec = |host: &str, tags: &[&str]| {
        serde_json::json!({
            "host": host,
            "address": w.lab.host(host).unwrap().net.addr.to_string(),
            "version": "1",
            "tags": tags,
        })
    };
    fleet.set("sys1", spec("h1", &["sys"]));
    for (node, host) in [("web2", "h2"), ("web3", "h3"), ("web4", "h4")] {
        fleet.set(node, spec(host, &["web"]));
    }

    service_journal(w, &started).await;
    follow(w).await;
    system_target(w, &fleet);
    no_systemd(w, &fleet);
    exec(w, &fleet).await;
}

/// The service's journal, read as its own user: refused until the user is
/// in `systemd-journal`, then `-n`, `--json` and `--since`.
async fn service_journal(w: &World, started: &str) {
    let run = berth(w, &["logs", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("error: notes on h1 may not read the system journal"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: add notes to the `systemd-journal` group"),
        "{}",
        run.stderr
    );
    // Root may, as the hint says.
    let run = berth(w, &["logs", SERVICE, "--host", "h1", "--user", "root"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(started), "{}", run.stdout);
    w.sh(&format!("usermod -aG systemd-journal {SERVICE}"))
        .await;

    let run = berth(w, &["logs", SERVICE, "--host", "h1", "-n", "50"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(started), "{}", run.stdout);
    // The unit's lines only: the other unit on the host logs too.
    assert!(!run.stdout.contains("other.service"), "{}", run.stdout);
    let run = berth(w, &["logs", SERVICE, "--host", "h1", "-n", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);

    let run = berth(w, &["--json", "logs", SERVICE, "--host", "h1", "-n", "50"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let entries = run.events("journal");
    assert!(!entries.is_empty(), "{}", run.stdout);
    assert_eq!(run.events("journal").len(), run.stdout.lines().count());
    for e in &entries {
        assert_eq!(e["host"], "h1");
        // The app's own lines, or systemd's about the unit.
        let unit = |field: &str| e["entry"][field].as_str() == Some("notes.service");
        assert!(unit("_SYSTEMD_UNIT") || unit("UNIT"), "{e}");
    }
    assert!(entries.iter().any(|e| e["entry"]["MESSAGE"]
        .as_str()
        .is_some_and(|m| m.starts_with(started))));

    // --since: a restart after a moment logs a second start; only it is
    // since that moment.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = w.sh("date '+%Y-%m-%d %H:%M:%S'").await.trim().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.sh(&format!("systemctl restart {SERVICE}")).await;
    let restarted = eventually(Duration::from_secs(15), async || {
        let run = berth(w, &["logs", SERVICE, "--host", "h1", "-n", "1000"]);
        run.stdout.matches(started).count() == 2
    })
    .await;
    assert!(restarted, "the app did not log its second start");
    let run = berth(w, &["logs", SERVICE, "--host", "h1", "--since", &since]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.matches(started).count(), 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("app: signal 15: stopping"),
        "{}",
        run.stdout
    );
    let run = berth(w, &["logs", SERVICE, "--host", "h1", "--since", "-1h"]);
    assert_eq!(run.stdout.matches(started).count(), 2, "{}", run.stdout);
}

/// `-f` shows what the service logs after it started, until berth is
/// interrupted, and leaves nothing running on either side.
async fn follow(w: &World) {
    let config = w.lab.ssh_config().display().to_string();
    let before = processes_naming(&config);
    let journalctls = async || {
        w.sh(&format!("pgrep -u {SERVICE} -x journalctl || true"))
            .await
    };
    assert_eq!(journalctls().await.trim(), "");

    let mut child = berth_cmd(w, &["logs", SERVICE, "--host", "h1", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(15), async || !journalctls()
            .await
            .trim()
            .is_empty())
        .await,
        "no journalctl runs as {SERVICE} on h1"
    );
    assert!(
        processes_naming(&config).len() > before.len(),
        "berth follows without ssh?"
    );
    w.sh(&format!("systemctl restart {SERVICE}")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while !got
        .iter()
        .any(|l: &String| l.contains("app: signal 15: stopping"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => panic!("no line of the restart while following; got {got:?}"),
        }
    }

    // SAFETY: kill(2) to the berth this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth logs -f did not end on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    reader.join().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || journalctls()
            .await
            .trim()
            .is_empty())
        .await,
        "journalctl outlived berth on h1: {}",
        journalctls().await
    );
    let left: Vec<_> = processes_naming(&config)
        .difference(&before)
        .copied()
        .collect();
    assert!(left.is_empty(), "ssh processes left behind: {left:?}");
}

/// A node's host, as root: any unit with `--unit`.
fn system_target(w: &World, fleet: &Fleet) {
    let run = berth(
        w,
        &[
            "logs",
            &fleet.node("sys1"),
            "--unit",
            "other.service",
            "-n",
            "20",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("Started other.service"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("app:"), "{}", run.stdout);
    // Without --unit, the host's whole journal: both units.
    let run = berth(w, &["logs", &fleet.node("sys1"), "--since", "-1h"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("Started other.service"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("app: revision"), "{}", run.stdout);
}

/// A plain host has no systemd: a clear error, whichever way it is named.
fn no_systemd(w: &World, fleet: &Fleet) {
    let run = berth(w, &["logs", &fleet.node("web2")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("error: web2 (h2) has no systemd journal: it was not booted with systemd"),
        "{}",
        run.stderr
    );
    assert!(run
        .stderr
        .contains("hint: `berth logs` reads the journal of hosts that run systemd"));
    assert_eq!(run.stdout, "");
    let run = berth(w, &["logs", SERVICE, "--host", "root@h2", "-f"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: h2 has no systemd journal"),
        "{}",
        run.stderr
    );
}

/// One command on three plain hosts at once, one of which fails it.
async fn exec(w: &World, fleet: &Fleet) {
    sh_on(w, "h3", "touch /nix/berth-exec-fail").await;
    let script = "if [ -e /nix/berth-exec-fail ]; then echo 'not here' >&2; exit 3; fi; echo fine";
    let flake = fleet.flake();
    let run = berth(
        w,
        &[
            "exec", &flake, "--on", "@web", "-p", "4", "--", "sh", "-c", script,
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let mut lines: Vec<&str> = run.stdout.lines().collect();
    lines.sort();
    assert_eq!(lines, ["web2 | fine", "web4 | fine"], "{}", run.stdout);
    for said in [
        "web3 ! not here",
        "2 of 3 host(s) succeeded",
        "web2 (h2): exit 0",
        "web3 (h3): FAILED: exit 3",
        "web4 (h4): exit 0",
    ] {
        assert!(run.stderr.contains(said), "{said}: {}", run.stderr);
    }
    assert!(!run.stderr.contains("sys1"), "{}", run.stderr);

    let run = berth(
        w,
        &[
            "--json", "exec", &flake, "--on", "@web", "--", "sh", "-c", script,
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let mut results = run.events("exec_result");
    results.sort_by_key(|r| r["node"].as_str().unwrap().to_owned());
    let got: Vec<_> = results
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap(),
                r["host"].as_str().unwrap(),
                r["exit_code"].as_i64(),
                r["stdout"].as_str().unwrap(),
                r["stderr"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("web2", "h2", Some(0), "fine\n", ""),
            ("web3", "h3", Some(3), "", "not here\n"),
            ("web4", "h4", Some(0), "fine\n", ""),
        ]
    );
    let summary = &run.events("summary")[0];
    assert_eq!(
        (&summary["hosts"], &summary["ok"], &summary["failed"]),
        (&3.into(), &2.into(), &1.into())
    );

    // Hostile words reach the program as the same words, read by one
    // shell only: the host's, once.
    let pwned = format!("/tmp/berth-logs-test-{}-pwned", std::process::id());
    let touch = format!("$(touch {pwned})");
    let words = [
        touch.as_str(),
        "a b",
        ";",
        "one\ntwo",
        "'",
        "\"",
        "`id`",
        "*",
        "",
        "--",
        "-n",
        "$HOME",
        "\\",
        "&& touch /tmp/x",
    ];
    let runs = "echo ran >> /nix/berth-exec-runs; printf '%s\\n' \"$@\"";
    let mut args = vec![
        "--json",
        "exec",
        &flake,
        "--on",
        "web2,web4",
        "--",
        "sh",
        "-c",
        runs,
        "sh",
    ];
    args.extend(words);
    let run = berth(w, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let want: String = words.iter().map(|word| format!("{word}\n")).collect();
    let results = run.events("exec_result");
    assert_eq!(results.len(), 2);
    for r in &results {
        assert_eq!(r["stdout"].as_str(), Some(want.as_str()), "{r}");
    }
    // And printf itself, with no shell of ours in between.
    let mut args = vec!["exec", &flake, "--on", "web2", "--", "printf", "%s\\n"];
    args.extend(words);
    let run = berth(w, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let want: String = words
        .iter()
        .flat_map(|word| word.split('\n'))
        .map(|line| format!("web2 | {line}\n"))
        .collect();
    assert_eq!(run.stdout, want);
    assert!(!std::path::Path::new(&pwned).exists(), "a hostile word ran");
    for host in ["h2", "h4"] {
        assert_eq!(sh_on(w, host, "cat /nix/berth-exec-runs").await, "ran\n");
    }
    assert_eq!(
        sh_on(w, "h3", "cat /nix/berth-exec-runs 2>/dev/null || true").await,
        ""
    );
}
