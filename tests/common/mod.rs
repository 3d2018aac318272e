//! What more than one test crate needs: the built berth with a clean
//! environment, a loopback HTTP server that replays GitHub API answers,
//! poll by poll, and the JSON GitHub answers with.

// Each test crate that says `mod common;` uses its own part of this.
#![allow(dead_code)]

pub mod app;
pub mod backup;
pub mod caddy;
pub mod deploy_user;
pub mod fanout;
pub mod faults;
pub mod fleet;
pub mod postgres;
pub mod sudoers;
pub mod units;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};

/// The built berth, without what the caller's environment could slip in:
/// a lab directory, an SSH config, a log filter, a GitHub token, a proxy
/// (which would stand between berth and 127.0.0.1), colour.
pub fn berth() -> Command {
    berth_at(std::path::Path::new(env!("CARGO_BIN_EXE_berth")))
}

/// A copy of the built berth that any user may run, in `dir` (the build
/// may sit under root's home, which is private on Debian), and
/// [`berth`]'s command for it.
pub fn berth_for_anyone(dir: &std::path::Path) -> Command {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join("berth");
    std::fs::copy(env!("CARGO_BIN_EXE_berth"), &copy).unwrap();
    for path in [dir, copy.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    berth_at(&copy)
}

fn berth_at(program: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "BERTH_LAB_DIR",
        "BERTH_SSH_CONFIG",
        "BERTH_STAGE",
        "RUST_LOG",
        "GITHUB_TOKEN",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// One finished berth run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `cmd`, showing its command line and stderr in the test's log.
    pub fn of(cmd: &mut Command) -> Run {
        let Output {
            status,
            stdout,
            stderr,
        } = cmd.output().unwrap();
        let run = Run {
            code: status.code().expect("berth was killed by a signal"),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        eprintln!("$ berth {}\n{}", args.join(" "), run.stderr);
        run
    }

    /// The JSON events on stdout named `name`.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// The last `result` event.
    pub fn result(&self) -> Value {
        self.events("result")
            .pop()
            .unwrap_or_else(|| panic!("no result event in:\n{}\n{}", self.stdout, self.stderr))
    }

    pub fn outcome(&self) -> String {
        self.result()["outcome"].as_str().unwrap().to_owned()
    }
}

/// The pids of this machine's processes whose argv (`/proc/PID/cmdline`,
/// split at NUL) `matches`: a plain lab host's processes share this
/// machine's pid space.
pub fn processes(matches: impl Fn(u32, &[String]) -> bool) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        if matches(pid, &words) {
            pids.push(pid);
        }
    }
    pids
}

/// Runs `cmd`: its exit code, stdout and stderr.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Run {
        code,
        stdout,
        stderr,
    } = Run::of(cmd);
    (code, stdout, stderr)
}

/// Runs git in `dir` with a fixed identity; returns what it printed,
/// trimmed, and panics when it fails.
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every line of `stdout`, as JSON.
pub fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// An answer: status code, extra header lines, JSON body.
pub type Answer = (u16, String, String);
/// Picks the answer to a request target, given how often it was asked before.
pub type Script = dyn Fn(&str, usize) -> Answer + Send + Sync;
/// Each request's target and its header lines, in lower case.
pub type Log = Mutex<Vec<(String, Vec<String>)>>;

/// One thread per connection; records each request's target and headers.
/// Stops listening when dropped.
pub struct Server {
    addr: SocketAddr,
    pub requests: Arc<Log>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// A server on 127.0.0.1.
    pub fn start(script: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> Server {
        Server::start_on(Ipv4Addr::LOCALHOST.into(), script)
    }

    /// A server on `ip`, e.g. the machine's address in a lab's network,
    /// which the lab's hosts reach.
    pub fn start_on(
        ip: IpAddr,
        script: impl Fn(&str, usize) -> Answer + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let log = requests.clone();
        let stopping = stop.clone();
        let script: Arc<Script> = Arc::new(script);
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                let script = script.clone();
                thread::spawn(move || answer(stream, &log, &*script));
            }
        });
        Server {
            addr,
            requests,
            stop,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn targets(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests.iter().map(|(t, _)| t.clone()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and closes the listener.
        // Should the address be gone already, the thread ends with the test.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
            if let Some(accept) = self.accept.take() {
                let _ = accept.join();
            }
        }
    }
}

fn answer(stream: TcpStream, log: &Log, script: &Script) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => headers.push(line.trim_end().to_ascii_lowercase()),
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let hit = {
        let mut log = log.lock().unwrap();
        let hit = log.iter().filter(|(t, _)| *t == target).count();
        log.push((target.clone(), headers));
        hit
    };
    let (status, extra, body) = script(&target, hit);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=utf-8\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// One commit of one repository, and what GitHub says about it.
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a> {
    pub repo: &'a str,
    pub sha: &'a str,
}

impl Commit<'_> {
    pub fn check_runs_path(&self) -> String {
        format!(
            "/repos/{}/commits/{}/check-runs?per_page=100",
            self.repo, self.sha
        )
    }

    pub fn status_path(&self) -> String {
        format!("/repos/{}/commits/{}/status", self.repo, self.sha)
    }

    /// A check run as GitHub returns it.
    pub fn run(&self, id: u64, name: &str, status: &str, conclusion: Option<&str>) -> Value {
        let (repo, sha) = (self.repo, self.sha);
        json!({
            "id": id,
            "head_sha": sha,
            "node_id": format!("CR_kwDO{id}"),
            "external_id": "",
            "url": format!("https://api.github.com/repos/{repo}/check-runs/{id}"),
            "html_url": format!("https://github.com/{repo}/actions/runs/7000/job/{id}"),
            "details_url": format!("https://github.com/{repo}/actions/runs/7000/job/{id}"),
            "status": status,
            "conclusion": conclusion,
            "started_at": "2026-11-23T12:00:00Z",
            "completed_at": conclusion.map(|_| "2026-11-23T12:03:00Z"),
            "name": name,
            "check_suite": { "id": 9000 },
            "app": { "id": 15368, "slug": "github-actions", "name": "GitHub Actions" },
            "pull_requests": []
        })
    }

    /// The combined status, as GitHub returns it (`pending` with no statuses).
    pub fn statuses(&self, statuses: Vec<Value>) -> Answer {
        let (repo, sha) = (self.repo, self.sha);
        let body = json!({
            "state": if statuses.is_empty() { "pending" } else { "failure" },
            "statuses": statuses,
            "sha": sha,
            "total_count": statuses.len(),
            "repository": { "id": 1, "full_name": repo },
            "commit_url": format!("https://api.github.com/repos/{repo}/commits/{sha}"),
            "url": format!("https://api.github.com/repos/{repo}/commits/{sha}/status")
        });
        (200, String::new(), body.to_string())
    }

    /// GitHub's answer for a commit it does not have.
    pub fn not_found(&self) -> Answer {
        (
            404,
            String::new(),
            json!({
                "message": format!("No commit found for SHA: {}", self.sha),
                "documentation_url": "https://docs.github.com/rest/checks/runs#list-check-runs-for-a-git-reference",
                "status": "404"
            })
            .to_string(),
        )
    }
}

/// A page of check runs.
pub fn runs(runs: Vec<Value>) -> Answer {
    let body = json!({ "total_count": runs.len(), "check_runs": runs });
    (200, String::new(), body.to_string())
}

/// Makes lab host h1 (a systemd host) a host with a deploy user, as
/// berth's module would: Nix's daemon trusting a new key of the test's, a
/// user `deploy` with the deployer's SSH key and the sudo rule of
/// `berth.agent.deployUsers` naming `agent` (the berth it runs), and
/// `/etc/berth/agent.json` requiring that key. Returns the key's
/// directory (keep it) and its secret key file, and the public key.
pub async fn lab_deploy_user(
    lab: &berth::lab::Lab,
    agent: &str,
) -> (tempfile::TempDir, String, String) {
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = deploy_user::signing_key(keys.path(), "test-deploy");
    let root = lab.connect("h1").await.unwrap();
    deploy_user::set_up(lab, &root, "deploy", None, &[&public]).await;
    let rule = sudoers::deploy_rule(&["deploy"], agent);
    deploy_user::install_sudoers(&root, "berth-deploy", &rule)
        .await
        .unwrap();
    let agent_json =
        json!({ "trustedPublicKeys": [public], "nixTrustedPublicKeys": [public] }).to_string();
    deploy_user::root_sh(&root, "mkdir -p /etc/berth", &[], "").await;
    deploy_user::write_file(&root, "/etc/berth/agent.json", &agent_json, 0o644).await;
    root.close().await.unwrap();
    (keys, secret.to_string_lossy().into_owned(), public)
}

/// The JSON value of `function` (a Nix function of an attrset) applied to
/// `args`, each passed with `--argstr`, so no value needs Nix quoting;
/// evaluated with `nix-instantiate` from the repository's root. Panics
/// when it does not evaluate.
pub fn nix_eval(function: &str, args: &[(&str, &str)]) -> Value {
    let mut cmd = std::process::Command::new("nix-instantiate");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--eval", "--strict", "--json", "-E", function]);
    for (name, value) in args {
        cmd.args(["--argstr", name, value]);
    }
    let out = cmd
        .output()
        .expect("nix-instantiate could not start (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "nix-instantiate failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("nix-instantiate --json prints JSON")
}
