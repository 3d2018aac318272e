//! An app on a systemd lab host, for the app tests (tests/app.rs) and the
//! app fault trials (tests/faults_app.rs): the real test app (tests/app:
//! Python, SQLite in WAL mode written every 10 ms) run by its own user
//! through a systemd unit, restarted through a sudo rule limited to that
//! unit, its code in a git repository on the host; berth run as the
//! deployer, root over one SSH connection, a poller from outside.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::host::{Host, SshHost};
use berth::lab::{HostKind, LabGuard};
use berth::process::Cmd;

use super::Run;

pub const BIN: &str = env!("CARGO_BIN_EXE_berth");
pub const SERVICE: &str = "notes";
pub const DIR: &str = "/var/lib/notes";
pub const PORT: u16 = 8090;

/// The test's view of the lab host: root over one SSH connection, and
/// berth run as the deployer.
pub struct World {
    pub lab: LabGuard,
    pub root: SshHost,
    pub addr: String,
}

impl World {
    pub fn berth_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = super::berth();
        cmd.args(args)
            .args(["--agent", BIN, "--json"])
            .env("BERTH_SSH_CONFIG", self.lab.ssh_config())
            .env("USER", "tester")
            .env_remove("GITHUB_REPOSITORY")
            // The tests that want CI set it themselves.
            .env_remove("CI");
        cmd
    }

    pub fn berth(&self, args: &[&str]) -> Run {
        Run::of(&mut self.berth_cmd(args))
    }

    pub fn deploy(&self, rev: &str, extra: &[&str]) -> Run {
        let mut args = vec!["app", "deploy", SERVICE, "--host", "h1", "--rev", rev];
        args.extend_from_slice(extra);
        self.berth(&args)
    }

    /// Starts `berth …` and returns it once a `phase` event named `phase`
    /// appears, with the pid the agent reported.
    pub fn start_until_phase(&self, args: &[&str], phase: &str) -> (std::process::Child, u32) {
        let mut cmd = self.berth_cmd(args);
        // Its own process group, so the test can cut it off whole.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut pid = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["event"] != "phase" {
                continue;
            }
            let message = event["message"].as_str().unwrap_or("");
            if let Some(p) = message.split("agent pid ").nth(1) {
                pid = p.trim_end_matches(')').parse().ok();
            }
            if event["phase"] == phase {
                return (child, pid.expect("the agent reported its pid"));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("berth {args:?} ended before phase {phase}");
    }

    /// Deploys `rev` and kill -9s the agent on the host once it reports
    /// `phase`.
    pub async fn kill_agent_during(&self, rev: &str, phase: &str) {
        let (child, pid) = self.start_until_phase(
            &["app", "deploy", SERVICE, "--host", "h1", "--rev", rev],
            phase,
        );
        self.sh(&format!("kill -9 {pid}")).await;
        let _ = child.wait_with_output();
    }

    pub async fn sh(&self, script: &str) -> String {
        self.root
            .run(&Cmd::new("sh").args(["-c", script]))
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
            .stdout_str()
    }

    pub async fn write(&self, path: &str, text: &str) {
        self.root
            .run(
                &Cmd::new("sh")
                    .args(["-c", "cat > \"$0\"", path])
                    .stdin(text),
            )
            .await
            .unwrap();
    }

    /// Commits `behaviour` (on `branch`, made from main if new) and pushes
    /// it; returns the commit.
    pub async fn commit(&self, behaviour: serde_json::Value, branch: &str) -> String {
        self.commit_file("behaviour.json", &behaviour.to_string(), branch)
            .await
    }

    /// Commits `text` as the repository's file `path` (on `branch`, made
    /// from main if new) and pushes it; returns the commit.
    pub async fn commit_file(&self, path: &str, text: &str, branch: &str) -> String {
        let full = format!("/srv/notes-work/{path}");
        self.sh(&format!("mkdir -p \"$(dirname {full})\"")).await;
        self.write(&full, text).await;
        let script = format!(
            "cd /srv/notes-work && git checkout -q -B {branch} && git add -A && \
             git commit -q -m 'update {path}' && git push -q -f origin {branch} && \
             git rev-parse HEAD && git checkout -q main"
        );
        self.sh(&script).await.trim().to_owned()
    }

    pub async fn sqlite(&self, db: &str, sql: &str) -> String {
        self.sh(&format!("sqlite3 {db} \"{sql}\""))
            .await
            .trim()
            .to_owned()
    }

    pub async fn current(&self) -> String {
        self.sh(&format!("readlink {DIR}/current"))
            .await
            .trim()
            .rsplit('/')
            .next()
            .unwrap()
            .to_owned()
    }

    /// The revision the app reports over HTTP.
    pub fn serving(&self) -> Option<String> {
        let body = http_get(&self.addr, "/health").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["revision"].as_str().map(str::to_owned)
    }
}

/// A GET over plain TCP: the status line decides.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    http_get_at(addr, PORT, path)
}

/// A GET of `path` on `port`.
pub fn http_get_at(addr: &str, port: u16, path: &str) -> Result<String, String> {
    http_get_within(addr, port, path, Duration::from_secs(2))
}

/// A GET of `path` on `port` that waits up to `timeout` to connect and
/// again to read the answer.
pub fn http_get_within(
    addr: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&format!("{addr}:{port}").parse().unwrap(), timeout)
            .map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(timeout)).ok();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no body")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_owned());
    }
    Ok(body.to_owned())
}

/// Polls /health every 10 ms until stopped; counts failed requests.
pub struct Poller {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Poller {
    pub fn start(addr: &str) -> Poller {
        let (stop, failed, total) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, f, t, addr) = (stop.clone(), failed.clone(), total.clone(), addr.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if http_get(&addr, "/health").is_err() {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                t.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Poller {
            stop,
            failed,
            total,
            thread,
        }
    }

    /// (failed, total)
    pub fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.failed.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// How the service runs: one plain unit `notes.service` (as
/// `berth.services.notes` with `instances = 1`), or `instances` of the
/// template `notes@.service`, at most `max`; with `socket`, the plain unit
/// behind `notes.socket` (`socketActivation = true`).
#[derive(Clone, Copy, Debug)]
pub struct Instances {
    pub instances: u32,
    pub max: u32,
    pub socket: bool,
}

impl Instances {
    pub const ONE: Instances = Instances {
        instances: 1,
        max: 1,
        socket: false,
    };

    pub const SOCKET: Instances = Instances {
        socket: true,
        ..Instances::ONE
    };

    pub fn templated(self) -> bool {
        self.max > 1
    }
}

/// The service's manifest, as the module would write it.
pub fn manifest() -> serde_json::Value {
    manifest_of(Instances::ONE)
}

/// The manifest of the service run as `how` (nix/lib/manifest.nix: a
/// template, the counts, the base port and `{port}` in the health URL).
pub fn manifest_of(how: Instances) -> serde_json::Value {
    let mut m = manifest_plain();
    if how.templated() {
        m["unit"] = "notes@.service".into();
        m["instances"] = how.instances.into();
        m["maxInstances"] = how.max.into();
        m["port"] = PORT.into();
        m["health"]["url"] = "http://127.0.0.1:{port}/health".into();
    }
    if how.socket {
        m["port"] = PORT.into();
        m["socketActivation"] = true.into();
    }
    m
}

fn manifest_plain() -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "service": SERVICE,
        "dir": DIR,
        "unit": "notes.service",
        "repository": "file:///srv/notes.git",
        "branch": "main",
        "health": {
            "url": format!("http://127.0.0.1:{PORT}/health"),
            "timeout": 8,
            "settle": 1,
            "expectRevision": true,
        },
        "commands": { "install": "bash install.sh", "migrate": "bash migrate.sh" },
        "data": { "sqlite": ["data/app.db"] },
        "keepReleases": 3,
        "keepSnapshots": 3,
        "environment": { "APP_DB": format!("{DIR}/data/app.db"), "APP_SLOW_SECS": "6" },
        "stage": "production",
    })
}

pub async fn set_up(lab: &LabGuard, how: Instances) -> String {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app");
    let (unit_file, unit_name) = if how.templated() {
        ("app@.service.in", "notes@.service")
    } else {
        ("app.service.in", "notes.service")
    };
    let fill = |file: &str| {
        std::fs::read_to_string(fixture.join(file))
            .unwrap()
            .replace("@SERVICE@", SERVICE)
            .replace("@DIR@", DIR)
            .replace("@PORT@", &PORT.to_string())
    };
    // The test polls from outside the host; the health check stays on
    // loopback.
    let unit = fill(unit_file).replace("APP_DB=", "APP_HOST=0.0.0.0 APP_SLOW_SECS=6 APP_DB=");
    // With socketActivation: notes.socket, and its drop-in for the unit.
    let socket = if how.socket {
        format!(
            "cat > /etc/systemd/system/{SERVICE}.socket <<'UNIT'\n{}\nUNIT\n\
             mkdir -p /etc/systemd/system/{unit_name}.d /etc/systemd/system/sockets.target.wants\n\
             cat > /etc/systemd/system/{unit_name}.d/socket.conf <<'UNIT'\n{}\nUNIT\n\
             ln -sf /etc/systemd/system/{SERVICE}.socket /etc/systemd/system/sockets.target.wants/\n",
            fill("app.socket.in"),
            fill("socket.conf.in"),
        )
    } else {
        String::new()
    };
    let manifest = manifest_of(how);
    // The sudo rule nix/lib/sudo.nix writes: four verbs of each unit the
    // service may run, each named.
    let units: Vec<String> = if how.templated() {
        (1..=how.max)
            .map(|i| format!("{SERVICE}@{i}.service"))
            .collect()
    } else {
        vec![format!("{SERVICE}.service")]
    };
    let commands: Vec<String> = units
        .iter()
        .flat_map(|unit| {
            ["restart", "stop", "start", "status"]
                .map(|verb| format!("/usr/bin/systemctl {verb} {unit}"))
        })
        .collect();
    let sudoers = format!("{SERVICE} ALL=(root) NOPASSWD: {}", commands.join(", "));
    let wanted: Vec<String> = if how.templated() {
        (1..=how.instances)
            .map(|i| format!("{SERVICE}@{i}.service"))
            .collect()
    } else {
        Vec::new()
    };
    format!(
        r#"set -e
useradd --system --home-dir {DIR} --shell /bin/sh {SERVICE}
usermod -p '*' {SERVICE}
install -d -o {SERVICE} -g {SERVICE} -m 0750 {DIR} {DIR}/data
install -d -o {SERVICE} -g {SERVICE} -m 0700 {DIR}/.ssh
install -o {SERVICE} -g {SERVICE} -m 0600 {key} {DIR}/.ssh/authorized_keys
# The system config of whichever git is first on PATH (/usr/local or Debian's).
mkdir -p /usr/local/etc
git config --system --add safe.directory '*'
git config --system user.name test
git config --system user.email test@example.com
mkdir -p /srv/notes-work /etc/berth/services
cp {fixture}/app.py {fixture}/install.sh {fixture}/migrate.sh {fixture}/requirements.lock /srv/notes-work/
cd /srv/notes-work && git init -q -b main && git add -A && git commit -q -m app
git init -q --bare /srv/notes.git && git push -q /srv/notes.git main
git remote add origin /srv/notes.git
cat > /etc/sudoers.d/{SERVICE} <<'SUDO'
{sudoers}
SUDO
chmod 0440 /etc/sudoers.d/{SERVICE}
visudo -c -q -f /etc/sudoers.d/{SERVICE}
printf '[Service]\nExecStart=/bin/sleep infinity\n' > /etc/systemd/system/other.service
cat > /etc/systemd/system/{unit_name} <<'UNIT'
{unit}
UNIT
{socket}# The instances a boot starts (the module's multi-user.target wants).
for unit in {wanted}; do
  mkdir -p /etc/systemd/system/multi-user.target.wants
  ln -sf /etc/systemd/system/{unit_name} /etc/systemd/system/multi-user.target.wants/$unit
done
cat > /etc/berth/services/notes.json <<'JSON'
{manifest}
JSON
systemctl daemon-reload
systemctl start other.service
"#,
        key = lab.dir().join("id_ed25519.pub").display(),
        wanted = wanted.join(" "),
        fixture = fixture.display(),
    )
}

impl World {
    /// A systemd lab host under /srv/berth-<name>-<pid>-app with the
    /// service set up; `body` runs against it, then the lab goes down (or,
    /// on a panic, the guard takes it down).
    pub fn run(name: &str, body: impl AsyncFnOnce(&World)) {
        World::run_with(name, Instances::ONE, &[], body)
    }

    /// As [`World::run`], with the service run as `how` and more hosts of
    /// `kinds` (h2, h3, …) beside the app's h1.
    pub fn run_with(
        name: &str,
        how: Instances,
        kinds: &[HostKind],
        body: impl AsyncFnOnce(&World),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = PathBuf::from(format!("/srv/berth-{name}-{}-app", std::process::id()));
            let kinds: Vec<HostKind> = [HostKind::Systemd]
                .into_iter()
                .chain(kinds.iter().copied())
                .collect();
            let lab = LabGuard::up(&dir, &kinds).await.expect("lab up");
            let root = lab.connect("h1").await.unwrap();
            let addr = lab.host("h1").unwrap().net.addr.to_string();
            let w = World { lab, root, addr };
            let script = set_up(&w.lab, how).await;
            w.sh(&script).await;
            body(&w).await;
            let World { lab, root, .. } = w;
            let _ = root.close().await;
            lab.down().await.unwrap();
        });
    }
}
