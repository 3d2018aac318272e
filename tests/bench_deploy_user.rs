//! What deploying as a deploy user through sudo costs against deploying as
//! root, on one systemd lab host with Nix's daemon (common::lab_deploy_user):
//! a deploy of a new system and a no-op, each as root and as `deploy`,
//! alternating which goes first, both signed (so both send signatures and
//! the host verifies them). Under `cargo test` one round proves the
//! benchmark runs; `bench/deploy-user/run` runs `BERTH_BENCH_RUNS` rounds
//! and prints the medians as BENCHMARKS.md records them. Needs root and the
//! lab's packages (scripts/install-deps).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use berth::lab::{HostKind, LabGuard};
use common::fleet::Fleet;
use common::Run;

const BIN: &str = env!("CARGO_BIN_EXE_berth");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn deploy_user_against_root() {
    let rounds: usize = std::env::var("BERTH_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = PathBuf::from(format!("/srv/berth-test-{}-bench-user", std::process::id()));
        let lab = LabGuard::up(&dir, &[HostKind::Systemd]).await.expect("lab up");
        let (_keys, key, _) = common::lab_deploy_user(&lab, BIN).await;
        let addr = lab.host("h1").unwrap().net.addr.to_string();
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let mut fleet = Fleet::new("bench-user");
        let mut version = 0;
        let mut times: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        let mut timed = |fleet: &mut Fleet, user: &'static str, fresh: bool, label: &'static str| {
            if fresh {
                version += 1;
            }
            fleet.set(
                "web1",
                serde_json::json!({ "host": "h1", "address": addr, "version": format!("{version}.{nonce}"),
                                    "confirmTimeout": 10, "retries": 1, "targetUser": user }),
            );
            let started = Instant::now();
            let run = Run::of(
                common::berth()
                    .args(["deploy", &fleet.node("web1"), "--agent", BIN, "--sign-key", &key])
                    .env("BERTH_SSH_CONFIG", lab.ssh_config()),
            );
            let took = started.elapsed().as_secs_f64();
            assert_eq!(run.code, 0, "{label}: {}", run.stderr);
            let expected = if fresh { "deployed" } else { "already running this system" };
            assert!(run.stderr.contains(expected), "{label}: {}", run.stderr);
            times.entry(label).or_default().push(took);
        };
        // A first deploy, untimed: the host's Nix gets the shared paths.
        timed(&mut fleet, "root", true, "warm-up");
        for round in 0..rounds {
            let order: [&'static str; 2] = if round % 2 == 0 { ["root", "deploy"] } else { ["deploy", "root"] };
            for user in order {
                let (deploy, noop) = if user == "root" {
                    ("deploy as root", "no-op as root")
                } else {
                    ("deploy as deploy", "no-op as deploy")
                };
                timed(&mut fleet, user, true, deploy);
                timed(&mut fleet, user, false, noop);
            }
        }
        let m = |label: &str| median(times[label].clone());
        let spread = |label: &str| {
            let v = &times[label];
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            format!("{lo:.3}–{hi:.3}")
        };
        let mut table = String::from(
            "| benchmark | as root (s) | as deploy user (s) | ratio | goal | met |\n| --- | --- | --- | --- | --- | --- |\n",
        );
        for (what, root, user) in [
            ("1-host deploy of a new system, signed", "deploy as root", "deploy as deploy"),
            ("no-op redeploy", "no-op as root", "no-op as deploy"),
        ] {
            let ratio = m(user) / m(root);
            table.push_str(&format!(
                "| {what} | {:.3} ({}) | {:.3} ({}) | {ratio:.2} | ≤ 1.05 | {} |\n",
                m(root),
                spread(root),
                m(user),
                spread(user),
                if ratio <= 1.05 { "yes" } else { "**no**" }
            ));
        }
        eprintln!("{rounds} round(s), medians (min–max):\n\n{table}");
        if let Ok(out) = std::env::var("BERTH_BENCH_OUT") {
            std::fs::write(out, &table).unwrap();
        }
        lab.down().await.expect("lab down");
    });
}
