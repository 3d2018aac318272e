//! The fault campaign's bookkeeping (tests/faults_*.rs): how many trials a
//! row runs, the random moments faults land at, each trial's outcome and
//! whether the host's true state afterwards was consistent, and one JSON
//! file per row that bench/faults/run turns into RELIABILITY.md's table.
//!
//! Under `cargo test` each row runs a sample ([`SAMPLE`] trials); with
//! `BERTH_FAULTS=full` (bench/faults/run) it runs its full count.
//! `BERTH_FAULT_SEED` repeats a run's random moments; every row prints the
//! seed it used.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// Trials per row under plain `cargo test`.
pub const SAMPLE: usize = 2;

/// One row of the campaign: a fault, repeated.
pub struct Row {
    id: String,
    fault: String,
    expected: String,
    planned: usize,
    seed: u64,
    rng: u64,
    trials: Vec<Value>,
    metrics: Map<String, Value>,
}

impl Row {
    /// A row of `full` trials (a sample of them under `cargo test`).
    pub fn new(id: &str, fault: &str, expected: &str, full: usize) -> Row {
        let planned = match std::env::var("BERTH_FAULTS").as_deref() {
            Ok("full") => full,
            _ => SAMPLE.min(full),
        };
        let seed = std::env::var("BERTH_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                now.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        eprintln!("fault row {id}: {planned} trials, seed {seed}");
        Row {
            id: id.to_owned(),
            fault: fault.to_owned(),
            expected: expected.to_owned(),
            planned,
            seed,
            rng: seed | 1,
            trials: Vec::new(),
            metrics: Map::new(),
        }
    }

    /// How many trials to run.
    pub fn planned(&self) -> usize {
        self.planned
    }

    /// A uniformly random duration in `[from, to)`, from the row's seed.
    pub fn moment(&mut self, from: Duration, to: Duration) -> Duration {
        // xorshift64*: enough to spread faults over a window, and repeatable.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let span = (to - from).as_micros() as u64;
        from + Duration::from_micros(if span == 0 { 0 } else { r % span })
    }

    /// Records one trial: what happened (`outcome`, a word such as
    /// `rolled-back`), whether the host's true state agreed with it and
    /// with what berth said (`Err` says what disagreed), and the details
    /// worth keeping (exit code, the fault's moment).
    pub fn record(&mut self, outcome: &str, consistent: Result<(), String>, detail: Value) {
        let n = self.trials.len() + 1;
        match &consistent {
            Ok(()) => eprintln!("  {} trial {n}: {outcome}, consistent", self.id),
            Err(why) => eprintln!("  {} trial {n}: {outcome}, INCONSISTENT: {why}", self.id),
        }
        self.trials.push(json!({
            "trial": n,
            "outcome": outcome,
            "consistent": consistent.is_ok(),
            "inconsistency": consistent.err(),
            "detail": detail,
        }));
    }

    /// A measurement beside the trials (failed requests of a poller, say).
    pub fn metric(&mut self, key: &str, value: Value) {
        self.metrics.insert(key.to_owned(), value);
    }

    /// Writes the row to `BERTH_FAULTS_DIR` (when set); says what was
    /// inconsistent, if anything ([`assert_consistent`] fails the test once
    /// every row is written).
    pub fn finish(self) -> Result<(), String> {
        let inconsistent: Vec<&Value> = self
            .trials
            .iter()
            .filter(|t| t["consistent"] == false)
            .collect();
        let mut outcomes = Map::new();
        for t in &self.trials {
            let word = t["outcome"].as_str().unwrap_or("?").to_owned();
            let count = outcomes.get(&word).and_then(Value::as_u64).unwrap_or(0);
            outcomes.insert(word, json!(count + 1));
        }
        let row = json!({
            "id": self.id,
            "fault": self.fault,
            "expected": self.expected,
            "seed": self.seed,
            "trials": self.trials.len(),
            "consistent": self.trials.len() - inconsistent.len(),
            "outcomes": outcomes,
            "metrics": self.metrics,
            "runs": self.trials,
        });
        if let Some(dir) = std::env::var_os("BERTH_FAULTS_DIR").map(PathBuf::from) {
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{}.json", self.id));
            std::fs::write(&file, serde_json::to_vec_pretty(&row).unwrap()).unwrap();
        }
        if inconsistent.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{}: {} of {} trials inconsistent (seed {}): {}",
            self.id,
            inconsistent.len(),
            self.trials.len(),
            self.seed,
            serde_json::to_string_pretty(&inconsistent).unwrap()
        ))
    }
}

/// Fails the test if any row was inconsistent.
pub fn assert_consistent(rows: impl IntoIterator<Item = Result<(), String>>) {
    let failures: Vec<String> = rows.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
