//! App deploys of a service whose data is a PostgreSQL database, against a
//! real PostgreSQL (Debian's, started as a service in a systemd lab host;
//! tests/common/postgres.rs) with the app writing a row every 5 ms: the
//! snapshot before the migration, the restore when the deploy fails, the
//! refusals before anything is stopped, `snapshot create`/`restore`, and
//! what `app status` and `snapshot list` show. Needs root and
//! scripts/install-deps.

mod common;

use serde_json::json;

use common::app::{World, DIR, SERVICE};
use common::postgres::{self, equals_snapshot, psql, PG_DB};

#[test]
fn postgres_data() {
    World::run("pg", async |w| {
        postgres::set_up(w).await;
        scenarios(w).await;
    });
}

async fn scenarios(w: &World) {
    let good = w.commit(json!({ "v": "pg-good" }), "main").await;
    let run = w.deploy(&good, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let snapshot = &run.events("phase");
    assert!(
        snapshot.iter().any(|e| e["phase"] == "snapshot"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("1 PostgreSQL database(s)")),
        "{snapshot:?}"
    );
    // The app writes, and the migration made its tables.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let written = psql(w, PG_DB, "SELECT count(*) FROM pg_rows").await;
    assert!(
        written.parse::<u64>().is_ok_and(|n| n > 0),
        "{written}\n{}",
        w.sh(&format!("journalctl -u {SERVICE} -n 20 --no-pager"))
            .await
    );
    assert_eq!(psql(w, PG_DB, "SELECT count(*) FROM items").await, "100");

    // A migration that drops a column, rewrites rows, moves a sequence and
    // adds a table, then failing health: the database equals the snapshot,
    // the previous release serves, the revision is blocked.
    let bad = w
        .commit(
            json!({ "v": "pg-bad", "pg_migrate": "break", "health": "fail" }),
            "main",
        )
        .await;
    let run = w.deploy(&bad, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "rolled_back"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let id = run.result()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dump = format!("{DIR}/snapshots/{id}/postgres.{PG_DB}");
    equals_snapshot(w, &dump).await.unwrap();
    assert_eq!(
        psql(
            w,
            PG_DB,
            "SELECT count(*) FROM pg_rows WHERE revision = 'MIGRATION-BAD'"
        )
        .await,
        "0"
    );
    assert_eq!(w.serving().as_deref(), Some(good.as_str()));
    let again = w.deploy(&bad, &[]);
    assert_eq!(again.code, 2, "a blocked revision: {}", again.stderr);
    assert!(again.stderr.contains("blocked"), "{}", again.stderr);

    // `app status` and `snapshot list` show PostgreSQL snapshots.
    let status = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let latest = &status.events("status")[0]["latest_snapshot"];
    assert_eq!(latest["postgres"][0]["name"], PG_DB, "{latest}");
    let list = w.berth(&["snapshot", "list", SERVICE, "--host", "h1"]);
    let listed = list.events("snapshot");
    assert!(
        listed
            .iter()
            .any(|s| s["id"] == id.as_str() && s["postgres"][0]["name"] == PG_DB),
        "{listed:?}"
    );

    refusals(w, &good).await;
    snapshot_and_restore(w, &good).await;
    rollback_with_data(w, &good).await;
}

/// `app rollback --restore-data`: back to the release before, with the
/// database as that deploy's snapshot had it (the rows a later "bad" change
/// deleted come back), and the data it replaced kept in a snapshot of its
/// own.
async fn rollback_with_data(w: &World, good: &str) {
    let next = w.commit(json!({ "v": "pg-after" }), "main").await;
    let run = w.deploy(&next, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.result()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    psql(w, PG_DB, "DELETE FROM items WHERE id > 50").await;
    let run = w.berth(&["app", "rollback", SERVICE, "--host", "h1", "--restore-data"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(w.serving().as_deref(), Some(good));
    assert_eq!(psql(w, PG_DB, "SELECT count(*) FROM items").await, "100");
    equals_snapshot(w, &format!("{DIR}/snapshots/{id}/postgres.{PG_DB}"))
        .await
        .unwrap();
    // What the rollback replaced is kept: the 50 rows left then.
    let kept = run.result()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dump = format!("{DIR}/snapshots/{kept}/postgres.{PG_DB}");
    let snap = postgres::load_snapshot(w, &dump).await;
    assert_eq!(psql(w, snap, "SELECT count(*) FROM items").await, "50");
}

/// A database the agent cannot reach, or with a table of another role, is
/// refused before anything is stopped, naming it.
async fn refusals(w: &World, good: &str) {
    let next = w.commit(json!({ "v": "pg-next" }), "main").await;
    let main_pid = format!("systemctl show -P MainPID {SERVICE}");
    let before = w.sh(&main_pid).await;

    psql(w, PG_DB, "CREATE TABLE audit (x int)").await;
    let run = w.deploy(&next, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("public.audit (postgres)") && run.stderr.contains("does not own"),
        "{}",
        run.stderr
    );
    psql(w, PG_DB, "DROP TABLE audit").await;

    w.sh("systemctl stop 'postgresql@*'").await;
    let run = w.deploy(&next, &[]);
    w.sh(
        "systemctl start \"postgresql@$(ls /etc/postgresql | sort -V | tail -n 1)-main\"; \
          until runuser -u postgres -- pg_isready -q; do sleep 0.2; done",
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("could not reach the PostgreSQL database {PG_DB}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was stopped"), "{}", run.stderr);
    assert_eq!(w.sh(&main_pid).await, before, "the service was not touched");
    assert_eq!(w.current().await, good);
}

/// `snapshot create` (what the backup timer runs) dumps the database;
/// `snapshot restore` puts it back, keeping the data it replaces.
async fn snapshot_and_restore(w: &World, good: &str) {
    let run = w.berth(&["snapshot", "create", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let snapshot_id = run.events("snapshot")[0]["id"].as_str().unwrap().to_owned();
    psql(w, PG_DB, "DELETE FROM items WHERE id > 10").await;
    let run = w.berth(&["snapshot", "restore", SERVICE, &snapshot_id, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(psql(w, PG_DB, "SELECT count(*) FROM items").await, "100");
    equals_snapshot(
        w,
        &format!("{DIR}/snapshots/{snapshot_id}/postgres.{PG_DB}"),
    )
    .await
    .unwrap();
    assert_eq!(w.serving().as_deref(), Some(good));
}
