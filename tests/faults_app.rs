//! The fault campaign's app rows (issue 11, section 2): faults repeated at
//! random moments during app deploys on one systemd lab host with the real
//! test app (tests/common/app.rs), each trial ending with a check of the
//! host's true state, independent of what berth printed: `current` and its
//! release, the unit and what it serves, `PRAGMA integrity_check` and row
//! counts, the service's records, blocked revisions, the service's lock,
//! and berth's exit code and message. A sample of each row under
//! `cargo test`; `BERTH_FAULTS=full` runs the full counts (bench/faults/run).
//! Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::app::{Instances, Poller, World, BIN, DIR, SERVICE};
use common::faults::{self, Row};
use common::fleet::Fleet;
use common::Run;

const DB: &str = "/var/lib/notes/data/app.db";

#[test]
fn app_fault_trials() {
    World::run("faults", async |w| {
        let base = w.commit(json!({ "v": "faults" }), "main").await;
        let run = w.deploy(&base, &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let mut rows = Vec::new();
        rows.push(agent_kill(w, "app-agent-kill").await);
        rows.push(disk_full(w).await);
        rows.push(concurrent(w).await);
        rows.push(bad_migration(w).await);
        faults::assert_consistent(rows.into_iter().map(Row::finish));
    });
    // The same kills with `socketActivation`: the hold must never outlive
    // the recovery, nor the socket stop listening.
    World::run_with("faults-socket", Instances::SOCKET, &[], async |w| {
        let base = w.commit(json!({ "v": "faults" }), "main").await;
        let run = w.deploy(&base, &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let row = agent_kill(w, "app-agent-kill-socket").await;
        faults::assert_consistent([row.finish()]);
    });
}

/// What one check of the host found wrong, if anything.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, found: T, wanted: T) {
        if found != wanted {
            self.0
                .push(format!("{what}: {found:?}, expected {wanted:?}"));
        }
    }

    fn verdict(self) -> Result<(), String> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(self.0.join("; ")),
        }
    }
}

/// The rows of the database before a deploy: how many, up to which id.
#[derive(Clone, Copy, Debug)]
struct Rows {
    count: u64,
    max: u64,
}

async fn rows(w: &World, db: &str) -> Rows {
    let out = w
        .sqlite(
            db,
            "SELECT count(*) || ' ' || coalesce(max(id), 0) FROM rows",
        )
        .await;
    let mut it = out.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
    Rows {
        count: it.next().unwrap_or(0),
        max: it.next().unwrap_or(0),
    }
}

/// What the host must show after a trial.
struct Expect<'a> {
    /// The release `current` points at, and the app serves.
    current: &'a str,
    /// The last deployment's recorded status (`app history`).
    status: &'a str,
    /// Revisions of which no row may be left (with 'MIGRATION-BAD').
    no_rows_of: Vec<&'a str>,
    /// Rows that must all still be there.
    kept: Option<Rows>,
    /// Revisions that must be blocked, and ones that must not.
    blocked: Vec<&'a str>,
    not_blocked: Vec<&'a str>,
}

/// The host's true state against `e`.
async fn check(w: &World, e: &Expect<'_>) -> Result<(), String> {
    let mut p = Problems::default();
    let current = w.current().await;
    p.eq("current", current.as_str(), e.current);
    let built = w
        .sh(&format!(
            "test -f {DIR}/releases/{current}/.berth-built && echo yes || echo no"
        ))
        .await;
    p.eq("current's release is finished", built.trim(), "yes");
    let active = w.sh("systemctl is-active notes.service || true").await;
    p.eq("unit", active.trim(), "active");
    // A socket-activated service: listening, and no hold left.
    let socket = w
        .sh(&format!(
            "test -e /etc/systemd/system/notes.socket || exit 0; \
             echo socket=$(systemctl is-active notes.socket); \
             test -e {DIR}/.berth/hold && echo hold-left || true"
        ))
        .await;
    if !socket.trim().is_empty() {
        p.eq("socket", socket.trim(), "socket=active");
    }
    // Serving: right after a deploy it is; give a restarted app a moment.
    let mut serving = w.serving();
    for _ in 0..20 {
        if serving.as_deref() == Some(e.current) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        serving = w.serving();
    }
    p.eq("serving", serving.as_deref(), Some(e.current));
    let integrity = w.sqlite(DB, "PRAGMA integrity_check").await;
    p.eq("integrity_check", integrity.as_str(), "ok");
    for rev in &e.no_rows_of {
        let n = w
            .sqlite(
                DB,
                &format!("SELECT count(*) FROM rows WHERE revision = '{rev}'"),
            )
            .await;
        p.eq(&format!("rows of {rev}"), n.as_str(), "0");
    }
    if let Some(kept) = e.kept {
        let n = w
            .sqlite(
                DB,
                &format!("SELECT count(*) FROM rows WHERE id <= {}", kept.max),
            )
            .await;
        p.eq(
            &format!("rows up to id {}", kept.max),
            n.parse::<u64>().unwrap_or(0),
            kept.count,
        );
    }
    // The service's records: no deployment left unfinished, the last one
    // as expected, the lock free.
    let run = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    let status = run.events("status").pop().unwrap_or(Value::Null);
    p.eq("app status exit", run.code, 0);
    p.expect(status["active"].is_null(), || {
        format!("a deployment is still active: {}", status["active"])
    });
    p.expect(status["lock"].is_null(), || {
        format!("the service is still locked: {}", status["lock"])
    });
    p.eq(
        "recorded current",
        status["current"].as_str(),
        Some(e.current),
    );
    p.eq(
        "last deployment's status",
        status["last"]["status"].as_str(),
        Some(e.status),
    );
    for (rev, wanted) in e
        .blocked
        .iter()
        .map(|r| (r, true))
        .chain(e.not_blocked.iter().map(|r| (r, false)))
    {
        let run = w.deploy(rev, &["--dry-run"]);
        let blocked = run.code == 2 && run.stderr.contains("is blocked");
        p.eq(&format!("{} blocked", &rev[..12]), blocked, wanted);
    }
    p.verdict()
}

/// A berth command running in the background, its `phase` events read as
/// they come.
struct Running {
    child: std::process::Child,
    started: Instant,
    events: mpsc::Receiver<(Duration, Value)>,
    stdout: String,
    phases: Vec<(Duration, String)>,
    agent_pid: Option<u32>,
}

impl Running {
    fn start(w: &World, args: &[&str]) -> Running {
        let mut cmd = w.berth_cmd(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event =
                    serde_json::from_str::<Value>(&line).unwrap_or_else(|_| Value::String(line));
                if tx.send((started.elapsed(), event)).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            started,
            events,
            stdout: String::new(),
            phases: Vec::new(),
            agent_pid: None,
        }
    }

    fn take(&mut self, at: Duration, event: Value) {
        if event["event"] == "phase" {
            let message = event["message"].as_str().unwrap_or("");
            if let Some(p) = message.split("agent pid ").nth(1) {
                self.agent_pid = p.trim_end_matches(')').parse().ok();
            }
            let phase = event["phase"].as_str().unwrap_or("").to_owned();
            self.phases.push((at, phase));
        }
        self.stdout.push_str(&event.to_string());
        self.stdout.push('\n');
    }

    /// Reads events until `deadline` (from the start) or until the
    /// command's output ends; true if it ended.
    fn read_until(&mut self, deadline: Duration) -> bool {
        loop {
            let left = deadline.saturating_sub(self.started.elapsed());
            match self.events.recv_timeout(left) {
                Ok((at, event)) => self.take(at, event),
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    fn seen(&self, phase: &str) -> bool {
        self.phases.iter().any(|(_, p)| p == phase)
    }

    fn last_phase(&self) -> String {
        self.phases.last().map_or("none".into(), |(_, p)| p.clone())
    }

    /// Waits for the command to end.
    fn finish(mut self) -> (Run, Duration) {
        use std::io::Read;
        while let Ok((at, event)) = self.events.recv() {
            self.take(at, event);
        }
        let mut stderr = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr);
        let status = self.child.wait().unwrap();
        let took = self.started.elapsed();
        eprintln!("(background berth) exit {:?}\n{stderr}", status.code());
        (
            Run {
                code: status.code().unwrap_or(-1),
                stdout: self.stdout,
                stderr,
            },
            took,
        )
    }
}

fn result_of(run: &Run) -> Value {
    run.events("result").pop().unwrap_or(Value::Null)
}

/// A good deploy of a new revision under a poller: the trial's clean
/// start, and a measure of failed requests during successful deploys.
async fn good_deploy(w: &World, label: &str, polled: &mut (usize, usize)) -> String {
    let rev = w.commit(json!({ "v": label }), "main").await;
    let poller = Poller::start(&w.addr);
    let run = w.deploy(&rev, &[]);
    let (failed, total) = poller.stop();
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (0, "confirmed"),
        "{}",
        run.stderr
    );
    polled.0 += failed;
    polled.1 += total;
    rev
}

fn poller_metrics(row: &mut Row, deploys: usize, polled: (usize, usize)) {
    row.metric("successful_deploys_polled", json!(deploys));
    row.metric("poller_requests", json!(polled.1));
    row.metric("poller_failed", json!(polled.0));
}

/// kill -9 of the agent at a random moment of an app deploy (a good
/// revision, or one whose health fails so the kill can land in its
/// rollback); the next command recovers.
async fn agent_kill(w: &World, id: &str) -> Row {
    let mut row = Row::new(
        id,
        if id.ends_with("socket") {
            "`kill -9` of the agent at a random moment of an app deploy of a socket-activated service"
        } else {
            "`kill -9` of the agent at a random moment of an app deploy"
        },
        "recovery on the next command, never half a release or half a restore",
        20,
    );
    let mut polled = (0, 0);
    let mut deploys = 0;
    // How long each kind of deploy takes, undisturbed.
    let started = Instant::now();
    let mut old = good_deploy(w, "kill-measure-good", &mut polled).await;
    let good_took = started.elapsed();
    deploys += 1;
    let bad_took = {
        let rev = w
            .commit(json!({ "v": "kill-measure-bad", "health": "fail" }), "main")
            .await;
        let started = Instant::now();
        let run = w.deploy(&rev, &[]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        started.elapsed()
    };
    row.metric("good_deploy_secs", json!(good_took.as_secs_f64()));
    row.metric("failing_deploy_secs", json!(bad_took.as_secs_f64()));

    for n in 0..row.planned() {
        let failing = n % 2 == 1;
        let mut behaviour = json!({ "v": format!("kill-{n}") });
        if failing {
            behaviour["health"] = "fail".into();
        }
        let rev = w.commit(behaviour, "main").await;
        let before = rows(w, DB).await;
        let moment = row.moment(Duration::ZERO, if failing { bad_took } else { good_took });
        let mut running = Running::start(
            w,
            &["app", "deploy", SERVICE, "--host", "h1", "--rev", &rev],
        );
        let mut ended = running.read_until(moment);
        // Before the agent said its pid (connecting, locking, fetching)
        // there is nothing recorded yet: the kill lands as soon as it does.
        while !ended && running.agent_pid.is_none() {
            ended = running.read_until(running.started.elapsed() + Duration::from_millis(50));
        }
        let mut killed_at = None;
        let phase_at_kill = running.last_phase();
        let saw_rollback = running.seen("rollback");
        let saw_healthy = running.seen("healthy");
        let saw_stop = running.seen("stop");
        if let (false, Some(pid)) = (ended, running.agent_pid) {
            killed_at = Some(running.started.elapsed());
            w.sh(&format!("kill -9 {pid} 2>/dev/null || true")).await;
        }
        let (run, _) = running.finish();
        // The next command recovers.
        let status = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
        let recovered = status.events("status").pop().unwrap_or(Value::Null)["recovered"].clone();
        let done = result_of(&run);
        let mut p = Problems::default();
        // What happened, from the records: berth's own result when the
        // deploy ended before the kill, else the recovery's.
        let outcome = if killed_at.is_none() {
            done["outcome"].as_str().unwrap_or("none").to_owned()
        } else if recovered.is_null() {
            // The agent died after it had settled the deploy itself.
            "settled-before-kill".to_owned()
        } else {
            format!("recovered-{}", recovered["outcome"].as_str().unwrap_or("?"))
        };
        // The truth berth must tell: exit 0 only for a deploy that ended
        // with the new revision serving; a killed agent is not a success.
        let new_serves = match outcome.as_str() {
            "confirmed" | "recovered-confirmed" => true,
            "settled-before-kill" => {
                let last = w.berth(&["app", "history", SERVICE, "--host", "h1"]);
                last.events("deployment")
                    .first()
                    .is_some_and(|d| d["status"] == "confirmed" && d["to_path"] == rev.as_str())
            }
            _ => false,
        };
        p.expect(!(failing && new_serves), || {
            "a revision whose health fails was kept".into()
        });
        if killed_at.is_some() {
            p.expect(run.code != 0, || {
                format!(
                    "berth exited 0 though its agent was killed ({})",
                    run.stderr.trim()
                )
            });
        } else {
            p.eq("exit code", run.code, if new_serves { 0 } else { 1 });
        }
        // What the kill's phase allows.
        if saw_healthy {
            p.expect(new_serves || failing, || {
                "a deploy seen healthy was not kept".into()
            });
        }
        if saw_stop && !new_serves {
            p.expect(outcome != "recovered-failed", || {
                "a deploy that had stopped the service was called failed, not rolled back".into()
            });
        }
        let expect = Expect {
            current: if new_serves { &rev } else { &old },
            status: match outcome.as_str() {
                "recovered-failed" => "failed",
                o if o.ends_with("rolled_back") => "rolled_back",
                _ if new_serves => "confirmed",
                _ => "rolled_back",
            },
            no_rows_of: if new_serves {
                vec!["MIGRATION-BAD"]
            } else {
                vec![rev.as_str()]
            },
            kept: Some(before),
            // A failing revision is blocked once its health failed and its
            // undo began (even when the agent died in it); a revision
            // whose agent died before that is not.
            blocked: if failing && (saw_rollback || killed_at.is_none()) {
                vec![rev.as_str()]
            } else {
                vec![]
            },
            not_blocked: if failing { vec![] } else { vec![rev.as_str()] },
        };
        let mut verdict = check(w, &expect).await;
        if let (Err(why), false) = (&verdict, p.0.is_empty()) {
            verdict = Err(format!("{}; {why}", p.0.join("; ")));
        } else if !p.0.is_empty() {
            verdict = p.verdict();
        }
        row.record(
            &outcome,
            verdict,
            json!({
                "failing_revision": failing,
                "moment_ms": moment.as_millis() as u64,
                "killed_at_ms": killed_at.map(|d| d.as_millis() as u64),
                "phase_at_kill": phase_at_kill,
                "exit": run.code,
                "message": done["message"],
            }),
        );
        old = good_deploy(w, &format!("kill-after-{n}"), &mut polled).await;
        deploys += 1;
    }
    poller_metrics(&mut row, deploys, polled);
    row
}

/// An app deploy with the data directory's filesystem (a small tmpfs
/// holding `data/` and `snapshots/`) too full for the snapshot and its
/// restore: refused before the service is stopped.
async fn disk_full(w: &World) -> Row {
    let mut row = Row::new(
        "app-disk-full",
        "app deploy with the data directory's filesystem full (a small tmpfs) during the snapshot",
        "refused before the service is stopped; nothing lost; clear message naming the disk",
        5,
    );
    // data/ and snapshots/ on one 24 MiB tmpfs, as on a host whose /var is
    // its own filesystem; the database padded to 4 MiB.
    w.sh(&format!(
        "set -e
systemctl stop notes.service
mkdir -p /srv/notes-fs
mount -t tmpfs -o size=24m,mode=0755 notes-fs /srv/notes-fs
mkdir /srv/notes-fs/data /srv/notes-fs/snapshots
cp -a {DIR}/data/. /srv/notes-fs/data/
chown notes:notes /srv/notes-fs/data /srv/notes-fs/snapshots
chmod 0700 /srv/notes-fs/snapshots
mount --bind /srv/notes-fs/data {DIR}/data
mount --bind /srv/notes-fs/snapshots {DIR}/snapshots
su -s /bin/sh notes -c \"sqlite3 {DB} 'CREATE TABLE IF NOT EXISTS padding (b BLOB); INSERT INTO padding SELECT randomblob(1048576) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4)' \"
systemctl start notes.service"
    ))
    .await;
    std::thread::sleep(Duration::from_secs(1));
    let old = w.current().await;
    for n in 0..row.planned() {
        let rev = w.commit(json!({ "v": format!("disk-{n}") }), "main").await;
        // What a snapshot and its restore need: twice the database and its
        // WAL, and berth's 1 MiB of headroom.
        let size: u64 = w
            .sh(&format!("cat {DB} {DB}-wal 2>/dev/null | wc -c"))
            .await
            .trim()
            .parse()
            .unwrap();
        let needed = 2 * size + (1 << 20);
        // Leave free a random amount the app can go on writing into, and
        // less than the snapshot needs.
        let leave = row.moment(
            Duration::from_micros(512 << 10),
            Duration::from_micros(needed - (256 << 10)),
        );
        let leave = leave.as_micros() as u64;
        w.sh(&format!(
            "avail=$(df -B1 --output=avail /srv/notes-fs | tail -1); \
             fill=$((avail - {leave})); \
             if [ $fill -gt 0 ]; then head -c $fill /dev/zero > /srv/notes-fs/filler; fi"
        ))
        .await;
        let before = rows(w, DB).await;
        let (pid, restarts) = unit_pid(w).await;
        let snapshots_before = w.sh(&format!("ls {DIR}/snapshots | wc -l")).await;
        let run = w.deploy(&rev, &[]);
        let done = result_of(&run);
        let message = done["message"].as_str().unwrap_or("").to_owned();
        let mut p = Problems::default();
        p.eq("exit code", run.code, 1);
        p.eq("outcome", done["outcome"].as_str(), Some("failed"));
        p.eq(
            "failure phase",
            done["deployment"]["failure_phase"].as_str(),
            Some("snapshot"),
        );
        p.expect(
            message.contains("not enough free space on /var/lib/notes/snapshots")
                && message.contains("MiB is free")
                && message.contains("was not touched"),
            || format!("message: {message}"),
        );
        p.eq(
            "the unit's pid and restarts",
            unit_pid(w).await,
            (pid, restarts),
        );
        p.eq(
            "snapshots",
            w.sh(&format!("ls {DIR}/snapshots | wc -l")).await,
            snapshots_before,
        );
        w.sh("rm -f /srv/notes-fs/filler").await;
        let expect = Expect {
            current: &old,
            status: "failed",
            no_rows_of: vec![rev.as_str()],
            kept: Some(before),
            blocked: vec![],
            not_blocked: vec![rev.as_str()],
        };
        let verdict = match (p.verdict(), check(w, &expect).await) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err([a.err(), b.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")),
        };
        row.record(
            "refused",
            verdict,
            json!({ "free_bytes_left": leave, "needed_estimate": needed, "exit": run.code, "message": message }),
        );
    }
    // Back on the host's own filesystem, without the padding.
    w.sh(&format!(
        "set -e
systemctl stop notes.service
umount {DIR}/data {DIR}/snapshots
rm -f {DIR}/data/app.db {DIR}/data/app.db-wal {DIR}/data/app.db-shm
cp -a /srv/notes-fs/data/app.db {DIR}/data/
su -s /bin/sh notes -c \"sqlite3 {DB} 'DROP TABLE padding; VACUUM'\"
umount /srv/notes-fs
systemctl start notes.service"
    ))
    .await;
    std::thread::sleep(Duration::from_secs(1));
    row
}

/// The unit's main pid and its restart count.
async fn unit_pid(w: &World) -> (String, String) {
    let out = w
        .sh("systemctl show -p MainPID -p NRestarts --value notes.service")
        .await;
    let mut lines = out.lines().map(str::to_owned);
    (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    )
}

/// Two app deploys of one service, and an app deploy during a system
/// deploy of its host, with and without `--lock-wait`.
async fn concurrent(w: &World) -> Row {
    let mut row = Row::new(
        "app-concurrent",
        "two app deploys of one service, and an app deploy during a system deploy of its host",
        "one waits or is refused naming the holder; no corrupt state",
        10,
    );
    let mut polled = (0, 0);
    let mut deploys = 0;
    let mut fleet = Fleet::new("faults-app");
    fleet.set(
        "h1sys",
        json!({
            "host": "h1",
            "address": w.addr,
            "version": "0",
            "confirmTimeout": 15,
            "retries": 2,
        }),
    );
    // A first system on the host, so each trial's is a change.
    let sys = deploy_system(w, &fleet);
    assert_eq!(sys.code, 0, "{}", sys.stderr);
    // How long an app deploy takes, for the second one's random moment.
    let started = Instant::now();
    let mut old = good_deploy(w, "concurrent-measure", &mut polled).await;
    deploys += 1;
    let app_took = started.elapsed();
    for n in 0..row.planned() {
        let during_system = n % 4 >= 2;
        let wait = n % 2 == 1;
        let extra: &[&str] = if wait { &["--lock-wait", "90"] } else { &[] };
        let before = rows(w, DB).await;
        let mut p = Problems::default();
        let (outcome, expect_current, detail);
        if !during_system {
            let first = w.commit(json!({ "v": format!("first-{n}") }), "main").await;
            let second = w
                .commit(json!({ "v": format!("second-{n}") }), "main")
                .await;
            let moment = row.moment(Duration::ZERO, app_took);
            let poller = Poller::start(&w.addr);
            let a = Running::start(
                w,
                &["app", "deploy", SERVICE, "--host", "h1", "--rev", &first],
            );
            std::thread::sleep(moment);
            let mut args = vec!["app", "deploy", SERVICE, "--host", "h1", "--rev", &second];
            args.extend_from_slice(extra);
            let b = w.berth(&args);
            let (a, _) = a.finish();
            let (failed, total) = poller.stop();
            polled = (polled.0 + failed, polled.1 + total);
            p.eq(
                "first deploy",
                (a.code, result_of(&a)["outcome"].as_str().map(str::to_owned)),
                (0, Some("confirmed".to_owned())),
            );
            let b_outcome = result_of(&b)["outcome"]
                .as_str()
                .unwrap_or("none")
                .to_owned();
            match (b.code, b_outcome.as_str()) {
                (0, "confirmed") => {
                    deploys += 2;
                    outcome = if wait { "waited" } else { "after" };
                    expect_current = second.clone();
                }
                (2, "busy") if !wait => {
                    deploys += 1;
                    let m = result_of(&b)["message"].as_str().unwrap_or("").to_owned();
                    p.expect(
                        m.contains("service notes is locked by tester@") && m.contains("deploy "),
                        || format!("the refusal does not name the holder: {m}"),
                    );
                    outcome = "refused";
                    expect_current = first.clone();
                }
                other => {
                    p.0.push(format!("second deploy: {other:?}: {}", b.stderr.trim()));
                    outcome = "wrong";
                    expect_current = first.clone();
                }
            }
            detail = json!({
                "kind": "two app deploys", "lock_wait": wait,
                "moment_ms": moment.as_millis() as u64, "second_exit": b.code,
                "second_message": result_of(&b)["message"],
            });
        } else {
            fleet.update(
                "h1sys",
                json!({ "version": format!("{}", n + 1), "delay": 4 }),
            );
            let rev = w
                .commit(json!({ "v": format!("during-system-{n}") }), "main")
                .await;
            let flake = fleet.node("h1sys");
            let system = std::thread::spawn({
                let ssh_config = w.lab.ssh_config();
                move || {
                    let run = Run::of(
                        common::berth()
                            .args(["deploy", &flake, "--agent", BIN])
                            .env("BERTH_SSH_CONFIG", ssh_config),
                    );
                    (run, Instant::now())
                }
            });
            // Once the host's agent has published it (the build and copy
            // come first), at a random moment of its 4 s switch.
            let published = wait_for_file(w, "/var/lib/berth/system-deployment.json").await;
            let moment = row.moment(Duration::ZERO, Duration::from_secs(3));
            std::thread::sleep(moment);
            let mut args = vec!["app", "deploy", SERVICE, "--host", "h1", "--rev", &rev];
            args.extend_from_slice(extra);
            let poller = Poller::start(&w.addr);
            let b = w.berth(&args);
            let app_done = Instant::now();
            let (failed, total) = poller.stop();
            let (sys, sys_done) = system.join().unwrap();
            p.expect(published, || {
                "the system deployment was never published".into()
            });
            p.eq("system deploy exit", sys.code, 0);
            let b_result = result_of(&b);
            let m = b_result["message"].as_str().unwrap_or("").to_owned();
            match (b.code, b_result["outcome"].as_str().unwrap_or("none")) {
                (2, "busy") if !wait => {
                    p.expect(
                        m.contains("the host is locked by ") && m.contains("system deployment "),
                        || format!("the refusal does not name the system deployment: {m}"),
                    );
                    outcome = "refused";
                    expect_current = old.clone();
                }
                (0, "confirmed") if wait => {
                    polled = (polled.0 + failed, polled.1 + total);
                    deploys += 1;
                    p.expect(sys_done <= app_done, || {
                        "the app deploy ended before the system deploy it waited for".into()
                    });
                    outcome = "waited";
                    expect_current = rev.clone();
                }
                other => {
                    p.0.push(format!("app deploy during a system deploy: {other:?}: {m}"));
                    outcome = "wrong";
                    expect_current = w.current().await;
                }
            }
            detail = json!({
                "kind": "app deploy during a system deploy", "lock_wait": wait,
                "moment_ms": moment.as_millis() as u64, "exit": b.code, "message": m,
            });
        }
        let host_file = w
            .sh("test -e /var/lib/berth/system-deployment.json && echo left || echo gone")
            .await;
        p.eq("system-deployment.json", host_file.trim(), "gone");
        let expect = Expect {
            current: &expect_current,
            status: "confirmed",
            no_rows_of: vec!["MIGRATION-BAD"],
            kept: Some(before),
            blocked: vec![],
            not_blocked: vec![],
        };
        let verdict = match (p.verdict(), check(w, &expect).await) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err([a.err(), b.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")),
        };
        row.record(outcome, verdict, detail);
        old = expect_current;
    }
    poller_metrics(&mut row, deploys, polled);
    row
}

fn deploy_system(w: &World, fleet: &Fleet) -> Run {
    Run::of(
        common::berth()
            .args(["deploy", &fleet.node("h1sys"), "--agent", BIN])
            .env("BERTH_SSH_CONFIG", w.lab.ssh_config()),
    )
}

/// Polls the host until `path` exists (at most 60 s).
async fn wait_for_file(w: &World, path: &str) -> bool {
    for _ in 0..600 {
        if w.sh(&format!("test -e {path} && echo y || echo n"))
            .await
            .trim()
            == "y"
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// An app deploy whose migration breaks the database and whose health
/// fails, the app writing every 5 ms throughout.
async fn bad_migration(w: &World) -> Row {
    let mut row = Row::new(
        "app-bad-migration",
        "app deploy whose migration breaks the database and whose health fails, the app writing every 5 ms throughout",
        "database restored to the snapshot (integrity ok, no rows of the bad revision), previous release serving, revision blocked",
        10,
    );
    let good = w
        .commit(json!({ "v": "writes-5ms", "write_ms": 5 }), "main")
        .await;
    let run = w.deploy(&good, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let version = w.sqlite(DB, "PRAGMA user_version").await;
    for n in 0..row.planned() {
        let bad = w
            .commit(
                json!({ "v": format!("bad-{n}"), "write_ms": 5, "migrate": "break", "health": "fail" }),
                "main",
            )
            .await;
        let before = rows(w, DB).await;
        let run = w.deploy(&bad, &[]);
        let done = result_of(&run);
        let mut p = Problems::default();
        p.eq("exit code", run.code, 1);
        p.eq("outcome", done["outcome"].as_str(), Some("rolled_back"));
        p.eq(
            "failure phase",
            done["deployment"]["failure_phase"].as_str(),
            Some("health"),
        );
        // The live database up to the snapshot equals the snapshot.
        let id = done["deployment"]["id"].as_str().unwrap_or("none");
        let snap = format!("{DIR}/snapshots/{id}/data__app.db");
        let snap_rows = rows(w, &snap).await;
        let live_rows = w
            .sqlite(
                DB,
                &format!("SELECT count(*) FROM rows WHERE id <= {}", snap_rows.max),
            )
            .await;
        p.eq(
            "rows up to the snapshot",
            live_rows.parse::<u64>().unwrap_or(0),
            snap_rows.count,
        );
        p.expect(snap_rows.max >= before.max, || {
            format!("the snapshot ({snap_rows:?}) is older than the deploy ({before:?})")
        });
        p.eq(
            "user_version",
            w.sqlite(DB, "PRAGMA user_version").await,
            version.clone(),
        );
        let expect = Expect {
            current: &good,
            status: "rolled_back",
            no_rows_of: vec![bad.as_str(), "MIGRATION-BAD"],
            kept: Some(before),
            blocked: vec![bad.as_str()],
            not_blocked: vec![],
        };
        let verdict = match (p.verdict(), check(w, &expect).await) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err([a.err(), b.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")),
        };
        row.record(
            done["outcome"].as_str().unwrap_or("none"),
            verdict,
            json!({ "exit": run.code, "message": done["message"], "snapshot_rows": snap_rows.count }),
        );
    }
    row
}
