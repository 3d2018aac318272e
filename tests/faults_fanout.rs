//! The fault campaign's fan-out row: the serving peer killed at a random
//! moment of a fan-out deploy. Four plain lab hosts behind a 40 Mbit/s
//! uplink, 100 Mbit/s each (so a copy between hosts lasts long enough to
//! be cut), signed systems that share a closure of 24 leaves; each trial
//! deploys new ones, waits for the first host to serve its closure to the
//! others (`agent serve`), and kills that process (SIGKILL) at a random
//! moment within the next 2 s. Each host must end on the new system,
//! confirmed, or on the one it ran, as berth said, with an exit code that
//! says whether all were deployed, and no peer cache left running.
//! A sample of trials under `cargo test`, all 20 under bench/faults/run.

mod common;

use std::time::{Duration, Instant};

use berth::host::Host;
use berth::lab::{HostKind, LabGuard, Rate, Shaping};
use berth::process::Cmd;
use common::fanout::{self, FanFleet, BIN};
use common::faults::{assert_consistent, Row};
use serde_json::{json, Value};

const HOSTS: usize = 4;
const PEER_KILLED: &str = "the first host's peer cache (`agent serve`) killed at a random moment 0–2 s after it starts serving a signed fan-out deploy to 4 hosts";
const PEER_KILLED_EXPECTED: &str = "every host on the new system, confirmed (what its peers did not give comes from the deployer), or on its old one as berth said; exit 0 only when all were deployed; no peer cache left";

/// The pids of this trial's peer caches: `agent serve` of a system named
/// with `salt`, on any lab host (they share this machine's pid space).
fn serving(salt: &str) -> Vec<u32> {
    common::processes(|_, words| {
        words.windows(2).any(|w| w[0] == "agent" && w[1] == "serve")
            && words.iter().any(|w| w.ends_with(&format!("-{salt}")))
    })
}

/// What host `i` runs and what its agent recorded last.
async fn truth(lab: &LabGuard, i: usize) -> (String, Value) {
    let ssh = lab.connect(&format!("h{i}")).await.unwrap();
    // A host that never ran a system has no profile yet.
    let profile = "readlink -f /nix/var/nix/profiles/system || true";
    let path = ssh
        .run(&Cmd::new("sh").args(["-c", profile]))
        .await
        .unwrap()
        .stdout_str()
        .trim()
        .to_owned();
    let out = ssh
        .output(&Cmd::new(BIN).args(["agent", "history", "--limit", "1"]))
        .await
        .unwrap();
    ssh.close().await.unwrap();
    let last = berth::agent::find_events(&out.stdout, "deployment")
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    (path, last)
}

async fn trials(lab: &LabGuard, fleet: &FanFleet, key: &str, row: &mut Row) {
    let mut current: Vec<String> = vec!["none".into(); HOSTS];
    for n in 1..=row.planned() {
        let salt = format!("{}t{n}", std::process::id());
        fleet.salt(&salt);
        let mut child = fanout::deploy_cmd(lab, fleet, &["--sign-key", key])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The first peer cache of this trial, then the fault.
        let started = Instant::now();
        let mut first = None;
        while started.elapsed() < Duration::from_secs(120) {
            if let Some(&pid) = serving(&salt).first() {
                first = Some(pid);
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let moment = row.moment(Duration::ZERO, Duration::from_secs(2));
        let killed = first.map(|pid| {
            std::thread::sleep(moment);
            // SAFETY: kill(2); the pid is this trial's peer cache, found by
            // its command line a moment ago.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) == 0 }
        });
        let out = child.wait_with_output().unwrap();
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let said: Vec<(String, String)> = common::events(&stdout)
            .into_iter()
            .filter(|e| e["event"] == "host_result")
            .map(|e| {
                (
                    e["node"].as_str().unwrap_or("?").to_owned(),
                    e["outcome"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();

        let mut problems = Vec::new();
        if first.is_none() {
            problems.push("no host served its closure to its peers".to_owned());
        }
        let mut deployed = 0;
        for i in 1..=HOSTS {
            let node = format!("fan{i}");
            let (path, last) = truth(lab, i).await;
            let new = path.ends_with(&format!("-nixos-system-{node}-{salt}"));
            let old = if current[i - 1] == "none" {
                path.is_empty()
            } else {
                path.ends_with(&format!("-{}", current[i - 1]))
            };
            let reported = said
                .iter()
                .find(|(n, _)| n == &node)
                .map(|(_, o)| o.as_str());
            match (new, reported) {
                (true, Some("deployed")) if last["status"] == "confirmed" => deployed += 1,
                (true, _) => problems.push(format!(
                    "{node} runs the new system, berth said {reported:?}, its deployment is {}",
                    last["status"]
                )),
                (false, Some("failed" | "rolled_back")) if old => {}
                (false, _) => problems.push(format!(
                    "{node} runs {path} (before: {}), berth said {reported:?}",
                    current[i - 1]
                )),
            }
            if new {
                current[i - 1] = format!("nixos-system-{node}-{salt}");
            }
        }
        if (code == Some(0)) != (deployed == HOSTS) {
            problems.push(format!(
                "exit {code:?} with {deployed} of {HOSTS} hosts deployed"
            ));
        }
        // Peer caches stop when the deploy no longer needs them (each
        // checks four times a second that its session is still there).
        std::thread::sleep(Duration::from_millis(600));
        let left = serving(&salt);
        if !left.is_empty() {
            problems.push(format!("peer caches still running: {left:?}"));
            for pid in left {
                // SAFETY: kill(2) of this trial's own leftover.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        // Hosts that got more than their own toplevel from the deployer:
        // the fault cut what their peers gave them.
        let fell_back = common::events(&stdout)
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| {
                m.strip_prefix("copying the ")
                    .and_then(|m| m.split_once(' '))
                    .is_some_and(|(n, _)| n != "1")
            })
            .count();
        let outcome = match (deployed == HOSTS, fell_back > 0) {
            (true, true) => "deployed-after-fallback",
            (true, false) => "deployed",
            (false, _) => "partly-failed",
        };
        let verdict = if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        };
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        row.record(
            outcome,
            verdict,
            json!({
                "exit": code,
                "killed_after_ms": moment.as_millis(),
                "killed": killed,
                "hosts_that_fell_back": fell_back,
                "hosts": said,
                "stderr_tail": tail.into_iter().rev().collect::<Vec<_>>(),
            }),
        );
    }
}

#[test]
fn fan_out_serving_peer_killed() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = std::path::PathBuf::from(format!(
            "/srv/berth-test-{}-faults-fanout",
            std::process::id()
        ));
        let shaping = Shaping {
            uplink: Some(Rate::parse("40mbit").unwrap()),
            link: Some(Rate::parse("100mbit").unwrap()),
        };
        let lab = LabGuard::up_shaped(&dir, &[HostKind::Plain; HOSTS], shaping)
            .await
            .expect("lab up");
        let keys = tempfile::tempdir().unwrap();
        let (key, _) = fanout::key(keys.path(), "fan-faults");
        let fleet = FanFleet::new("faults-fanout", HOSTS);
        let mut row = Row::new("fan-peer-killed", PEER_KILLED, PEER_KILLED_EXPECTED, 20);
        trials(&lab, &fleet, key.to_str().unwrap(), &mut row).await;
        let result = row.finish();
        lab.down().await.unwrap();
        assert_consistent([result]);
    });
}
