//! Worker instances end to end (`berth.services.<name>.instances`), on one
//! systemd lab host: the test app run as the template unit `notes@.service`
//! (tests/app/app@.service.in, as nix/lib/unit.nix writes it), 3 instances
//! at most 4, instance i on port 8090 + i - 1, the sudo rule naming each
//! instance (tests/common/app.rs sets it up). App deploys restart and check
//! every instance and roll all of them back; `berth app scale` changes the
//! running count until the next deploy.
//! Needs root and the lab's packages (scripts/install-deps).

mod common;

use common::app::{http_get_at, Instances, World, DIR, PORT, SERVICE};

const HOW: Instances = Instances {
    instances: 3,
    max: 4,
    socket: false,
};

#[test]
fn instances_deploy_scale_and_roll_back_together() {
    World::run_with("workers", HOW, &[], async |w| scenarios(w).await);
}

/// `systemctl is-active notes@<i>`.
async fn active(w: &World, i: u32) -> String {
    w.sh(&format!("systemctl is-active {SERVICE}@{i} || true"))
        .await
        .trim()
        .to_owned()
}

/// The states of instances 1 to 4.
async fn states(w: &World) -> Vec<String> {
    let mut states = Vec::new();
    for i in 1..=HOW.max {
        states.push(active(w, i).await);
    }
    states
}

fn running(n: usize) -> Vec<String> {
    (0..HOW.max as usize)
        .map(|i| if i < n { "active" } else { "inactive" }.to_owned())
        .collect()
}

/// The main pids of instances 1 to `n`.
async fn pids(w: &World, n: u32) -> Vec<String> {
    let mut pids = Vec::new();
    for i in 1..=n {
        let pid = w
            .sh(&format!("systemctl show -p MainPID --value {SERVICE}@{i}"))
            .await;
        pids.push(pid.trim().to_owned());
    }
    pids
}

/// What instance `i` answers on its own port: (revision, instance).
fn answer(w: &World, i: u32) -> Option<(String, u64)> {
    let port = PORT + u16::try_from(i).unwrap() - 1;
    let body = http_get_at(&w.addr, port, "/health").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((v["revision"].as_str()?.to_owned(), v["instance"].as_u64()?))
}

/// Each of instances 1 to `n` answers on its own port with `rev`.
fn all_serve(w: &World, n: u32, rev: &str) {
    for i in 1..=n {
        assert_eq!(
            answer(w, i),
            Some((rev.to_owned(), u64::from(i))),
            "instance {i} on port {}",
            PORT + u16::try_from(i).unwrap() - 1
        );
    }
}

fn scale(w: &World, count: &str) -> common::Run {
    w.berth(&["app", "scale", SERVICE, "--host", "h1", count])
}

fn history(w: &World) -> String {
    let run = w.berth(&["app", "history", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

async fn scenarios(w: &World) {
    // The sudo rule names each instance: not a fifth one, not another unit,
    // not an instance with another unit tacked on.
    for command in [
        "stop notes@5.service",
        "restart other.service",
        "stop notes@1.service other.service",
        "stop notes@*.service",
    ] {
        let out = w
            .sh(&format!(
                "su -s /bin/sh notes -c 'sudo -n systemctl {command}' 2>&1; echo exit=$?"
            ))
            .await;
        assert!(!out.contains("exit=0"), "{command}: {out}");
    }
    assert_eq!(
        w.sh("systemctl is-active other.service").await.trim(),
        "active"
    );

    // Scaling before the first release: refused, nothing runs.
    let run = scale(w, "2");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("runs no release yet"), "{}", run.stderr);
    assert_eq!(states(w).await, running(0));

    // A first deploy starts all three, each on its own port.
    let rev1 = w.commit(serde_json::json!({ "v": 1 }), "main").await;
    let run = w.deploy(&rev1, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome(), "confirmed");
    assert_eq!(states(w).await, running(3));
    all_serve(w, 3, &rev1);
    let health = run
        .events("phase")
        .into_iter()
        .find(|e| e["phase"] == "health")
        .unwrap();
    assert_eq!(
        health["message"],
        "http://127.0.0.1:8090/health, http://127.0.0.1:8091/health, http://127.0.0.1:8092/health"
    );

    // A second deploy restarts every instance.
    let before = pids(w, 3).await;
    let rev2 = w.commit(serde_json::json!({ "v": 2 }), "main").await;
    let run = w.deploy(&rev2, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = pids(w, 3).await;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a, "an instance was not restarted: {before:?} {after:?}");
    }
    all_serve(w, 3, &rev2);

    // Instance 2 of the next release fails its health check: all three go
    // back to rev2 (each restarted again) and the revision is blocked.
    let before = pids(w, 3).await;
    let bad = w
        .commit(serde_json::json!({ "v": 3, "fail_instances": [2] }), "main")
        .await;
    let run = w.deploy(&bad, &[]);
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "rolled_back"),
        "{}",
        run.stderr
    );
    let message = run.result()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("health failed: instance 2 (notes@2.service)"),
        "{message}"
    );
    assert_eq!(w.current().await, rev2);
    assert_eq!(states(w).await, running(3));
    all_serve(w, 3, &rev2);
    let after = pids(w, 3).await;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(
            b, a,
            "an instance was not rolled back: {before:?} {after:?}"
        );
    }
    let run = w.deploy(&bad, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("is blocked"), "{}", run.stderr);

    // Bad counts: refused before anything changes.
    let history_before = history(w);
    let pids_before = pids(w, 3).await;
    for (count, says) in [
        (
            "0",
            "0 is out of range: a count of instances is a whole number from 1 to 32",
        ),
        ("three", "`three` is not a number"),
        ("33", "33 is out of range"),
        ("5", "notes can run 1 to 4 instances, not 5"),
    ] {
        let run = scale(w, count);
        assert_eq!(run.code, 2, "{count}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{count}: {}", run.stderr);
    }
    let run = scale(w, "5");
    assert!(
        run.stderr
            .contains("hint: raise berth.services.notes.maxInstances"),
        "{}",
        run.stderr
    );
    assert_eq!(states(w).await, running(3));
    assert_eq!(pids(w, 3).await, pids_before);
    assert_eq!(history(w), history_before);

    // Down to one: instances 2 and 3 stop, 1 is left alone.
    let run = scale(w, "1");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.outcome(), "confirmed");
    assert_eq!(
        run.events("scale")[0],
        serde_json::json!({ "event": "scale", "service": "notes", "from": 3, "to": 1 })
    );
    assert_eq!(states(w).await, running(1));
    assert_eq!(pids(w, 1).await[0], pids_before[0]);
    assert!(answer(w, 2).is_none());
    let run = w.berth(&["app", "status", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let status = &run.events("status")[0];
    assert_eq!(status["running_instances"], 1);
    assert_eq!(status["instances"].as_array().unwrap().len(), 1);
    assert!(
        run.stderr.contains("1 of at most 4 instance(s) should run"),
        "{}",
        run.stderr
    );
    // Recorded.
    let h = history(w);
    let last: serde_json::Value = serde_json::from_str(h.lines().next().unwrap()).unwrap();
    assert_eq!(
        (&last["goal"], &last["status"]),
        (&"app-scale".into(), &"confirmed".into())
    );
    assert_eq!(last["reason"], "scale from 3 to 1 instance(s)");
    // Again: unchanged.
    let run = scale(w, "1");
    assert_eq!((run.code, run.outcome().as_str()), (0, "unchanged"));

    // Up to four, above the deploy's three: each new one is checked.
    let run = scale(w, "4");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(states(w).await, running(4));
    all_serve(w, 4, &rev2);

    // A rollback covers every instance running: all four go to rev1.
    let run = w.berth(&["app", "rollback", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(states(w).await, running(4));
    all_serve(w, 4, &rev1);

    // The next deploy brings back the manifest's three.
    let rev4 = w
        .commit(serde_json::json!({ "v": 4, "fail_instances": [4] }), "main")
        .await;
    let run = w.deploy(&rev4, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(states(w).await, running(3));
    all_serve(w, 3, &rev4);

    // Scaling up to an instance that is not healthy: it is stopped again,
    // the others keep serving.
    let before = pids(w, 3).await;
    let run = scale(w, "4");
    assert_eq!(
        (run.code, run.outcome().as_str()),
        (1, "rolled_back"),
        "{}",
        run.stderr
    );
    assert!(
        run.result()["message"]
            .as_str()
            .unwrap()
            .contains("instance 4 (notes@4.service)"),
        "{}",
        run.stderr
    );
    assert_eq!(states(w).await, running(3));
    assert_eq!(pids(w, 3).await, before);
    let scaled = w
        .sh(&format!("cat {DIR}/.berth/scale.json 2>&1 || true"))
        .await;
    assert!(scaled.contains("No such file"), "{scaled}");

    // An instance running past the count (started by hand here; a dead
    // agent's scale could leave one) is stopped with the others, and not
    // started again.
    w.sh("systemctl start notes@4.service").await;
    assert_eq!(states(w).await, running(4));
    let run = w.berth(&["app", "rollback", SERVICE, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(states(w).await, running(3));
    all_serve(w, 3, &rev1);
}
