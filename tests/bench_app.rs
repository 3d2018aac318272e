//! bench/app/run's rounds: app deploys and rollbacks of the test app on a
//! systemd lab host under a poller, against a deploy as a shell workflow
//! does it (tests/common/app.rs sets the host up). Ignored under `cargo
//! test`. Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::app::{Instances, Poller, World, DIR, SERVICE};
use common::Run;

/// One berth run timed from outside, with when each `phase` event arrived.
struct Timed {
    run: Run,
    took: Duration,
    phases: Vec<(String, Duration)>,
}

impl Timed {
    /// When the first `phase` event named `name` arrived.
    fn at(&self, name: &str) -> Duration {
        self.phases
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("no phase {name} in:\n{}", self.run.stdout))
    }

    /// Up to the record (connect, agent start, lock, fetch), the record to
    /// the stop (checkout, install, snapshot), stop to start (stop,
    /// migrate, swap), start to healthy (start, health check with its
    /// settle time), and after.
    fn parts(&self) -> [Duration; 5] {
        let (recorded, stop) = (self.at("recorded"), self.at("stop"));
        let (start, healthy) = (self.at("start"), self.at("healthy"));
        [
            recorded,
            stop - recorded,
            start - stop,
            healthy - start,
            self.took - healthy,
        ]
    }
}

impl World {
    /// Runs `berth …` with stdout read as it comes, stderr kept quiet
    /// unless it fails; it must succeed.
    async fn timed(&self, args: &[&str]) -> Timed {
        use std::io::Read;
        let mut cmd = self.berth_cmd(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let (mut stdout, mut phases) = (String::new(), Vec::new());
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                if let (true, Some(phase)) = (event["event"] == "phase", event["phase"].as_str()) {
                    phases.push((phase.to_owned(), started.elapsed()));
                }
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let status = child.wait().unwrap();
        let took = started.elapsed();
        let run = Run {
            code: status.code().expect("berth was killed"),
            stdout,
            stderr: stderr.join().unwrap(),
        };
        if (run.code, run.outcome().as_str()) != (0, "confirmed") {
            let journal = self
                .sh("journalctl -u notes.service -n 60 --no-pager -o short-precise")
                .await;
            panic!(
                "berth {} exited {}:\n{}\nthe unit's journal:\n{journal}",
                args.join(" "),
                run.code,
                run.stderr
            );
        }
        Timed { run, took, phases }
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// A deploy of `rev` as a shell workflow does it, without snapshot,
/// migration, settle time or records: one new SSH connection as the
/// service's user that fetches, checks the revision out into its own
/// directory, installs, points `current` at it, restarts the unit and waits
/// until the app answers with the revision. Its wall time.
fn raw_deploy(w: &World, rev: &str) -> Duration {
    let script = format!(
        r#"set -e
cd {DIR}
git -C repo.git fetch -q origin '+refs/heads/*:refs/raw/*'
dir={DIR}/raw/{rev}
mkdir -p "$dir"
git -C repo.git archive {rev} | tar -x -C "$dir"
echo {rev} > "$dir/.berth-revision"
(cd "$dir" && bash install.sh)
ln -sfn "$dir" current.raw && mv -T current.raw current
sudo -n systemctl restart {SERVICE}.service
until curl -sf http://127.0.0.1:{PORT}/health | grep -q {rev}; do sleep 0.02; done
"#,
        PORT = common::app::PORT,
    );
    let started = Instant::now();
    let out = std::process::Command::new("ssh")
        .arg("-F")
        .arg(w.lab.ssh_config())
        .args(["-l", SERVICE, "h1", &script])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "the raw steps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Labs running besides this one (tests, benchmarks): they share the CPUs.
fn other_labs() -> usize {
    std::fs::read_dir("/run/berth-lab/slots").map_or(0, |d| d.count().saturating_sub(1))
}

/// The issue's app-deploy goals: failed requests from a client polling
/// /health every 10 ms during successful deploys (goal 0), and rollback
/// time over deploy time (goal ≤ 0.3). Rounds of a deploy of a new
/// revision then `app rollback` to the release it replaced, each under a
/// poller, first for the plain unit, then for the same app with
/// `socketActivation` (goal 0 failed requests with it); prints a Markdown
/// table of each. Run by bench/app/run.
#[test]
#[ignore = "a benchmark: bench/app/run"]
fn bench_app_deploys() {
    let rounds: usize = std::env::var("BERTH_BENCH_RUNS")
        .ok()
        .map_or(10, |r| r.parse().expect("BERTH_BENCH_RUNS is a number"));
    for (how, what) in [
        (
            Instances::ONE,
            "the plain unit (`socketActivation = false`)",
        ),
        (Instances::SOCKET, "`socketActivation = true`"),
    ] {
        World::run_with("bench", how, &[], async |w| {
            bench_rounds(w, rounds, what).await
        });
    }
}

async fn bench_rounds(w: &World, rounds: usize, what: &str) {
    let others_before = other_labs();
    // The first deploy (nothing ran before) is not measured.
    let base = w.commit(serde_json::json!({ "v": 0 }), "main").await;
    w.timed(&["app", "deploy", SERVICE, "--host", "h1", "--rev", &base])
        .await;

    let mut rows = Vec::new();
    let (mut deploys, mut rollbacks) = (Vec::new(), Vec::new());
    let (mut deploy_parts, mut rollback_parts) = (Vec::new(), Vec::new());
    let (mut deploy_req, mut rollback_req) = ((0, 0), (0, 0));
    for n in 1..=rounds {
        let rev = w.commit(serde_json::json!({ "v": n }), "main").await;
        let poller = Poller::start(&w.addr);
        let deploy = w
            .timed(&["app", "deploy", SERVICE, "--host", "h1", "--rev", &rev])
            .await;
        let (d_failed, d_total) = poller.stop();
        assert_eq!(w.serving().as_deref(), Some(rev.as_str()));

        let poller = Poller::start(&w.addr);
        let rollback = w.timed(&["app", "rollback", SERVICE, "--host", "h1"]).await;
        let (r_failed, r_total) = poller.stop();
        assert_eq!(w.serving().as_deref(), Some(base.as_str()));

        let row = format!(
            "| {n} | {} | {d_failed}/{d_total} | {} | {r_failed}/{r_total} | {:.2} |",
            secs(deploy.took),
            secs(rollback.took),
            rollback.took.as_secs_f64() / deploy.took.as_secs_f64(),
        );
        eprintln!("{row}");
        rows.push(row);
        deploy_req = (deploy_req.0 + d_failed, deploy_req.1 + d_total);
        rollback_req = (rollback_req.0 + r_failed, rollback_req.1 + r_total);
        deploys.push(deploy.took);
        rollbacks.push(rollback.took);
        deploy_parts.push(deploy.parts());
        rollback_parts.push(rollback.parts());
    }

    // The raw steps last: they move `current` behind berth's back.
    let mut raws = Vec::new();
    for n in 1..=rounds {
        let rev = w
            .commit(serde_json::json!({ "v": n, "raw": true }), "main")
            .await;
        raws.push(raw_deploy(w, &rev));
        assert_eq!(w.serving().as_deref(), Some(rev.as_str()));
    }

    let (deploy, rollback) = (median(deploys.clone()), median(rollbacks.clone()));
    let raw = median(raws.clone());
    let ratio = rollback.as_secs_f64() / deploy.as_secs_f64();
    let range = |v: &[Duration]| {
        format!(
            "{}–{}",
            secs(*v.iter().min().unwrap()),
            secs(*v.iter().max().unwrap())
        )
    };
    let part =
        |parts: &[[Duration; 5]], i: usize| secs(median(parts.iter().map(|p| p[i]).collect()));
    let mut out = String::new();
    out += &format!(
        "\n{what}: {rounds} rounds of: deploy a new revision, then `app rollback` to the \
         one it replaced; a client polls /health every 10 ms across each; other labs \
         running: {others_before} before, {} after\n\n",
        other_labs()
    );
    out += "| round | deploy (s) | failed/total requests | rollback (s) | failed/total requests | rollback / deploy |\n";
    out += "| --- | --- | --- | --- | --- | --- |\n";
    for row in &rows {
        out += row;
        out += "\n";
    }
    out += &format!(
        "| median | {} | {}/{} in all | {} | {}/{} in all | **{ratio:.2}** (goal ≤ 0.3: {}) |\n",
        secs(deploy),
        deploy_req.0,
        deploy_req.1,
        secs(rollback),
        rollback_req.0,
        rollback_req.1,
        if ratio <= 0.3 { "met" } else { "**not met**" },
    );
    let vs_raw = deploy.as_secs_f64() / raw.as_secs_f64();
    out += &format!(
        "\nA deploy's raw steps over a new SSH connection as the service's user (fetch, \
         check out, install, swap `current`, restart, wait until it answers with the new \
         revision), {rounds} times: median {} s; berth's deploy / raw = **{vs_raw:.2}×** \
         (goal ≤ 1.15×: {})\n",
        secs(raw),
        if vs_raw <= 1.15 { "met" } else { "**not met**" },
    );
    out += &format!(
        "\nmin–max: deploy {} s, rollback {} s, raw steps {} s\n\n",
        range(&deploys),
        range(&rollbacks),
        range(&raws)
    );
    out += "| medians (s) | to recorded (connect, agent, lock, fetch) | recorded → stop (checkout, install, snapshot) | stop → start (stop, migrate, swap) | start → healthy (start, health, settle) | after healthy (record, prune, exit) |\n";
    out += "| --- | --- | --- | --- | --- | --- |\n";
    for (name, parts) in [("deploy", &deploy_parts), ("rollback", &rollback_parts)] {
        out += &format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            part(parts, 0),
            part(parts, 1),
            part(parts, 2),
            part(parts, 3),
            part(parts, 4)
        );
    }
    eprintln!("{out}");
}
