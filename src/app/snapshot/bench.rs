//! The benchmark recorded in BENCHMARKS.md ("App snapshots"); run it with
//! `bench/snapshot/run`, which documents its settings.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::sqlite::{backup, quick_check, verify_copy};
use super::{create, hash_file, remove_any};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// A WAL database of about `mib` MiB: rows of 1000 to 4000 random bytes.
fn build(db: &Path, mib: u64) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, at INTEGER NOT NULL, payload BLOB NOT NULL);
         CREATE INDEX t_at ON t(at);",
    )
    .unwrap();
    let bytes = |conn: &Connection| -> u64 {
        conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    };
    while bytes(&conn) < mib << 20 {
        conn.execute_batch(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10000)
               INSERT INTO t(at, payload)
               SELECT random(), randomblob(1000 + abs(random()) % 3000) FROM c;",
        )
        .unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
}

/// A service committing one small row every millisecond; each commit's
/// start and latency.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<(Instant, Duration)>>,
}

impl Writer {
    fn start(db: &Path) -> Writer {
        let conn = Connection::open(db).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut stmt = conn
                .prepare("INSERT INTO t(at, payload) VALUES (?1, randomblob(200))")
                .unwrap();
            let mut commits = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                stmt.execute([start.elapsed().as_nanos() as i64]).unwrap();
                commits.push((start, start.elapsed()));
                thread::sleep(Duration::from_millis(1));
            }
            commits
        });
        Writer { stop, thread }
    }

    fn stop(self) -> Vec<(Instant, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (Duration, Window, T) {
    let start = Instant::now();
    let out = f();
    let end = Instant::now();
    (end - start, (start, end), out)
}

type Window = (Instant, Instant);

/// Syncs everything written so far and pauses, so that one
/// measurement's I/O does not land in the next one's window.
fn settle(dir: &Path) {
    use std::os::fd::AsRawFd;
    let dir = File::open(dir).unwrap();
    // SAFETY: a plain system call on an open descriptor.
    assert_eq!(unsafe { libc::syncfs(dir.as_raw_fd()) }, 0);
    thread::sleep(Duration::from_secs(1));
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn spread(xs: &[Duration]) -> String {
    format!(
        "{} ({}–{})",
        secs(median(xs.to_vec())),
        secs(*xs.iter().min().unwrap()),
        secs(*xs.iter().max().unwrap())
    )
}

/// The writer's commits that started within `windows`: how many, the
/// worst latency, p99, and how many took over 50 ms.
fn writer_in(commits: &[(Instant, Duration)], windows: &[Window]) -> String {
    let mut lat: Vec<Duration> = commits
        .iter()
        .filter(|(at, _)| windows.iter().any(|(s, e)| at >= s && at < e))
        .map(|(_, l)| *l)
        .collect();
    if lat.is_empty() {
        return "no commits".into();
    }
    lat.sort();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    let slow = lat
        .iter()
        .filter(|l| **l > Duration::from_millis(50))
        .count();
    format!(
        "{} commits, worst {}, p99 {}, {} over 50 ms",
        lat.len(),
        ms(*lat.last().unwrap()),
        ms(p99),
        slow
    )
}

#[test]
#[ignore = "a benchmark: run bench/snapshot/run"]
fn bench_snapshot_1gib() {
    let mib = setting("BERTH_BENCH_DB_MIB", 1024);
    let runs = setting("BERTH_BENCH_RUNS", 3) as usize;
    let parent = std::env::var("BERTH_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let tmp = tempfile::Builder::new()
        .prefix("berth-snapshot-bench-")
        .tempdir_in(&parent)
        .unwrap();
    let base = tmp.path().join("svc");
    let db = base.join("data/app.db");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let (took, _, ()) = timed(|| build(&db, mib));
    let size = fs::metadata(&db).unwrap().len();
    eprintln!(
        "built {} ({} MiB) in {}",
        db.display(),
        size >> 20,
        secs(took)
    );
    settle(tmp.path());

    let writer = Writer::start(&db);
    thread::sleep(Duration::from_millis(500));
    let (_, idle, ()) = timed(|| thread::sleep(Duration::from_secs(3)));
    let (mut cp, mut cp_sync, mut snap) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cp_windows, mut sync_windows, mut snap_windows) = (vec![], vec![], vec![]);
    let plain = tmp.path().join("cp-copy.db");
    for run in 0..runs {
        // Alternated, so neither always goes first.
        settle(tmp.path());
        let (took, window, status) = timed(|| {
            Command::new("cp")
                .arg("--reflink=never")
                .arg(&db)
                .arg(&plain)
                .status()
                .unwrap()
        });
        assert!(status.success());
        cp.push(took);
        cp_windows.push(window);
        let (synced, window, ()) = timed(|| File::open(&plain).unwrap().sync_all().unwrap());
        cp_sync.push(took + synced);
        sync_windows.push(window);
        fs::remove_file(&plain).unwrap();

        settle(tmp.path());
        let dir = base.join(format!("snapshots/run{run}"));
        let (took, window, made) =
            timed(|| create(&dir, "run", "app", &base, std::slice::from_ref(&db), &[]).unwrap());
        snap.push(took);
        snap_windows.push(window);
        eprintln!(
            "run {}: cp {}, cp + fsync {}, snapshot {} ({} MiB copy)",
            run + 1,
            secs(cp[run]),
            secs(cp_sync[run]),
            secs(took),
            made.databases[0].size >> 20
        );
        remove_any(&dir).unwrap();
    }
    // One more snapshot, in its parts, for reading the total.
    settle(tmp.path());
    let copy = tmp.path().join("parts.db");
    let (backup_took, backup_window, ()) = timed(|| backup(&db, &copy).unwrap());
    let (verify_took, verify_window, _) = timed(|| verify_copy(&db, &copy).unwrap());
    let (hash_took, _, _) = timed(|| hash_file(&copy).unwrap());
    let conn = Connection::open(&copy).unwrap();
    let (check_took, _, ()) = timed(|| quick_check(&conn, &db, &copy).unwrap());
    drop(conn);
    let commits = writer.stop();

    let (cp_med, snap_med) = (median(cp.clone()), median(snap.clone()));
    let rows = [
        (
            "database".to_owned(),
            format!(
                "{} MiB, WAL mode; {runs} runs of each, alternated; medians (min–max)",
                size >> 20
            ),
        ),
        ("`cp --reflink=never` of it".into(), spread(&cp)),
        ("`cp`, then fsync of its copy".into(), spread(&cp_sync)),
        ("`snapshot::create` of it".into(), spread(&snap)),
        (
            "ratio snapshot / `cp` (goal ≤ 1.5×)".into(),
            format!("{:.2}×", snap_med.as_secs_f64() / cp_med.as_secs_f64()),
        ),
        (
            "ratio snapshot / (`cp` + fsync)".into(),
            format!(
                "{:.2}×",
                snap_med.as_secs_f64() / median(cp_sync.clone()).as_secs_f64()
            ),
        ),
        (
            "writer during the snapshots".into(),
            writer_in(&commits, &snap_windows),
        ),
        (
            "writer during `cp`".into(),
            writer_in(&commits, &cp_windows),
        ),
        (
            "writer during the fsync of `cp`'s copy".into(),
            writer_in(&commits, &sync_windows),
        ),
        (
            "writer with nothing else running (3 s)".into(),
            writer_in(&commits, &[idle]),
        ),
        (
            "one more snapshot, part 1: backup step (with write-behind)".into(),
            format!(
                "{}; writer: {}",
                secs(backup_took),
                writer_in(&commits, &[backup_window])
            ),
        ),
        (
            "part 2: out of WAL mode, then quick_check, sha256 and fsync side by side".into(),
            format!(
                "{}; writer: {}",
                secs(verify_took),
                writer_in(&commits, &[verify_window])
            ),
        ),
        (
            "for reading part 2, each alone: quick_check / sha256".into(),
            format!("{} / {}", secs(check_took), secs(hash_took)),
        ),
    ];
    println!();
    println!("| | |");
    println!("| --- | --- |");
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}
