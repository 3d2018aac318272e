//! App deploys end to end, on one systemd lab host, with a real app
//! (tests/app: Python, SQLite in WAL mode written every 10 ms) run by its
//! own user through a systemd unit, restarted through a sudo rule limited
//! to that unit, its code in a git repository on the host
//! (tests/common/app.rs sets it up).
//! Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::time::{Duration, Instant};

use common::app::{manifest, Poller, World, DIR, SERVICE};
use common::Run;
#[test]
fn app_deploys_on_a_systemd_lab_host() {
    World::run("test", async |w| scenarios(w).await);
}

async fn scenarios(w: &World) {
    let db = format!("{DIR}/data/app.db");

    // The service's user may restart its own unit and no other.
    let notes = w
        .sh("su -s /bin/sh notes -c 'sudo -n systemctl restart other.service' 2>&1; echo exit=$?")
        .await;
    assert!(!notes.contains("exit=0"), "{notes}");

    // A first deploy: nothing ran before.
    let rev1 = w.commit(serde_json::json!({ "v": 1 }), "main").await;
    let run = w.deploy(&rev1, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome(), "confirmed");
    assert_eq!(w.current().await, rev1);
    assert_eq!(w.serving().as_deref(), Some(rev1.as_str()));
    // Its user_version was set by the migration.
    assert_eq!(w.sqlite(&db, "PRAGMA user_version").await, "1");

    // Again: unchanged, nothing done.
    let run = w.deploy(&rev1, &[]);
    assert_eq!((run.code, run.outcome().as_str()), (0, "unchanged"));

    // A good second release, with a migration.
    let rev2 = w
        .commit(serde_json::json!({ "v": 2, "user_version": 2 }), "main")
        .await;
    let run = w.deploy(&rev2, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(w.serving().as_deref(), Some(rev2.as_str()));
    assert_eq!(w.sqlite(&db, "PRAGMA user_version").await, "2");

    stage_guard(w, &rev1, &rev2).await;

    // A failing install: the old release keeps serving, untouched.
    let pid_before = w.sh("systemctl show -p MainPID --value notes").await;
    let bad_install = w
        .commit(serde_json::json!({ "install": "fail" }), "main")
        .await;
    let poller = Poller::start(&w.addr);
    let run = w.deploy(&bad_install, &[]);
    let (failed, total) = poller.stop();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.outcome(), "failed");
    assert_eq!(run.result()["deployment"]["failure_phase"], "build");
    assert!(run.stderr.contains("failing on purpose"), "{}", run.stderr);
    assert_eq!(
        failed, 0,
        "{failed} of {total} requests failed during a failed install"
    );
    assert!(total > 10);
    assert_eq!(
        w.sh("systemctl show -p MainPID --value notes").await,
        pid_before
    );
    assert_eq!(w.current().await, rev2);

    // A failing migration: data restored (its partial write gone), the
    // previous release back, the revision blocked.
    let bad_migration = w
        .commit(serde_json::json!({ "migrate": "fail" }), "main")
        .await;
    let run = w.deploy(&bad_migration, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.outcome(), "rolled_back");
    assert_eq!(run.result()["deployment"]["failure_phase"], "migrate");
    let partial = w
        .sqlite(
            &db,
            "SELECT count(*) FROM rows WHERE revision = 'MIGRATION-PARTIAL'",
        )
        .await;
    assert_eq!(partial, "0");
    assert_eq!(w.current().await, rev2);
    assert_eq!(w.serving().as_deref(), Some(rev2.as_str()));

    // An app that crash-loops after it starts.
    let crash = w
        .commit(serde_json::json!({ "start": "crash" }), "main")
        .await;
    let run = w.deploy(&crash, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "rolled_back"),
        "{}",
        run.stderr
    );
    assert!(run.result()["message"]
        .as_str()
        .unwrap()
        .contains("crash-looping"));
    assert_eq!(w.serving().as_deref(), Some(rev2.as_str()));

    // Failing health: the database equals the snapshot, nothing the failed
    // version wrote survives (no stale WAL replayed), the failed database
    // is kept beside, and the revision is refused next time.
    let unhealthy = w
        .commit(serde_json::json!({ "health": "fail" }), "main")
        .await;
    let run = w.deploy(&unhealthy, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "rolled_back"),
        "{}",
        run.stderr
    );
    let id = run.result()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let snap = w
        .sh(&format!("ls {DIR}/snapshots/{id}/ | grep -v json"))
        .await;
    let snap = format!("{DIR}/snapshots/{id}/{}", snap.trim());
    let snap_max = w.sqlite(&snap, "SELECT max(id) FROM rows").await;
    let snap_rows = w
        .sqlite(
            &snap,
            "SELECT count(*), sum(id), group_concat(DISTINCT revision) FROM rows",
        )
        .await;
    let live_rows = w
        .sqlite(
            &db,
            &format!("SELECT count(*), sum(id), group_concat(DISTINCT revision) FROM rows WHERE id <= {snap_max}"),
        )
        .await;
    assert_eq!(live_rows, snap_rows, "rows up to the snapshot differ");
    let leaked = w
        .sqlite(
            &db,
            &format!("SELECT count(*) FROM rows WHERE revision = '{unhealthy}'"),
        )
        .await;
    assert_eq!(
        leaked, "0",
        "rows of the failed version survived the restore"
    );
    let failed_db = format!("{db}.failed-{id}");
    let kept = w
        .sqlite(
            &failed_db,
            &format!("SELECT count(*) > 0 FROM rows WHERE revision = '{unhealthy}'"),
        )
        .await;
    assert_eq!(kept, "1", "the failed database was not kept beside");
    assert_eq!(w.serving().as_deref(), Some(rev2.as_str()));

    let run = w.deploy(&unhealthy, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("is blocked"), "{}", run.stderr);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    let run = w.deploy(&unhealthy, &["--force", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.events("plan")[0]["to"], unhealthy.as_str());

    // Bad input: nothing touched.
    let off_branch = w.commit(serde_json::json!({ "v": "side" }), "side").await;
    let run = w.deploy(&off_branch, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("is not on branch main"),
        "{}",
        run.stderr
    );
    let run = w.deploy("0123456789abcdef0123456789abcdef01234567", &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("is not in file:///srv/notes.git"),
        "{}",
        run.stderr
    );
    let run = w.berth(&[
        "app", "deploy", "ghost", "--host", "h1", "--user", "notes", "--rev", &rev1,
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown service `ghost`"),
        "{}",
        run.stderr
    );
    assert_eq!(w.current().await, rev2);

    blocked_revisions(w, &[&bad_migration, &crash, &unhealthy], &rev1).await;
    // A service with one plain unit (instances = 1) does not scale.
    let pid_before = w.sh("systemctl show -p MainPID --value notes").await;
    let run = w.berth(&["app", "scale", SERVICE, "--host", "h1", "2"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("notes runs as the single unit notes.service, not as instances"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: set berth.services.notes.instances"),
        "{}",
        run.stderr
    );
    assert_eq!(
        w.sh("systemctl show -p MainPID --value notes").await,
        pid_before
    );

    // Two deploys at once: the second names the holder, or waits.
    let slow = w
        .commit(serde_json::json!({ "install": "slow", "v": 3 }), "main")
        .await;
    let (first, _) = w.start_until_phase(
        &["app", "deploy", SERVICE, "--host", "h1", "--rev", &slow],
        "install",
    );
    let run = w.deploy(&slow, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (2, "busy"),
        "{}",
        run.stderr
    );
    assert!(run.result()["message"]
        .as_str()
        .unwrap()
        .contains("locked by tester@"));
    let run = w.deploy(&slow, &["--lock-wait", "60"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (0, "unchanged"),
        "{}",
        run.stderr
    );
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(w.serving().as_deref(), Some(slow.as_str()));

    // The SSH connection cut mid-deploy: the host finishes the transaction,
    // and `app status --follow` re-attaches to it.
    let rev4 = w
        .commit(
            serde_json::json!({ "migrate": "slow", "user_version": 4 }),
            "main",
        )
        .await;
    let (deployer, _) = w.start_until_phase(
        &["app", "deploy", SERVICE, "--host", "h1", "--rev", &rev4],
        "migrate",
    );
    // SAFETY: kill of the process group this test started.
    unsafe {
        libc::kill(-(deployer.id() as i32), libc::SIGKILL);
    }
    let _ = { deployer }.wait();
    let run = w.berth(&["app", "status", SERVICE, "--host", "h1", "--follow"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("in progress; waiting"),
        "{}",
        run.stderr
    );
    assert_eq!(run.events("status")[0]["last"]["status"], "confirmed");
    assert_eq!(w.serving().as_deref(), Some(rev4.as_str()));

    // kill -9 of the agent in each phase; the next command recovers.
    // During the build: the service was never touched.
    let rev5 = w
        .commit(serde_json::json!({ "install": "slow", "v": 5 }), "main")
        .await;
    w.kill_agent_during(&rev5, "install").await;
    let run = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let status = &run.events("status")[0];
    assert_eq!(status["recovered"]["outcome"], "failed", "{status}");
    assert_eq!(status["current"], rev4.as_str());
    assert_eq!(w.serving().as_deref(), Some(rev4.as_str()));

    // During the migration: the service was stopped; the next deploy rolls
    // the dead one back first (data and release), then does its own work.
    let rev6 = w
        .commit(
            serde_json::json!({ "migrate": "slow", "user_version": 6 }),
            "main",
        )
        .await;
    w.kill_agent_during(&rev6, "migrate").await;
    let rev7 = w.commit(serde_json::json!({ "v": 7 }), "main").await;
    let run = w.deploy(&rev7, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let recovered = &run.events("recovered")[0];
    assert_eq!(recovered["outcome"], "rolled_back", "{recovered}");
    assert_eq!(recovered["deployment"]["to_path"], rev6.as_str());
    assert_eq!(run.outcome(), "confirmed");
    // The dead agent's migration was killed with it: it did not go on to
    // change the restored data.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(w.sqlite(&db, "PRAGMA user_version").await, "1");
    assert_eq!(w.serving().as_deref(), Some(rev7.as_str()));

    // During the health check: the new release runs but was never found
    // healthy, so it is rolled back.
    let rev8 = w
        .commit(serde_json::json!({ "health": "slow", "v": 8 }), "main")
        .await;
    w.kill_agent_during(&rev8, "health").await;
    let run = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    let status = &run.events("status")[0];
    assert_eq!(status["recovered"]["outcome"], "rolled_back", "{status}");
    assert_eq!(status["current"], rev7.as_str());
    assert_eq!(w.serving().as_deref(), Some(rev7.as_str()));

    // Rollback to a named release, at once, without rebuilding.
    let started = Instant::now();
    let run = w.berth(&[
        "app",
        "rollback",
        SERVICE,
        "--host",
        "h1",
        "--to",
        &rev4[..10],
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("install"), "{}", run.stderr);
    assert_eq!(w.serving().as_deref(), Some(rev4.as_str()));
    eprintln!("rollback took {:?}", started.elapsed());
    // And back to where it was: the release the current one replaced.
    let run = w.berth(&["app", "rollback", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(w.serving().as_deref(), Some(rev7.as_str()));
    let run = w.berth(&[
        "app",
        "rollback",
        SERVICE,
        "--host",
        "h1",
        "--to",
        &rev2[..10],
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("has no kept release"), "{}", run.stderr);
    // Old releases were pruned: 3 kept, besides the current and previous.
    let releases = w.sh(&format!("ls {DIR}/releases | wc -l")).await;
    assert!(releases.trim().parse::<u32>().unwrap() <= 5, "{releases}");

    // A deploy of an older revision than the one running is skipped when
    // asked: a newer deploy got there first.
    let run = w.deploy(&rev2, &["--skip-superseded"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (0, "unchanged"),
        "{}",
        run.stderr
    );
    assert!(run.result()["message"]
        .as_str()
        .unwrap()
        .starts_with("skipped:"));
    assert_eq!(w.serving().as_deref(), Some(rev7.as_str()));

    // Locks: an owner, a reason, exit codes.
    let lock = |args: &[&str]| {
        let mut all = vec!["lock"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--host", "h1"]);
        w.berth(&all)
    };
    assert_eq!(
        lock(&["acquire", SERVICE, "--owner", "alice", "--reason", "db work"]).code,
        0
    );
    assert_eq!(lock(&["acquire", SERVICE, "--owner", "alice"]).code, 0);
    let run = lock(&["acquire", SERVICE, "--owner", "bob"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("locked by alice") && run.stderr.contains("db work"),
        "{}",
        run.stderr
    );
    assert_eq!(
        lock(&["acquire", SERVICE, "--owner", "bob", "--wait", "1"]).code,
        4
    );
    let run = w.deploy(&rev1, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (2, "busy"),
        "{}",
        run.stderr
    );
    assert!(run.result()["message"].as_str().unwrap().contains("alice"));
    assert_eq!(lock(&["release", SERVICE, "--owner", "bob"]).code, 3);
    let run = lock(&["status", SERVICE]);
    assert_eq!(run.events("lock")[0]["holder"]["owner"], "alice");
    assert_eq!(lock(&["release", SERVICE, "--owner", "alice"]).code, 0);
    assert_eq!(
        lock(&["status", SERVICE]).events("lock")[0]["outcome"],
        "free"
    );
    // The whole host, held by root's `berth lock`, holds the service too.
    let run = lock(&["acquire", "--owner", "ops", "--reason", "kernel update"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = w.deploy(&rev1, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (2, "busy"),
        "{}",
        run.stderr
    );
    let message = run.result()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("the host is locked by ops") && message.contains("kernel update"),
        "{message}"
    );
    assert_eq!(lock(&["release", "--owner", "ops"]).code, 0);

    // Snapshots on demand, and the audit history.
    let run = w.berth(&["snapshot", "create", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let snapshot_id = run.events("snapshot")[0]["id"].as_str().unwrap().to_owned();
    let max_then: u64 = w
        .sqlite(&db, "SELECT max(id) FROM rows")
        .await
        .parse()
        .unwrap();
    let run = w.berth(&["snapshot", "list", SERVICE, "--host", "h1"]);
    assert!(run
        .events("snapshot")
        .iter()
        .any(|s| s["id"] == snapshot_id.as_str()));
    // Restore it: the data it replaces is kept beside, the app serves again.
    std::thread::sleep(Duration::from_millis(500));
    let run = w.berth(&["snapshot", "restore", SERVICE, &snapshot_id, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let restore_id = run.result()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let replaced: u64 = w
        .sqlite(
            &format!("{db}.failed-{restore_id}-replaced"),
            "SELECT max(id) FROM rows",
        )
        .await
        .parse()
        .unwrap();
    assert!(replaced > max_then, "{replaced} <= {max_then}");
    assert_eq!(w.serving().as_deref(), Some(rev7.as_str()));
    // A restore is not a release: rollback still knows the one before.
    let run = w.berth(&["app", "rollback", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(w.serving().as_deref(), Some(rev4.as_str()));
    let run = w.berth(&["app", "history", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0);
    let history = run.events("deployment");
    assert!(history.len() >= 10, "{history:?}");
    assert_eq!(history[0]["goal"], "app-rollback");
    assert_eq!(history[1]["goal"], "restore");
    assert!(history
        .iter()
        .all(|d| d["actor"].as_str().unwrap().starts_with("tester@")));

    changes(w).await;
    skip_snapshot(w).await;
}

/// Blocked revisions (`blocked`, the last of them failed its health
/// check; `never` was never blocked): `app status` lists them with when
/// and why; a later commit deploys without --force while the blocked one is
/// still refused; `app unblock` clears one, after which it is accepted.
async fn blocked_revisions(w: &World, blocked: &[&str], never: &str) {
    let unhealthy = blocked[blocked.len() - 1];
    let status = |w: &World| {
        let run = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run
    };
    let listed = |run: &Run| -> Vec<String> {
        let mut revs: Vec<String> = run.events("status")[0]["blocked"]
            .as_array()
            .unwrap_or_else(|| panic!("no blocked list in {}", run.stdout))
            .iter()
            .map(|b| b["revision"].as_str().unwrap().to_owned())
            .collect();
        revs.sort();
        revs
    };
    let mut expected: Vec<String> = blocked.iter().map(|r| r.to_string()).collect();
    expected.sort();

    let run = status(w);
    assert_eq!(listed(&run), expected);
    for b in run.events("status")[0]["blocked"].as_array().unwrap() {
        assert!(b["at"].as_i64().unwrap() > 1_700_000_000, "{b}");
        assert!(b["deployment_id"].as_str().is_some(), "{b}");
        assert!(!b["reason"].as_str().unwrap().is_empty(), "{b}");
    }
    assert!(
        run.stderr
            .contains("blocked (deployed again only with --force"),
        "{}",
        run.stderr
    );
    let line = run
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with(unhealthy))
        .unwrap_or_else(|| panic!("{unhealthy} not listed:\n{}", run.stderr));
    assert!(
        line.contains(" since ") && line.contains("health failed"),
        "{line}"
    );

    // The branch moves past it: a later commit deploys as usual, the
    // blocked one is still refused without --force.
    let fixed = w.commit(serde_json::json!({ "v": "fixed" }), "main").await;
    let run = w.deploy(&fixed, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (0, "confirmed"),
        "{}",
        run.stderr
    );
    assert_eq!(w.serving().as_deref(), Some(fixed.as_str()));
    let run = w.deploy(unhealthy, &["--dry-run"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("is blocked"), "{}", run.stderr);

    // A revision that is not blocked: the error names the service and
    // lists what is.
    let run = w.berth(&["app", "unblock", SERVICE, "--host", "h1", "--rev", never]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("revision {never} of notes is not blocked")),
        "{}",
        run.stderr
    );
    for rev in blocked {
        assert!(
            run.stderr.contains(rev),
            "{rev} not listed:\n{}",
            run.stderr
        );
    }
    assert_eq!(listed(&status(w)), expected);

    // Unblocked by the start of its hash: listed no more, accepted without
    // --force.
    let run = w.berth(&[
        "app",
        "unblock",
        SERVICE,
        "--host",
        "h1",
        "--rev",
        &unhealthy[..12],
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.events("unblocked")[0]["revision"], unhealthy);
    assert!(
        run.stderr
            .contains(&format!("notes: unblocked {unhealthy}")),
        "{}",
        run.stderr
    );
    expected.retain(|r| r != unhealthy);
    assert_eq!(listed(&status(w)), expected);
    let run = w.deploy(unhealthy, &["--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.events("plan")[0]["to"], unhealthy);
    assert_eq!(w.serving().as_deref(), Some(fixed.as_str()));
}

/// `--skip-snapshot`: refused in CI unless allowed (nothing changes), warns
/// naming the database, takes no snapshot, is recorded in the history, and
/// a failed deploy brings the release back but says the data was not.
async fn skip_snapshot(w: &World) {
    let db = format!("{DIR}/data/app.db");
    w.write("/etc/berth/services/notes.json", &manifest().to_string())
        .await;
    let deploy_in_ci = |rev: &str, extra: &[&str]| {
        let mut args = vec!["app", "deploy", SERVICE, "--host", "h1", "--rev", rev];
        args.extend_from_slice(extra);
        Run::of(w.berth_cmd(&args).env("CI", "true"))
    };
    let history = |w: &World| {
        let run = w.berth(&["app", "history", SERVICE, "--host", "h1"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run
    };
    let state = format!(
        "ls {DIR}/releases {DIR}/snapshots; readlink {DIR}/current; \
         systemctl show -p MainPID --value notes"
    );

    // Told what it would not do.
    let next = w.commit(serde_json::json!({ "v": 10 }), "main").await;
    let run = w.deploy(&next, &["--skip-snapshot", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.events("plan")[0]["skip_snapshot"], true);
    assert!(run.stderr.contains("NOT snapshotting"), "{}", run.stderr);

    // In CI: refused before anything changes.
    let before = (w.sh(&state).await, history(w).stdout);
    let run = deploy_in_ci(&next, &["--skip-snapshot"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("refusing to skip the snapshot of notes in CI")
            && run.stderr.contains("data/app.db")
            && run.stderr.contains("hint: ")
            && run.stderr.contains("--allow-skip-snapshot-in-ci"),
        "{}",
        run.stderr
    );
    assert_eq!((w.sh(&state).await, history(w).stdout), before);

    // Allowed by the flag: a warning naming the database, no snapshot,
    // recorded.
    let run = deploy_in_ci(&next, &["--skip-snapshot", "--allow-skip-snapshot-in-ci"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (0, "confirmed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.lines().any(|l| l.starts_with("warning: ")
            && l.contains("data/app.db")
            && l.contains("will not be protected")),
        "{}",
        run.stderr
    );
    assert!(
        run.events("warning")[0]["message"]
            .as_str()
            .unwrap()
            .contains("data/app.db"),
        "{}",
        run.stdout
    );
    assert!(
        run.events("phase")
            .iter()
            .any(|p| p["phase"] == "snapshot-skipped"),
        "{}",
        run.stdout
    );
    let id = run.result()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = w
        .sh(&format!(
            "test -e {DIR}/snapshots/{id} && echo there || echo none"
        ))
        .await;
    assert_eq!(gone.trim(), "none");
    assert_eq!(w.serving().as_deref(), Some(next.as_str()));
    let run = history(w);
    let deploys = run.events("deployment");
    assert_eq!(deploys[0]["id"], id.as_str());
    assert_eq!(deploys[0]["snapshot_skipped"], true);
    assert_eq!(deploys[1]["snapshot_skipped"], false);
    let line = run.stderr.lines().find(|l| l.contains(&id)).unwrap();
    assert!(line.contains("snapshot skipped"), "{line}");

    // Allowed by the manifest; the migration fails after writing: the
    // previous release comes back, the data does not, and berth says so.
    let mut m = manifest();
    m["allowSkipSnapshot"] = true.into();
    w.write("/etc/berth/services/notes.json", &m.to_string())
        .await;
    let bad = w
        .commit(serde_json::json!({ "migrate": "fail", "v": 11 }), "main")
        .await;
    let run = deploy_in_ci(&bad, &["--skip-snapshot"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "rolled_back"),
        "{}",
        run.stderr
    );
    let message = run.result()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&format!("notes runs {next} again"))
            && message.contains("data was NOT restored")
            && message.contains("data/app.db"),
        "{message}"
    );
    assert!(
        run.events("phase").iter().any(|p| p["phase"] == "restore"
            && p["message"].as_str().unwrap().starts_with("not restored")),
        "{}",
        run.stdout
    );
    let partial = w
        .sqlite(
            &db,
            "SELECT count(*) > 0 FROM rows WHERE revision = 'MIGRATION-PARTIAL'",
        )
        .await;
    assert_eq!(partial, "1", "the failed migration's write should be left");
    assert_eq!(w.current().await, next);
    assert_eq!(w.serving().as_deref(), Some(next.as_str()));
    let id = run.result()["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deploys = history(w).events("deployment");
    assert_eq!(
        (
            deploys[0]["id"].as_str(),
            deploys[0]["snapshot_skipped"].clone()
        ),
        (Some(id.as_str()), true.into())
    );
    w.write("/etc/berth/services/notes.json", &manifest().to_string())
        .await;
}

/// `--stage`: a service whose manifest declares another stage, or none, is
/// refused before anything changes; the declared stage deploys.
async fn stage_guard(w: &World, other: &str, running: &str) {
    let state = format!(
        "ls {DIR}/releases {DIR}/snapshots; readlink {DIR}/current; \
         systemctl show -p MainPID --value notes"
    );
    let before = w.sh(&state).await;
    let history = |w: &World| {
        let run = w.berth(&["app", "history", SERVICE, "--host", "h1"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.stdout
    };
    let history_before = history(w);

    let run = w.deploy(other, &["--stage", "staging"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "service `notes` declares stage `production`, not `staging`: \
             refusing to deploy it with --stage staging"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: "), "{}", run.stderr);
    assert_eq!(w.sh(&state).await, before);
    assert_eq!(w.serving().as_deref(), Some(running));

    // No stage declared: refused too, through BERTH_STAGE.
    let mut m = manifest();
    m.as_object_mut().unwrap().remove("stage");
    w.write("/etc/berth/services/notes.json", &m.to_string())
        .await;
    let args = ["app", "deploy", SERVICE, "--host", "h1", "--rev", other];
    let run = Run::of(w.berth_cmd(&args).env("BERTH_STAGE", "production"));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("service `notes` declares no stage"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("berth.services.notes.stage = \"production\";"),
        "{}",
        run.stderr
    );
    w.write("/etc/berth/services/notes.json", &manifest().to_string())
        .await;
    assert_eq!(w.sh(&state).await, before);
    assert_eq!(history(w), history_before);

    // The declared stage passes the guard.
    let run = w.deploy(running, &["--stage", "production"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (0, "unchanged"),
        "{}",
        run.stderr
    );
}

/// The manifest's `paths` leave out `other/`: what a commit touches,
/// `--skip-untouched`, and a docs-only deploy that notifies nothing.
async fn changes(w: &World) {
    let mut m = manifest();
    m["paths"] = serde_json::json!(["*", "!other/"]);
    w.write("/etc/berth/services/notes.json", &m.to_string())
        .await;
    let changes = |run: &Run| -> serde_json::Value {
        let events = run.events("changes");
        assert_eq!(events.len(), 1, "{}\n{}", run.stdout, run.stderr);
        events[0].clone()
    };
    // Anything closed: a notification that is sent fails, and says so.
    let nowhere = "http://127.0.0.1:9/hook";

    let base = w.commit(serde_json::json!({ "v": 9 }), "main").await;
    let run = w.deploy(&base, &["--skip-untouched", "--notify", nowhere]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome(), "confirmed");
    let c = changes(&run);
    assert_eq!(
        (c["touched"].clone(), c["quiet"].clone()),
        (true.into(), false.into())
    );
    assert!(
        c["files"]
            .as_array()
            .unwrap()
            .contains(&"behaviour.json".into()),
        "{c}"
    );
    // A routine deploy is told (here, to nowhere: a warning, exit 0).
    assert_eq!(run.events("notify").len(), 1, "{}", run.stdout);
    assert_eq!(run.events("notify")[0]["ok"], false);

    // A commit outside the service's paths does not touch it.
    let other = w
        .commit_file("other/readme.txt", "not the app", "main")
        .await;
    let run = w.berth(&["app", "changed", SERVICE, "--host", "h1", "--to", &other]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let c = changes(&run);
    assert_eq!(c["from"], base.as_str());
    assert_eq!(c["to"], other.as_str());
    assert_eq!(c["touched"], false);
    assert_eq!(c["elsewhere"], 1);
    assert!(
        run.stderr.contains("does not touch notes"),
        "{}",
        run.stderr
    );
    let run = w.deploy(&other, &["--skip-untouched"]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (0, "unchanged"),
        "{}",
        run.stderr
    );
    assert!(run.result()["message"]
        .as_str()
        .unwrap()
        .starts_with("skipped:"));
    assert_eq!(w.current().await, base);

    // Docs only: deployed, but nothing to tell. `--from`/`--to` default to
    // what runs and the branch's head.
    let docs = w.commit_file("docs/guide.md", "# Guide\n", "main").await;
    let run = w.berth(&["app", "changed", SERVICE, "--host", "h1"]);
    let c = changes(&run);
    assert_eq!(
        (c["from"].clone(), c["to"].clone()),
        (base.as_str().into(), docs.as_str().into())
    );
    assert_eq!(c["files"], serde_json::json!(["docs/guide.md"]));
    assert_eq!(
        (c["touched"].clone(), c["quiet"].clone()),
        (true.into(), true.into())
    );
    let run = w.deploy(&docs, &["--skip-untouched", "--notify", nowhere]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome(), "confirmed");
    assert_eq!(changes(&run)["quiet"], true);
    assert!(run.events("notify").is_empty(), "{}", run.stdout);
    assert_eq!(w.serving().as_deref(), Some(docs.as_str()));

    // Untouched since the last deploy, compared from an explicit --from.
    let run = w.berth(&[
        "app", "changed", SERVICE, "--host", "h1", "--from", &base, "--to", &docs,
    ]);
    let c = changes(&run);
    assert_eq!(
        (c["touched"].clone(), c["elsewhere"].clone()),
        (true.into(), 1.into())
    );
}
