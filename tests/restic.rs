//! The backup job berth declares (nix/lib/backup.nix, which
//! modules/services.nix puts into `systemd.services`), run as rendered
//! (tests/common/backup.rs) by Debian's systemd and restic on a systemd
//! lab host running the test app (SQLite in WAL mode written every 10 ms,
//! tests/common/app.rs): the snapshot and `restic backup` as the service's
//! user in the unit's sandbox, the repository's password handed over by
//! `LoadCredential=` from a file only root may read; then restores from the
//! repository, by hand and as docs/app.md's Backups section says.
//! Needs root, the lab's packages and restic (scripts/install-deps).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::app::{manifest, World, BIN, DIR, SERVICE};
use common::backup::Backup;

/// Debian's restic.
const RESTIC: &str = "/usr/bin/restic";
/// A repository on the host's own disk: the unit must be let write there.
const REPO: &str = "/srv/restic-repo";
/// Root's only (0600): the service's user reads it through the credential.
const PASSWORD: &str = "/srv/restic-password";
/// Rows added to the app's database before the backup.
const BULK: i64 = 200_000;
/// restic as root on the host, reading the repository without locking it.
const AS_ROOT: &str =
    "RESTIC_REPOSITORY=/srv/restic-repo RESTIC_PASSWORD_FILE=/srv/restic-password restic --no-lock";

/// `berth.services.notes` as a user would set it, as JSON: the database the
/// test app writes, a file tree, a glob restic leaves out of it, restic.
fn options() -> Value {
    json!({
        "enable": true,
        "data": {
            "sqlite": ["data/app.db"],
            "files": ["data/uploads"],
            "exclude": ["*.tmp"],
        },
        "backup": { "restic": { "repository": REPO, "passwordFile": PASSWORD } },
    })
}

fn render() -> Backup {
    Backup::render(SERVICE, &options(), BIN, RESTIC)
}

/// The unit, its timer and its files, exactly: what the lab host runs below.
#[test]
fn the_backup_job_renders_as_nixos_writes_it() {
    let backup = render();
    assert_eq!(backup.name, "berth-backup-notes");
    assert_eq!(
        backup.service,
        format!(
            r#"[Unit]
After=network-online.target
Description=berth: snapshot of the data of notes, sent to restic
Wants=network-online.target

[Service]
Environment="BERTH_STATE_DIR=/var/lib/berth"
Environment="RESTIC_CACHE_DIR=%C/berth-backup-notes"
Environment="RESTIC_PASSWORD_FILE=%d/restic-password"
Environment="RESTIC_REPOSITORY=/srv/restic-repo"
CacheDirectory=berth-backup-notes
ExecStart={BIN} agent snapshot create --service notes --actor backup-timer --lock-wait 600
ExecStart=/usr/bin/restic backup --tag berth-notes --files-from-verbatim /etc/berth-backup/berth-backup-notes-paths --exclude-file /etc/berth-backup/berth-backup-notes-exclude
Group=notes
LoadCredential=restic-password:/srv/restic-password
NoNewPrivileges=true
PrivateTmp=true
ProtectHome=true
ProtectSystem=strict
ReadWritePaths=/var/lib/notes
ReadWritePaths=-/srv/restic-repo
Type=oneshot
User=notes
"#
        )
    );
    assert_eq!(
        backup.timer,
        // nixpkgs' timerToUnit: "[Timer]", the settings and an empty line,
        // then commonUnitText's "\n[Install]" (hence two empty lines).
        "[Unit]\n\n[Timer]\nOnCalendar=daily\nPersistent=true\nRandomizedDelaySec=10min\n\n\n\
         [Install]\nWantedBy=timers.target\n"
    );
    assert_eq!(backup.timer_wanted_by, ["timers.target"]);
    assert_eq!(
        backup.files,
        BTreeMap::from([
            (
                "/etc/berth-backup/berth-backup-notes-exclude".to_owned(),
                "/var/lib/notes/data/uploads/**/*.tmp\n".to_owned()
            ),
            (
                "/etc/berth-backup/berth-backup-notes-paths".to_owned(),
                "/var/lib/notes/snapshots\n/var/lib/notes/data/uploads\n".to_owned()
            ),
        ])
    );
}

#[test]
fn the_rendered_backup_job_backs_up_a_live_database_and_restores_it() {
    World::run("restic", async |w| scenario(w).await);
}

async fn scenario(w: &World) {
    let db = format!("{DIR}/data/app.db");
    let uploads = format!("{DIR}/data/uploads");

    // The service declares a file tree; what the module's manifest says.
    let mut m = manifest();
    m["data"]["files"] = json!(["data/uploads"]);
    m["data"]["exclude"] = json!(["*.tmp"]);
    w.write(
        "/etc/berth/services/notes.json",
        &serde_json::to_string_pretty(&m).unwrap(),
    )
    .await;
    // A tree of the service's files: text, binary, nested, a link, and
    // files the excludes name (at the top and deeper).
    w.sh(&format!(
        "set -e; runuser -u notes -- sh -c '\
           mkdir -p {uploads}/photos/2026 && cd {uploads} && \
           echo \"first upload\" > a.txt && \
           head -c 300000 /dev/urandom > photos/2026/big.bin && \
           printf \"%s\\n\" one two three > photos/list.txt && \
           ln -s a.txt latest && \
           echo scratch > scratch.tmp && echo partial > photos/2026/part.tmp'"
    ))
    .await;

    // The app, writing its database every 10 ms from here on.
    let rev = w.commit(json!({ "v": 1 }), "main").await;
    let run = w.deploy(&rev, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_for_rows(w, &db, 100).await;
    // Some bulk, so the copy takes a while among the app's writes.
    w.sh(&format!(
        "runuser -u notes -- sqlite3 -cmd '.timeout 10000' {db} \
           \"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {BULK}) \
             INSERT INTO rows (at, revision) SELECT (julianday('now') - 2440587.5) * 86400, 'bulk' FROM n\""
    ))
    .await;

    // The repository, made once by hand as docs/app.md says, given to the
    // service's user; its password readable by root alone.
    w.sh(&format!(
        "set -e; umask 077; head -c 24 /dev/urandom | base64 > {PASSWORD}; \
         {RESTIC} init --repo {REPO} --password-file {PASSWORD} >/dev/null; \
         chown -R notes:notes {REPO}"
    ))
    .await;
    let denied = w
        .sh(&format!(
            "runuser -u notes -- cat {PASSWORD} >/dev/null 2>&1; echo $?"
        ))
        .await;
    assert_ne!(denied.trim(), "0", "the service's user can read {PASSWORD}");

    let backup = render();
    backup.install(w).await;
    // systemd reads both units without complaint.
    let verify = w
        .sh(&format!(
            "systemd-analyze verify /etc/systemd/system/{name}.service /etc/systemd/system/{name}.timer 2>&1; echo exit=$?",
            name = backup.name
        ))
        .await;
    assert!(
        verify.trim_end().ends_with("exit=0") && !verify.contains(&backup.name),
        "{verify}"
    );

    // Run it as rendered, while the app writes.
    let before = snapshot_ids(w).await;
    let max_before = max_id(w, &db).await;
    let clock = Instant::now();
    let started = w
        .sh(&format!(
            "systemctl start {}.service 2>&1; echo exit=$?",
            backup.name
        ))
        .await;
    let took = clock.elapsed();
    let journal = w
        .sh(&format!(
            "journalctl -u {}.service --no-pager -o cat 2>&1 | tail -n 40",
            backup.name
        ))
        .await;
    assert!(
        started.trim_end().ends_with("exit=0"),
        "{started}\n{journal}"
    );
    let result = w
        .sh(&format!(
            "systemctl show -p Result -p ExecMainStatus --value {}.service",
            backup.name
        ))
        .await;
    assert_eq!(
        result.split_whitespace().collect::<Vec<_>>(),
        ["success", "0"]
    );
    let max_after = max_id(w, &db).await;
    assert!(
        journal.contains("snapshot") && journal.contains("saved"),
        "{journal}"
    );

    // One new snapshot, the backup's.
    let after = snapshot_ids(w).await;
    let new: Vec<_> = after.iter().filter(|id| !before.contains(id)).collect();
    assert_eq!(new.len(), 1, "before {before:?}, after {after:?}");
    let id = new[0].clone();
    let snap_dir = format!("{DIR}/snapshots/{id}");
    let snap: Value =
        serde_json::from_str(&w.sh(&format!("cat {snap_dir}/snapshot.json")).await).unwrap();
    assert_eq!(snap["complete"], true, "{snap}");
    let copy = snap["databases"][0]["file"].as_str().unwrap().to_owned();
    let sha256 = snap["databases"][0]["sha256"].as_str().unwrap().to_owned();
    let tree = snap["files"][0]["copy"].as_str().unwrap().to_owned();

    // The snapshot is a point in time of the live database taken during the
    // run: its rows are the live rows up to its last, and the app has
    // written more since.
    let snap_db = format!("{snap_dir}/{copy}");
    let snap_max = max_id(w, &snap_db).await;
    assert!(
        (max_before..=max_after).contains(&snap_max),
        "the snapshot's last row {snap_max} is not between {max_before} and {max_after}"
    );
    let snap_rows = rows_up_to(w, &snap_db, snap_max).await;
    eprintln!(
        "backup: {took:.1?}; snapshot {id}: rows up to {snap_max} (count, sum, revisions: {snap_rows}); \
         the live database's last row was {max_before} before the run, {max_after} after"
    );
    assert_eq!(rows_up_to(w, &db, snap_max).await, snap_rows);
    wait_for_rows(w, &db, snap_max + 50).await;

    // restic ran as the service's user and read the snapshot, the tree and
    // nothing else: not the live database, not the excluded files, which
    // the snapshot's own copy of the tree keeps.
    let snapshots: Value =
        serde_json::from_str(&w.sh(&format!("{AS_ROOT} snapshots --json")).await).unwrap();
    let snapshots = snapshots.as_array().unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0]["username"], "notes");
    assert_eq!(snapshots[0]["tags"], json!(["berth-notes"]));
    let listed: Vec<String> = w
        .sh(&format!("{AS_ROOT} ls --quiet latest"))
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    let has = |path: &str| listed.iter().any(|l| l == path);
    for path in [
        format!("{snap_dir}/snapshot.json"),
        format!("{snap_dir}/{copy}"),
        format!("{snap_dir}/{tree}/scratch.tmp"),
        format!("{snap_dir}/{tree}/photos/2026/part.tmp"),
        format!("{uploads}/a.txt"),
        format!("{uploads}/latest"),
        format!("{uploads}/photos/2026/big.bin"),
    ] {
        assert!(has(&path), "restic has no {path}: {listed:#?}");
    }
    // Not data/app.db, nor its -wal and -shm.
    let live_db = listed.iter().find(|p| p.starts_with(&db));
    assert_eq!(live_db, None, "restic read the live database");
    // The excluded files, but in the snapshots (the deploy's and the
    // backup's), which keep whole trees.
    let snapshots_dir = format!("{DIR}/snapshots/");
    let excluded = listed
        .iter()
        .find(|p| p.ends_with(".tmp") && !p.starts_with(&snapshots_dir));
    assert_eq!(excluded, None, "restic read an excluded file");
    // Its cache is where the unit put it, the service's.
    let cache = w.sh("stat -c %U /var/cache/berth-backup-notes").await;
    assert_eq!(cache.trim(), "notes");

    // A restore of everything, by hand: the database passes integrity_check
    // and holds exactly the snapshot's rows; the tree is the live tree
    // without the excluded files.
    w.sh(&format!(
        "{AS_ROOT} restore latest --target /var/tmp/restore >/dev/null"
    ))
    .await;
    let restored_db = format!("/var/tmp/restore{snap_dir}/{copy}");
    assert_eq!(w.sqlite(&restored_db, "PRAGMA integrity_check").await, "ok");
    assert_eq!(rows_up_to(w, &restored_db, i64::MAX).await, snap_rows);
    assert!(max_id(w, &db).await > snap_max);
    assert_eq!(
        w.sh(&format!("sha256sum < {restored_db}"))
            .await
            .split_whitespace()
            .next(),
        Some(sha256.as_str())
    );
    let live = tree_listing(w, &uploads).await;
    let restored = tree_listing(w, &format!("/var/tmp/restore{uploads}")).await;
    let kept: Vec<String> = live
        .lines()
        .filter(|l| !l.contains(".tmp "))
        .map(str::to_owned)
        .collect();
    assert_eq!(restored.lines().collect::<Vec<_>>(), kept);
    assert!(
        live.contains("scratch.tmp ") && live.contains("part.tmp "),
        "{live}"
    );
    // The snapshot's own copy of the tree came back whole.
    assert_eq!(
        tree_listing(w, &format!("/var/tmp/restore{snap_dir}/{tree}")).await,
        live
    );

    // docs/app.md's restore: the host has lost the snapshot; it comes back
    // from restic among the service's snapshots and berth restores it
    // (checking every copy against snapshot.json). The rows written since
    // the backup are gone, the snapshot's are all there, and so is the
    // tree (a file deleted since is back).
    w.sh(&format!(
        "set -e; rm -rf {snap_dir} {uploads}/a.txt /var/tmp/r; \
         {AS_ROOT} restore latest --tag berth-notes --target /var/tmp/r --include {snap_dir} >/dev/null; \
         mv /var/tmp/r{snap_dir} {DIR}/snapshots/"
    ))
    .await;
    let restore_started: f64 = w.sh("date +%s.%N").await.trim().parse().unwrap();
    let run = w.berth(&["snapshot", "restore", SERVICE, &id, "--host", "h1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(rows_up_to(w, &db, snap_max).await, snap_rows);
    let later = w
        .sqlite(
            &db,
            &format!("SELECT count(*) FROM rows WHERE id > {snap_max} AND at < {restore_started}"),
        )
        .await;
    assert_eq!(
        later, "0",
        "rows written between the backup and the restore survived"
    );
    assert_eq!(w.sqlite(&db, "PRAGMA integrity_check").await, "ok");
    assert_eq!(tree_listing(w, &uploads).await, live);
    assert_eq!(w.serving().as_deref(), Some(rev.as_str()));

    // The timer is accepted and scheduled.
    let timer = w
        .sh(&format!(
            "systemctl start {name}.timer && systemctl is-active {name}.timer && \
             systemctl show -p NextElapseUSecRealtime --value {name}.timer",
            name = backup.name
        ))
        .await;
    let mut lines = timer.lines();
    assert_eq!(lines.next(), Some("active"), "{timer}");
    assert!(lines.next().is_some_and(|next| !next.is_empty()), "{timer}");
}

async fn snapshot_ids(w: &World) -> Vec<String> {
    w.sh(&format!("ls {DIR}/snapshots 2>/dev/null || true"))
        .await
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn max_id(w: &World, db: &str) -> i64 {
    w.sqlite(db, "SELECT coalesce(max(id), 0) FROM rows")
        .await
        .parse()
        .unwrap()
}

/// count, sum of ids and revisions of the rows up to `max`.
async fn rows_up_to(w: &World, db: &str, max: i64) -> String {
    w.sqlite(
        db,
        &format!(
            "SELECT count(*), sum(id), group_concat(DISTINCT revision) FROM rows WHERE id <= {max}"
        ),
    )
    .await
}

async fn wait_for_rows(w: &World, db: &str, at_least: i64) {
    for _ in 0..300 {
        if w.sh(&format!("test -e {db} && echo yes")).await.trim() == "yes"
            && max_id(w, db).await >= at_least
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{db} did not reach {at_least} rows");
}

/// Each entry under `dir`, sorted: its path relative to `dir`, its type and
/// mode, owner, and its sha256 (a file) or target (a link).
async fn tree_listing(w: &World, dir: &str) -> String {
    w.sh(&format!(
        "cd {dir} && find . -mindepth 1 | LC_ALL=C sort | while read -r p; do \
           if [ -L \"$p\" ]; then echo \"$p link $(readlink \"$p\")\"; \
           elif [ -d \"$p\" ]; then echo \"$p dir $(stat -c '%a %U' \"$p\")\"; \
           else echo \"$p file $(stat -c '%a %U' \"$p\") $(sha256sum < \"$p\" | cut -d' ' -f1)\"; fi; \
         done"
    ))
    .await
}
