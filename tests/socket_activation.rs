//! App deploys of a socket-activated service (`socketActivation = true`):
//! systemd holds the listening socket (`notes.socket`), so a deploy drops
//! no request, and the unit's start waits while berth holds the service
//! stopped, so a connection during a migration does not start the app on
//! the data being migrated. One systemd lab host (tests/common/app.rs).
//! Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::time::Duration;

use common::app::{http_get_within, Instances, Poller, World, BIN, DIR, PORT, SERVICE};
use common::Run;

#[test]
fn socket_activated_deploys_drop_no_request_and_hold_the_app_during_migrations() {
    World::run_with("socket", Instances::SOCKET, &[], async |w| {
        scenarios(w).await
    });
}

async fn scenarios(w: &World) {
    let db = format!("{DIR}/data/app.db");
    let hold = format!("{DIR}/.berth/hold");

    let base = w.commit(serde_json::json!({ "v": 0 }), "main").await;
    let run = w.deploy(&base, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // systemd listens; the app serves on the socket it was given.
    assert_eq!(
        w.sh("systemctl is-active notes.socket").await.trim(),
        "active"
    );
    let journal = w.sh("journalctl -u notes.service -o cat").await;
    assert!(journal.contains("(socket from systemd)"), "{journal}");

    // Deploys under a client polling every 10 ms: not one request fails.
    for n in 1..=3 {
        let rev = w.commit(serde_json::json!({ "v": n }), "main").await;
        let poller = Poller::start(&w.addr);
        let run = w.deploy(&rev, &[]);
        let (failed, total) = poller.stop();
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(
            failed, 0,
            "{failed} of {total} requests failed during deploy {n}"
        );
        assert!(total > 50, "only {total} requests");
        assert_eq!(w.serving().as_deref(), Some(rev.as_str()));
        assert_eq!(w.sh(&format!("test -e {hold}; echo $?")).await.trim(), "1");
    }

    // A connection during a (6 s) migration starts the unit, whose start
    // waits for berth; nothing writes the database until the deploy lets
    // the new release start, which then answers that connection.
    let slow = w
        .commit(serde_json::json!({ "migrate": "slow" }), "main")
        .await;
    let (child, _) = w.start_until_phase(
        &["app", "deploy", SERVICE, "--host", "h1", "--rev", &slow],
        "migrate",
    );
    let addr = w.addr.clone();
    let held = std::thread::spawn(move || {
        http_get_within(&addr, PORT, "/health", Duration::from_secs(30))
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let state = w
        .sh("systemctl show -p ActiveState,SubState notes.service")
        .await;
    assert!(state.contains("SubState=start-pre"), "{state}");
    // `berth app status` tells the operator, and how to start it by hand.
    let status = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    let reported = status.events("status").pop().unwrap_or_default();
    assert_eq!(
        reported["hold"].as_str(),
        Some(hold.as_str()),
        "{}",
        status.stdout
    );
    let text = Run::of(
        common::berth()
            .args(["app", "status", SERVICE, "--host", "h1", "--agent", BIN])
            .env("BERTH_SSH_CONFIG", w.lab.ssh_config()),
    );
    // The human lines go to stderr, as every command's do.
    assert!(
        text.stderr
            .contains("held: berth keeps the unit from starting")
            && text.stderr.contains(&format!("rm {hold}")),
        "{}",
        text.stderr
    );
    let rows = w.sqlite(&db, "SELECT max(id) FROM rows").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.sqlite(&db, "SELECT max(id) FROM rows").await,
        rows,
        "something wrote the database during the migration"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let body = held.join().unwrap().expect("the held request is answered");
    assert!(body.contains(&slow), "{body}");
    assert_eq!(w.serving().as_deref(), Some(slow.as_str()));

    // A release that fails its health check: rolled back, and the hold is
    // gone, so the previous release serves (and is socket-activated again).
    let bad = w
        .commit(serde_json::json!({ "health": "fail" }), "main")
        .await;
    let run = w.deploy(&bad, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.outcome(), "rolled_back");
    assert_eq!(w.serving().as_deref(), Some(slow.as_str()));
    assert_eq!(w.sh(&format!("test -e {hold}; echo $?")).await.trim(), "1");
    assert_eq!(
        w.sh("systemctl is-active notes.socket").await.trim(),
        "active"
    );
    let status = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    let reported = status.events("status").pop().unwrap_or_default();
    assert!(reported["hold"].is_null(), "{}", status.stdout);
}
