//! The fault campaign's system rows (RELIABILITY.md): system deploys of the
//! example fleet to lab hosts, each fault repeated at random moments, and
//! each trial ended by a check of the host's true state: the system
//! profile, what the host serves (the stand-in system's `/version`, its
//! running system), the agent's recorded deployments, and whether berth's
//! exit code and outcome said what happened.
//!
//! `cargo test` runs a sample of each row; bench/faults/run the full
//! counts (tests/common/faults.rs). Needs root and the lab's packages
//! (scripts/install-deps).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::host::Host;
use berth::lab::{HostKind, LabGuard};
use berth::process::Cmd;
use common::faults::{self, Row};
use common::fleet::Fleet;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_berth");
/// The nodes' confirmTimeout: how long a host waits for its deployer.
const CONFIRM: u64 = 5;
/// How long a host may take to settle after a fault, beyond [`CONFIRM`]:
/// the watchdog's poll, a rollback's switch, a loaded machine.
const SETTLE_GRACE: Duration = Duration::from_secs(20);

/// A lab of one host and the fleet node deployed to it.
struct World {
    lab: LabGuard,
    fleet: Fleet,
    host: String,
    node: String,
    nonce: String,
    version: u32,
    /// The version the host runs, as the last trial left it.
    current: String,
    /// Deploys log in as `deploy` and sign with this key (see
    /// [`World::up_as_deploy_user`]); its directory lives as long as this.
    deploy_user: Option<(tempfile::TempDir, String)>,
}

impl World {
    async fn up(name: &str, kind: HostKind) -> World {
        World::make(name, kind, false).await
    }

    /// A systemd host with Nix's daemon trusting a key of the test's, and a
    /// user `deploy` with the module's sudo rule, as tests/deploy_user.rs
    /// makes it: every deploy logs in as `deploy`, signed with that key.
    async fn up_as_deploy_user(name: &str) -> World {
        World::make(name, HostKind::Systemd, true).await
    }

    async fn make(name: &str, kind: HostKind, deploy_user: bool) -> World {
        let dir = PathBuf::from(format!("/srv/berth-test-{}-{name}", std::process::id()));
        let lab = LabGuard::up(&dir, &[kind]).await.expect("lab up");
        let deploy_user = if deploy_user {
            let (dir, key, _) = common::lab_deploy_user(&lab, BIN).await;
            Some((dir, key))
        } else {
            None
        };
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let mut w = World {
            lab,
            fleet: Fleet::new(name),
            host: "h1".into(),
            node: format!("{}1", name.replace('-', "")),
            nonce,
            version: 0,
            current: String::new(),
            deploy_user,
        };
        let first = w.next(json!({}));
        let run = w.deploy(&[]).finish(Duration::from_secs(120));
        assert_eq!(run.code, Some(0), "first deploy: {}", run.stderr);
        w.current = first;
        w
    }

    /// Writes the node's next version with `extra` settings (behaviour,
    /// delay, health commands) and returns it.
    fn next(&mut self, extra: Value) -> String {
        self.version += 1;
        let version = format!("{}.{}", self.version, self.nonce);
        let mut spec = json!({
            "host": self.host,
            "address": self.lab.host(&self.host).unwrap().net.addr.to_string(),
            "version": version,
            "confirmTimeout": CONFIRM,
            "retries": 1,
        });
        if self.deploy_user.is_some() {
            spec["targetUser"] = json!("deploy");
        }
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        self.fleet.set(&self.node, spec);
        version
    }

    /// Starts `berth --json deploy FLEET#NODE --agent <this build> ARGS…`.
    fn deploy(&self, args: &[&str]) -> Deploy {
        let mut cmd = common::berth();
        cmd.args([
            "--json",
            "deploy",
            &self.fleet.node(&self.node),
            "--agent",
            BIN,
        ])
        .args(args)
        .args(
            self.deploy_user
                .iter()
                .flat_map(|(_, key)| ["--sign-key", key.as_str()]),
        )
        .env("BERTH_SSH_CONFIG", self.lab.ssh_config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        Deploy::start(cmd)
    }

    /// What the host really runs and recorded.
    async fn truth(&self) -> Truth {
        let ssh = self.lab.connect(&self.host).await.expect("reach the host");
        let sh = |script: &str| Cmd::new("sh").args(["-c", script]);
        let profile = ssh
            .output(&sh("readlink -f /nix/var/nix/profiles/system || true"))
            .await
            .unwrap()
            .stdout_str();
        let serving = ssh
            .output(&sh(
                "cat /nix/var/berth-example/www/version 2>/dev/null || true",
            ))
            .await
            .unwrap()
            .stdout_str();
        let status = ssh
            .output(&Cmd::new(BIN).args(["agent", "status", "--node", &self.node]))
            .await
            .unwrap();
        ssh.close().await.unwrap();
        let status = berth::agent::find_events(&status.stdout, "status")
            .pop()
            .expect("agent status");
        Truth {
            profile: profile.trim().to_owned(),
            serving: serving.trim().to_owned(),
            status,
        }
    }

    /// Waits until the host has no deployment in flight (the watchdog or a
    /// boot check settled it), at most `limit`; the truth then.
    async fn settle(&self, limit: Duration) -> (Truth, Duration) {
        let start = Instant::now();
        loop {
            let truth = self.truth().await;
            if truth.status["active"].is_null() || start.elapsed() >= limit {
                return (truth, start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Judges a trial that tried `new` on a host running `old`: the host
    /// must be wholly on one of them, settled, and berth (when it lived to
    /// say) must have said which. Updates `current`.
    fn judge(
        &mut self,
        truth: &Truth,
        new: &str,
        run: Option<&Finished>,
    ) -> (String, Result<(), String>) {
        let on = |version: &str| {
            truth.profile.ends_with(&format!("-{version}"))
                && truth.serving.ends_with(&format!(" {version}"))
        };
        let last = &truth.status["last"];
        let generations = truth.status["generations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let left_behind = generations.iter().any(|g| {
            g["path"]
                .as_str()
                .is_some_and(|p| p.ends_with(&format!("-{new}")))
        });
        let mut problems = Vec::new();
        if !truth.status["active"].is_null() {
            problems.push(format!(
                "a deployment is still in flight: {}",
                truth.status["active"]
            ));
        }
        let state = if on(new) {
            if last["status"] != "confirmed" {
                problems.push(format!(
                    "runs the new system, but its deployment is {}",
                    last["status"]
                ));
            }
            "new"
        } else if on(&self.current) {
            if left_behind {
                problems
                    .push("back on the old system, but the new generation was not deleted".into());
            }
            if last["to_path"]
                .as_str()
                .is_some_and(|p| p.ends_with(&format!("-{new}")))
                && last["status"] == "confirmed"
            {
                problems
                    .push("back on the old system, but the new one is recorded confirmed".into());
            }
            "old"
        } else {
            problems.push(format!(
                "in between: profile {}, serving `{}` (old {}, new {new})",
                truth.profile, truth.serving, self.current
            ));
            "between"
        };
        if let Some(run) = run {
            let said = match (run.code, run.outcome.as_deref()) {
                (Some(0), Some("deployed")) => "new",
                (Some(1), Some("rolled_back" | "failed")) => "old",
                _ => "unclear",
            };
            if said != state {
                problems.push(format!(
                    "berth said {said} (exit {:?}, outcome {:?}), the host is on {state}: {}",
                    run.code,
                    run.outcome,
                    run.stderr_tail()
                ));
            }
        }
        let outcome = match state {
            "new" => "deployed",
            "old" => "rolled-back",
            _ => "in-between",
        };
        // What the host runs is where the next trial starts from, whatever
        // this one's verdict.
        let prefix = format!("nixos-system-{}-", self.node);
        if let Some((_, version)) = truth.profile.rsplit_once(&prefix) {
            self.current = version.to_owned();
        }
        let verdict = if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        };
        (outcome.to_owned(), verdict)
    }

    /// What an inconsistent trial leaves to read: the host's last
    /// deployments and its profile's generations.
    async fn evidence(&self, run: Option<&Finished>) -> Value {
        let ssh = self.lab.connect(&self.host).await.expect("reach the host");
        let history = ssh
            .output(&Cmd::new(BIN).args(["agent", "history", "--node", &self.node, "--limit", "4"]))
            .await
            .unwrap();
        let links = ssh
            .output(&Cmd::new("sh").args(["-c", "ls -l /nix/var/nix/profiles/ | grep system"]))
            .await
            .unwrap()
            .stdout_str();
        ssh.close().await.unwrap();
        json!({
            "history": berth::agent::find_events(&history.stdout, "deployment"),
            "profiles": links.lines().collect::<Vec<_>>(),
            "stderr": run.map(Finished::stderr_tail),
        })
    }

    /// Records a trial, with the host's evidence when it was inconsistent.
    async fn record(
        &self,
        row: &mut Row,
        outcome: &str,
        verdict: Result<(), String>,
        mut detail: Value,
        run: Option<&Finished>,
    ) {
        if verdict.is_err() {
            detail["evidence"] = self.evidence(run).await;
        }
        row.record(outcome, verdict, detail);
    }

    /// After a fault: the next deploy must work with no manual step.
    fn next_deploy_works(&mut self) -> Result<(), String> {
        let next = self.next(json!({}));
        let run = self.deploy(&[]).finish(Duration::from_secs(120));
        if run.code != Some(0) {
            return Err(format!(
                "the next deploy failed (exit {:?}): {}",
                run.code,
                run.stderr_tail()
            ));
        }
        self.current = next;
        Ok(())
    }

    /// Processes on the host whose command line contains `needle` (a plain
    /// host shares this machine's pids, in its own network namespace).
    fn host_processes(&self, needle: &str) -> Vec<u32> {
        let netns = std::fs::metadata(format!(
            "/run/netns/{}",
            self.lab.host(&self.host).unwrap().net.netns
        ))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
        common::processes(|pid, words| {
            let in_host = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == netns);
            in_host && words.join(" ").contains(needle)
        })
    }
}

struct Truth {
    profile: String,
    serving: String,
    status: Value,
}

/// A running `berth deploy`, its output read as it comes.
struct Deploy {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

struct Finished {
    /// None when the test killed it.
    code: Option<i32>,
    outcome: Option<String>,
    stderr: String,
}

impl Finished {
    fn stderr_tail(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }
}

impl Deploy {
    fn start(mut cmd: std::process::Command) -> Deploy {
        // Its own group, so what it leaves behind when killed can be stopped.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("start berth");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().unwrap();
        let lines = stdout.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        }));
        let err = child.stderr.take().unwrap();
        let lines = stderr.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        }));
        Deploy {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Waits until the deployer has reported `phase`, at most `limit`.
    fn wait_phase(&self, phase: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let seen = self.stdout.lock().unwrap().iter().any(|l| {
                serde_json::from_str::<Value>(l)
                    .is_ok_and(|e| e["event"] == "phase" && e["phase"] == phase)
            });
            if seen {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    fn kill(mut self) -> Finished {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reap();
        self.collect(None)
    }

    /// Waits for it to exit, at most `limit` (then kills it: a deployer
    /// that hangs is a finding, reported as no exit code).
    fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.reap();
                return self.collect(status.code());
            }
            if Instant::now() >= deadline {
                eprintln!("berth deploy did not exit within {limit:?}: killing it");
                return self.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops what the deployer left in its process group (an SSH master,
    /// a `nix copy`), then the output readers.
    fn reap(&mut self) {
        // SAFETY: kill(2) on the group this test made for its own child.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    fn collect(&self, code: Option<i32>) -> Finished {
        let outcome = self.stdout.lock().unwrap().iter().rev().find_map(|l| {
            let e: Value = serde_json::from_str(l).ok()?;
            (e["event"] == "host_result").then(|| e["outcome"].as_str().map(str::to_owned))?
        });
        Finished {
            code,
            outcome,
            stderr: self.stderr.lock().unwrap().join("\n"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sets the host's port on the lab's switch `down` or `up`.
fn ip_link(net: &berth::lab::HostNet, state: &str) {
    let status = std::process::Command::new("ip")
        .args(["-n", &net.switch_netns, "link", "set", &net.veth_out, state])
        .status()
        .unwrap();
    assert!(status.success(), "ip link set {} {state}", net.veth_out);
}

/// Each trial: the link to the host cut at a random moment 0–5 s into a
/// deploy, back after 30 s.
async fn link_cut_trials(w: &mut World, row: &mut Row) {
    let net = w.lab.host(&w.host).unwrap().net.clone();
    for _ in 0..row.planned() {
        let new = w.next(json!({ "delay": 1 }));
        let offset = row.moment(Duration::ZERO, Duration::from_secs(5));
        let deploy = w.deploy(&[]);
        tokio::time::sleep(offset).await;
        ip_link(&net, "down");
        tokio::time::sleep(Duration::from_secs(30)).await;
        ip_link(&net, "up");
        let run = deploy.finish(Duration::from_secs(180));
        let (truth, _) = w.settle(Duration::from_secs(CONFIRM) + SETTLE_GRACE).await;
        let (outcome, verdict) = w.judge(&truth, &new, Some(&run));
        let detail = json!({ "offset_ms": offset.as_millis() as u64, "exit": run.code });
        w.record(row, &outcome, verdict, detail, Some(&run)).await;
    }
}

/// Each trial: `kill -9` of the deployer at a random moment of a deploy,
/// within how long one takes here; then the next deploy must work.
async fn deployer_kill_trials(w: &mut World, row: &mut Row) {
    let baseline = w.next(json!({ "delay": 1 }));
    let started = Instant::now();
    let run = w.deploy(&[]).finish(Duration::from_secs(120));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let whole = started.elapsed();
    w.current = baseline;
    row.metric("deploy_ms", json!(whole.as_millis() as u64));
    for _ in 0..row.planned() {
        let new = w.next(json!({ "delay": 1 }));
        let offset = row.moment(Duration::ZERO, whole);
        let deploy = w.deploy(&[]);
        tokio::time::sleep(offset).await;
        deploy.kill();
        let (truth, took) = w.settle(Duration::from_secs(CONFIRM) + SETTLE_GRACE).await;
        let (outcome, verdict) = w.judge(&truth, &new, None);
        let mut detail = json!({ "offset_ms": offset.as_millis() as u64, "settled_ms": took.as_millis() as u64 });
        if verdict.is_err() {
            detail["evidence"] = w.evidence(None).await;
        }
        let verdict = verdict.and(w.next_deploy_works());
        row.record(&outcome, verdict, detail);
    }
}

const LINK_CUT: &str =
    "link to the host cut at a random offset 0–5 s into a system deploy (its port on the lab's switch down, back after 30 s)";
const LINK_CUT_EXPECTED: &str = "previous generation, or new and confirmed; exit code says which";
const DEPLOYER_KILL: &str = "`kill -9` of the deployer at a random moment of a system deploy";
const DEPLOYER_KILL_EXPECTED: &str =
    "the host settles by itself within the confirm timeout; the next deploy works without manual steps";

#[test]
fn link_cut() {
    runtime().block_on(async {
        let mut w = World::up("fault-link", HostKind::Plain).await;
        let mut row = Row::new("sys-link-cut", LINK_CUT, LINK_CUT_EXPECTED, 20);
        link_cut_trials(&mut w, &mut row).await;
        faults::assert_consistent(vec![row.finish()]);
    });
}

/// As a deploy user through sudo: the link cut, and `kill -9` of the
/// deployer, at random moments of deploys.
#[test]
fn deploy_user_link_cut_and_deployer_kill() {
    runtime().block_on(async {
        let mut w = World::up_as_deploy_user("fault-user").await;
        let as_user = |what: &str| format!("as a deploy user through sudo: {what}");
        let mut link = Row::new(
            "sys-user-link-cut",
            &as_user(LINK_CUT),
            LINK_CUT_EXPECTED,
            20,
        );
        link_cut_trials(&mut w, &mut link).await;
        let mut kill = Row::new(
            "sys-user-deployer-kill",
            &as_user(DEPLOYER_KILL),
            DEPLOYER_KILL_EXPECTED,
            20,
        );
        deployer_kill_trials(&mut w, &mut kill).await;
        faults::assert_consistent(vec![link.finish(), kill.finish()]);
    });
}

/// `kill -9` of the deployer, then of the host's agent, at random moments
/// of a system deploy; and a switch that hangs.
#[test]
fn deployer_and_agent_killed_and_hung_switch() {
    runtime().block_on(async {
        let mut w = World::up("fault-kill", HostKind::Plain).await;
        let mut results = Vec::new();

        let mut row = Row::new("sys-deployer-kill", DEPLOYER_KILL, DEPLOYER_KILL_EXPECTED, 20);
        deployer_kill_trials(&mut w, &mut row).await;
        results.push(row.finish());

        let mut row = Row::new(
            "sys-agent-kill",
            "`kill -9` of the agent at a random moment of a system deploy",
            "recovery on the next command; the host on the previous generation or the new one confirmed",
            20,
        );
        for _ in 0..row.planned() {
            let new = w.next(json!({ "delay": 1 }));
            let deploy = w.deploy(&[]);
            // The agent's activation lives about as long as the switch's
            // delay: the kill lands anywhere in it, or just after.
            let needle = "agent activate --id";
            let path_part = format!("-{new}");
            let deadline = Instant::now() + Duration::from_secs(60);
            let agent = loop {
                let found = w
                    .host_processes(needle)
                    .into_iter()
                    .find(|&pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&path_part))
                    });
                if found.is_some() || Instant::now() >= deadline {
                    break found;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            let offset = row.moment(Duration::ZERO, Duration::from_millis(1500));
            tokio::time::sleep(offset).await;
            let killed = agent.is_some_and(|pid| {
                // SAFETY: kill(2); the pid was this trial's agent a moment ago.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) == 0 }
            });
            let run = deploy.finish(Duration::from_secs(120));
            let (truth, _) = w.settle(Duration::from_secs(CONFIRM) + SETTLE_GRACE).await;
            let (outcome, verdict) = w.judge(&truth, &new, Some(&run));
            let mut detail = json!({ "offset_ms": offset.as_millis() as u64, "killed": killed, "exit": run.code });
            if verdict.is_err() {
                detail["evidence"] = w.evidence(Some(&run)).await;
            }
            let verdict = verdict.and(w.next_deploy_works());
            row.record(&outcome, verdict, detail);
        }
        results.push(row.finish());

        let mut row = Row::new(
            "sys-hung-switch",
            "a switch-to-configuration that never returns (`--activation-timeout 3`)",
            "stopped at the deadline, rolled back to the recorded generation, berth says so",
            5,
        );
        for _ in 0..row.planned() {
            let new = w.next(json!({ "behaviour": "hang" }));
            let run = w
                .deploy(&["--activation-timeout", "3"])
                .finish(Duration::from_secs(120));
            let (truth, _) = w.settle(Duration::from_secs(CONFIRM) + SETTLE_GRACE).await;
            let (outcome, mut verdict) = w.judge(&truth, &new, Some(&run));
            let left = w.host_processes("sleep 2147483647");
            if verdict.is_ok() && !left.is_empty() {
                verdict = Err(format!("the hung switch still runs: pids {left:?}"));
            }
            if verdict.is_ok() && !run.stderr.contains("did not finish within 3s") {
                verdict = Err(format!("berth did not say the switch hung: {}", run.stderr_tail()));
            }
            w.record(&mut row, &outcome, verdict, json!({ "exit": run.code }), Some(&run)).await;
        }
        results.push(row.finish());
        faults::assert_consistent(results);
    });
}

/// On a systemd host: a new system that stops sshd, and a reboot while a
/// deployment is unconfirmed.
#[test]
fn sshd_stopped_and_reboot() {
    runtime().block_on(async {
        let mut w = World::up("fault-boot", HostKind::Systemd).await;
        let mut results = Vec::new();

        let mut row = Row::new(
            "sys-sshd-stop",
            "the new system stops sshd",
            "rolled back by the watchdog; berth says so",
            10,
        );
        for _ in 0..row.planned() {
            let new = w.next(json!({ "behaviour": "kill-sshd" }));
            let run = w.deploy(&[]).finish(Duration::from_secs(120));
            let (truth, _) = w.settle(Duration::from_secs(CONFIRM) + SETTLE_GRACE).await;
            let (outcome, verdict) = w.judge(&truth, &new, Some(&run));
            w.record(&mut row, &outcome, verdict, json!({ "exit": run.code }), Some(&run)).await;
        }
        results.push(row.finish());

        // The boot check a NixOS host gets from berth.agent.bootCheck, as a
        // unit of the container's own.
        let ssh = w.lab.connect(&w.host).await.unwrap();
        let unit = format!(
            "[Unit]\nDescription=berth boot check\nDefaultDependencies=no\n\
             After=local-fs.target sysinit.target\nConflicts=shutdown.target\nBefore=shutdown.target\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\n\
             Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             ExecStart={BIN} agent boot-check\n[Install]\nWantedBy=multi-user.target\n"
        );
        ssh.run(
            &Cmd::new("sh")
                .args(["-c", "cat > /etc/systemd/system/berth-boot-check.service && systemctl enable --quiet berth-boot-check.service"])
                .stdin(unit),
        )
        .await
        .unwrap();
        ssh.close().await.unwrap();

        let mut row = Row::new(
            "sys-reboot",
            "container reboot with an unconfirmed deployment",
            "the boot check rolls back; berth (polling) says so",
            10,
        );
        for _ in 0..row.planned() {
            // Health never ends, so the deployment stays unconfirmed (and
            // its watchdog waits longer than the reboot takes).
            let new = w.next(json!({ "delay": 1, "confirmTimeout": 300, "commands": [["sleep", "600"]] }));
            let deploy = w.deploy(&[]);
            assert!(deploy.wait_phase("activate", Duration::from_secs(60)));
            let offset = row.moment(Duration::from_millis(300), Duration::from_millis(2500));
            tokio::time::sleep(offset).await;
            w.lab.reboot(&w.host).await.expect("reboot");
            let run = deploy.finish(Duration::from_secs(120));
            let (truth, _) = w.settle(SETTLE_GRACE).await;
            let (outcome, mut verdict) = w.judge(&truth, &new, Some(&run));
            if verdict.is_ok() && truth.status["last"]["failure_phase"] != "boot"
                && truth.status["last"]["to_path"].as_str().is_some_and(|p| p.ends_with(&format!("-{new}")))
            {
                verdict = Err(format!("rolled back, but not by the boot check: {}", truth.status["last"]));
            }
            let detail = json!({ "offset_ms": offset.as_millis() as u64, "exit": run.code });
            w.record(&mut row, &outcome, verdict, detail, Some(&run)).await;
        }
        results.push(row.finish());
        faults::assert_consistent(results);
    });
}
