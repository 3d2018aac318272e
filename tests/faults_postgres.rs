//! The fault campaign's PostgreSQL rows (issue 21): app deploys of a
//! service whose data is a PostgreSQL database (Debian's, a real service
//! in a systemd lab host; tests/common/postgres.rs), the app writing a row
//! every 5 ms throughout. Each trial ends with a check of the true state:
//! the database against the snapshot's dump (schema, owners, grants,
//! extension, every row of `items`, sequences, the app's rows up to the
//! snapshot), the release serving, blocked revisions, leftover processes,
//! and what berth said. A sample under `cargo test`; `BERTH_FAULTS=full`
//! runs the full counts (bench/faults/run). Needs root and
//! scripts/install-deps.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::app::{World, DIR, SERVICE};
use common::faults::{self, Row};
use common::postgres::{self, equals_snapshot, psql, state, PG_DB};
use common::Run;

#[test]
fn postgres_fault_trials() {
    World::run("pgfaults", async |w| {
        postgres::set_up(w).await;
        let good = w.commit(json!({ "v": "pg-faults" }), "main").await;
        let run = w.deploy(&good, &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        // A database worth a second or so of pg_dump, so that a kill
        // lands inside the snapshot or the restore.
        psql(
            w,
            PG_DB,
            "SET ROLE notes; CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || repeat('x', 100) AS pad \
             FROM generate_series(1, 600000) g; ALTER TABLE bulk ADD PRIMARY KEY (id)",
        )
        .await;
        let rows = vec![
            bad_migration(w, &good).await,
            snapshot_kill(w).await,
            restore_kill(w).await,
        ];
        faults::assert_consistent(rows.into_iter().map(Row::finish));
    });
}

fn result_of(run: &Run) -> Value {
    run.events("result").pop().unwrap_or(Value::Null)
}

/// The processes of berth's restore or snapshot left on the host.
async fn leftovers(w: &World) -> String {
    w.sh("pgrep -a -u notes 'pg_dump|pg_restore|berth-pg-restore' || true")
        .await
        .trim()
        .to_owned()
}

/// Whether berth's restore of the database (its `sh` running pg_restore
/// into psql) runs on the host now.
async fn restoring(w: &World) -> bool {
    w.sh("pgrep -u notes -f berth-pg-restore >/dev/null && echo yes || true")
        .await
        .trim()
        == "yes"
}

/// Waits up to 10 s for the restore to start; whether it did.
async fn restore_starts(w: &World) -> bool {
    for _ in 0..1000 {
        if restoring(w).await {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Problems found, joined; `Ok` when none.
fn verdict(problems: Vec<String>) -> Result<(), String> {
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

/// A failed deploy's database equals its snapshot, no row of the bad
/// migration survives, the previous release serves and the revision is
/// blocked.
async fn rolled_back_to(w: &World, id: &str, previous: &str, bad: &str, p: &mut Vec<String>) {
    if let Err(e) = equals_snapshot(w, &format!("{DIR}/snapshots/{id}/postgres.{PG_DB}")).await {
        p.push(e);
    }
    let leaked = psql(
        w,
        PG_DB,
        "SELECT count(*) FROM pg_rows WHERE revision = 'MIGRATION-BAD'",
    )
    .await;
    if leaked != "0" {
        p.push(format!("rows of the bad migration: {leaked}"));
    }
    if w.serving().as_deref() != Some(previous) {
        p.push(format!("serving {:?}, not {previous}", w.serving()));
    }
    let blocked = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    let status = blocked.events("status").pop().unwrap_or(Value::Null);
    let is_blocked = status["blocked"]
        .as_array()
        .is_some_and(|b| b.iter().any(|b| b["revision"] == bad));
    if !is_blocked {
        p.push(format!("{bad} is not blocked"));
    }
    let left = leftovers(w).await;
    if !left.is_empty() {
        p.push(format!("left running: {left}"));
    }
}

/// A migration that breaks the database, then failing health.
async fn bad_migration(w: &World, good: &str) -> Row {
    let mut row = Row::new(
        "app-pg-bad-migration",
        "app deploy whose migration drops a column, rewrites rows, moves a sequence and adds a table, then fails its health check; the app writing to PostgreSQL every 5 ms",
        "the database equals its snapshot (schema, owners, grants, rows, sequences), the previous release serves, the revision is blocked",
        10,
    );
    for n in 0..row.planned() {
        let bad = w
            .commit(
                json!({ "v": format!("pg-bad-{n}"), "pg_migrate": "break", "health": "fail" }),
                "main",
            )
            .await;
        let run = w.deploy(&bad, &[]);
        let done = result_of(&run);
        let mut p = Vec::new();
        if run.code != 1 || done["outcome"] != "rolled_back" {
            p.push(format!("exit {} outcome {}", run.code, done["outcome"]));
        }
        let id = done["deployment"]["id"].as_str().unwrap_or("none");
        rolled_back_to(w, id, good, &bad, &mut p).await;
        row.record(
            done["outcome"].as_str().unwrap_or("none"),
            verdict(p),
            json!({ "exit": run.code }),
        );
    }
    row
}

/// `kill -9` of the agent at a random moment of its `pg_dump`.
async fn snapshot_kill(w: &World) -> Row {
    let mut row = Row::new(
        "app-pg-snapshot-kill",
        "`kill -9` of the agent at a random moment of the PostgreSQL snapshot of an app deploy (pg_dump running, the app writing every 5 ms)",
        "the next command recovers (pg_dump stopped, the deploy failed or rolled back), the data unchanged, no half snapshot listed, the same revision deploys",
        20,
    );
    // How long the dump takes, undisturbed.
    let started = Instant::now();
    w.sh("cd / && runuser -u notes -- pg_dump -Fd -Z1 -j2 -f /var/tmp/measure notes && rm -rf /var/tmp/measure")
        .await;
    let dump_took = started.elapsed();
    row.metric("dump_secs", json!(dump_took.as_secs_f64()));
    for n in 0..row.planned() {
        let rev = w
            .commit(json!({ "v": format!("pg-kill-{n}") }), "main")
            .await;
        let upto = postgres::max_row(w, PG_DB).await;
        let before = state(w, PG_DB, upto).await;
        let previous = w.current().await;
        let moment = row.moment(Duration::ZERO, dump_took);
        let (child, pid) = w.start_until_phase(
            &["app", "deploy", SERVICE, "--host", "h1", "--rev", &rev],
            "recorded",
        );
        // The kill lands `moment` after pg_dump starts.
        let mut dumping = false;
        for _ in 0..400 {
            if w.sh("pgrep -u notes -x pg_dump >/dev/null && echo yes || true")
                .await
                .trim()
                == "yes"
            {
                dumping = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        std::thread::sleep(moment);
        w.sh(&format!("kill -9 {pid} 2>/dev/null || true")).await;
        let out = child.wait_with_output().unwrap();
        let code = out.status.code().unwrap_or(-1);
        let mut p = Vec::new();
        if !dumping {
            p.push("pg_dump never ran".to_owned());
        }
        if code == 0 {
            p.push("a killed deploy exited 0".to_owned());
        }
        // The next command recovers.
        let status = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
        let recovered = status.events("status").pop().unwrap_or(Value::Null)["recovered"].clone();
        let outcome = format!(
            "recovered-{}",
            recovered["outcome"].as_str().unwrap_or("none")
        );
        let left = leftovers(w).await;
        if !left.is_empty() {
            p.push(format!("left running after the recovery: {left}"));
        }
        if state(w, PG_DB, upto).await != before {
            p.push("the data changed".to_owned());
        }
        if w.serving().as_deref() != Some(previous.as_str()) {
            p.push(format!("serving {:?}, not {previous}", w.serving()));
        }
        // Every snapshot listed is whole: its dump reads.
        let list = w.berth(&["snapshot", "list", SERVICE, "--host", "h1"]);
        for s in list.events("snapshot") {
            let id = s["id"].as_str().unwrap_or("");
            let reads = w
                .sh(&format!(
                    "pg_restore -l {DIR}/snapshots/{id}/postgres.{PG_DB} >/dev/null 2>&1 && echo ok || true"
                ))
                .await;
            if s["postgres"].as_array().is_none_or(|a| a.is_empty()) || reads.trim() != "ok" {
                p.push(format!("snapshot {id} is listed but its dump is not whole"));
            }
        }
        // The same revision deploys now.
        let again = w.deploy(&rev, &[]);
        if again.code != 0 {
            p.push(format!("the next deploy failed: {}", again.stderr));
        }
        row.record(
            &outcome,
            verdict(p),
            json!({ "exit": code, "moment_ms": moment.as_millis() }),
        );
    }
    row
}

/// `kill -9` of the agent at a random moment of the restore that undoes a
/// failed deploy.
async fn restore_kill(w: &World) -> Row {
    let mut row = Row::new(
        "app-pg-restore-kill",
        "`kill -9` of the agent at a random moment of the PostgreSQL restore that undoes a failed deploy (a migration that broke the database)",
        "never half a restore: the next command finishes it, the database equals the snapshot, the previous release serves, the revision is blocked",
        20,
    );
    // How long the restore takes, undisturbed: while its psql session runs.
    let bad = w
        .commit(
            json!({ "v": "pg-restore-measure", "pg_migrate": "break", "health": "fail" }),
            "main",
        )
        .await;
    let good = w.current().await;
    let (child, _) = w.start_until_phase(
        &["app", "deploy", SERVICE, "--host", "h1", "--rev", &bad],
        "rollback",
    );
    assert!(restore_starts(w).await, "the undo ran no restore");
    let started = Instant::now();
    while restoring(w).await {
        std::thread::sleep(Duration::from_millis(10));
    }
    let restore_took = started.elapsed();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    row.metric("restore_secs", json!(restore_took.as_secs_f64()));
    for n in 0..row.planned() {
        let bad = w
            .commit(
                json!({ "v": format!("pg-restore-kill-{n}"), "pg_migrate": "break", "health": "fail" }),
                "main",
            )
            .await;
        let moment = row.moment(Duration::ZERO, restore_took);
        let (child, pid) = w.start_until_phase(
            &["app", "deploy", SERVICE, "--host", "h1", "--rev", &bad],
            "rollback",
        );
        // The kill lands `moment` after the restore's session starts.
        let started = restore_starts(w).await;
        std::thread::sleep(moment);
        let during = restoring(w).await;
        w.sh(&format!("kill -9 {pid} 2>/dev/null || true")).await;
        let out = child.wait_with_output().unwrap();
        let code = out.status.code().unwrap_or(-1);
        let mut p = Vec::new();
        if code == 0 {
            p.push("a failed deploy exited 0".to_owned());
        }
        if !started {
            p.push("the undo ran no restore".to_owned());
        }
        let status = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
        let status = status.events("status").pop().unwrap_or(Value::Null);
        let recovered = &status["recovered"];
        // The failed deploy: the last one on record.
        let id = status["last"]["id"].as_str().unwrap_or("none").to_owned();
        if status["last"]["to_path"] != bad.as_str() {
            p.push(format!("the last deploy is not {bad}: {}", status["last"]));
        }
        let outcome = match recovered["outcome"].as_str() {
            Some(o) => format!("recovered-{o}"),
            None => "settled-before-kill".to_owned(),
        };
        rolled_back_to(w, &id, &good, &bad, &mut p).await;
        row.record(
            &outcome,
            verdict(p),
            json!({
                "exit": code,
                "moment_ms": moment.as_millis(),
                "restore_running_at_kill": during,
            }),
        );
    }
    row
}
