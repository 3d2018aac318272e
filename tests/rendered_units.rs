//! The units and the sudo rule berth's module writes for a service, as
//! rendered from nix/lib (tests/common/units.rs, which says what differs
//! from a NixOS host's files), run by a systemd lab host's real systemd
//! and sudo (Debian's): a hardened python service (the test app of
//! tests/app) and a hardened node service (a small server written here,
//! started by the runtime's default `npm start`) start, serve and write
//! nowhere but data/, with their `systemd-analyze security` exposure
//! printed; the socket of `socketActivation` and the hold work as written;
//! the service's user may restart its own unit through sudo and nothing
//! else. Needs root and the lab's packages (scripts/install-deps).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth::host::SshHost;
use berth::lab::{HostKind, LabGuard};
use common::deploy_user::{resolve_own_name, root_sh, root_sh_output};
use common::units::{render, Rendered};
use serde_json::{json, Value};

/// The highest exposure a default unit may score (scripts/nix-check holds
/// the offline score to the same).
const MAX_EXPOSURE: f64 = 2.0;

#[test]
fn hardened_python_and_node_services_start_serve_and_write_only_their_data() {
    on_systemd_host("units", async |root| {
        let python = python_service("pyapp", 8101);
        let node = node_service("nodeapp", 8102);
        // The runtime, git and the system's tools, from Debian's /usr.
        assert!(
            node.service
                .contains("Environment=\"PATH=/usr/bin:/usr/sbin\"\n"),
            "{}",
            node.service
        );
        for (service, files) in [(&python, python_files()), (&node, node_files(&node))] {
            service.install(root).await;
            let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
            service.release(root, &files).await;
        }
        root_sh(
            root,
            "systemctl start pyapp.service nodeapp.service",
            &[],
            "",
        )
        .await;

        // Each serves on its port, and writes its data.
        let health = serving(root, &python, 8101).await;
        assert_eq!(health["revision"], "r1", "{health}");
        let health = serving(root, &node, 8102).await;
        assert_eq!(health["revision"], "r1", "{health}");
        assert_eq!(health["nodeEnv"], "production", "{health}");
        // Created under the unit's UMask=0077, by the service's user.
        for file in [
            "/var/lib/pyapp/data/app.db",
            "/var/lib/nodeapp/data/requests.log",
        ] {
            let owner = root_sh(root, r#"stat -c '%U %a' "$1""#, &[file], "").await;
            let user = file.split('/').nth(3).unwrap();
            assert_eq!(owner.trim(), format!("{user} 600"), "{file}");
        }
        let rows = serving(root, &python, 8101).await["rows"].as_u64().unwrap();
        assert!(rows > 0, "the app wrote no row into data/app.db");

        // Where each may write: data/ only. Its release, its directory,
        // .berth and a directory of its own elsewhere are read-only to it
        // (all owned by its user, so only the sandbox refuses); /tmp is
        // its own.
        for service in [&python, &node] {
            let dir = service.dir();
            let outside = format!("/srv/{}-outside", service.name);
            root_sh(
                root,
                r#"install -d -o "$2" -g "$3" "$1""#,
                &[&outside, &service.user, &service.group],
                "",
            )
            .await;
            let probes = [
                format!("{dir}/data"),
                format!("{dir}/current"),
                dir.clone(),
                format!("{dir}/.berth"),
                outside,
            ];
            let probes: Vec<&str> = probes.iter().map(String::as_str).collect();
            let found = writable(root, service, &probes).await;
            eprintln!("{}: {found:?}", service.unit);
            assert_eq!(found[0], (probes[0].to_owned(), None), "{found:?}");
            for (path, refusal) in &found[1..] {
                let refusal = refusal
                    .as_deref()
                    .unwrap_or_else(|| panic!("{} may write {path}", service.unit));
                assert!(
                    refusal.contains("Read-only file system"),
                    "{path}: {refusal}"
                );
            }
            let tmp = root_sh(
                root,
                r#"pid=$(systemctl show -P MainPID "$1")
nsenter -t "$pid" -m -S "$(id -u "$2")" -G "$(id -g "$2")" -- sh -c 'echo x > /tmp/berth-probe'
test -e /tmp/berth-probe && echo shared || echo private
nsenter -t "$pid" -m -- rm -f /tmp/berth-probe"#,
                &[&service.unit, &service.user],
                "",
            )
            .await;
            assert_eq!(tmp.trim(), "private", "{}", service.unit);
        }

        // The exposure systemd itself gives each running unit.
        for service in [&python, &node] {
            let (score, exposed) = exposure(root, &service.unit).await;
            eprintln!(
                "systemd-analyze security {}: exposure {score}, from:\n  {}",
                service.unit,
                exposed.join("\n  ")
            );
            assert!(
                score <= MAX_EXPOSURE,
                "{} scores {score}, above {MAX_EXPOSURE}",
                service.unit
            );
        }
        let journal = root_sh(
            root,
            "journalctl -u pyapp.service -u nodeapp.service -o cat",
            &[],
            "",
        )
        .await;
        eprintln!("{journal}");
    });
}

#[test]
fn the_socket_and_the_hold_work_as_rendered() {
    on_systemd_host("socket", async |root| {
        let port = 8103;
        let service = render(
            "sockapp",
            &json!({
                "enable": true,
                "port": port,
                "runtime": "python",
                "start": "exec python3 app.py",
                "socketActivation": true,
                "environment": { "APP_DB": "/var/lib/sockapp/data/app.db" },
            }),
        );
        let socket = service.socket.as_deref().expect("a socket unit");
        assert!(
            socket.contains(&format!("ListenStream=127.0.0.1:{port}\n")),
            "{socket}"
        );
        assert!(
            service.service.contains("ExecStartPre="),
            "{}",
            service.service
        );
        service.install(root).await;

        // Before the first release: skipped, not failed.
        root_sh(root, "systemctl start sockapp.socket", &[], "").await;
        assert_eq!(
            show(root, "sockapp.socket", "ActiveState").await,
            "inactive"
        );
        assert_eq!(show(root, "sockapp.socket", "ConditionResult").await, "no");

        // Released, but held: the socket listens, and a connection starts
        // the unit, whose start waits for the hold to go.
        let files = python_files();
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        service.release(root, &files).await;
        let hold = format!("{}/.berth/hold", service.dir());
        root_sh(root, r#"runuser -u sockapp -- touch "$1""#, &[&hold], "").await;
        root_sh(root, "systemctl start sockapp.socket", &[], "").await;
        let listening = root_sh(root, r#"ss -Hltn "sport = :$1""#, &[&port.to_string()], "").await;
        assert!(
            listening.contains(&format!("127.0.0.1:{port}")),
            "{listening}"
        );
        assert_eq!(
            show(root, "sockapp.service", "ActiveState").await,
            "inactive"
        );

        let url = format!("http://127.0.0.1:{port}/health");
        let args = [url.as_str()];
        let held = root_sh_output(
            root,
            r#"curl -sS -m 60 -w '\n%{http_code}' "$1""#,
            &args,
            "",
        );
        let release = async {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                assert_eq!(show(root, "sockapp.service", "SubState").await, "start-pre");
                assert_eq!(show(root, "sockapp.service", "MainPID").await, "0");
                // The app has not run: it would have made its database.
                let db = root_sh(
                    root,
                    "test -e /var/lib/sockapp/data/app.db; echo $?",
                    &[],
                    "",
                )
                .await;
                assert_eq!(db.trim(), "1", "the app started while held");
            }
            let journal = root_sh(root, "journalctl -u sockapp.service -o cat", &[], "").await;
            assert!(
                journal.contains(&format!(
                    "berth: waiting for the deploy that stopped this service to let it start ({hold})"
                )),
                "{journal}"
            );
            root_sh(root, r#"rm "$1""#, &[&hold], "").await;
            Instant::now()
        };
        let (held, released) = tokio::join!(held, release);
        let answered = Instant::now();
        let text = held.stdout_str();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        assert_eq!(
            code,
            "200",
            "{text}\n{}",
            String::from_utf8_lossy(&held.stderr)
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["revision"], "r1", "{body}");
        eprintln!(
            "the held request was answered {:?} after the hold went",
            answered - released
        );
        let journal = root_sh(root, "journalctl -u sockapp.service -o cat", &[], "").await;
        assert!(journal.contains("(socket from systemd)"), "{journal}");
    });
}

#[test]
fn the_service_user_may_restart_its_own_unit_and_nothing_else() {
    on_systemd_host("sudo", async |root| {
        resolve_own_name(root).await;
        let python = python_service("pyapp", 8101);
        python.install(root).await;
        let files = python_files();
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        python.release(root, &files).await;
        // A service with instances: its rule names notes@1 … @maxInstances.
        let multi = render(
            "multi",
            &json!({
                "enable": true,
                "port": 8110,
                "instances": 2,
                "maxInstances": 3,
                "runtime": "python",
                "start": "exec python3 app.py",
            }),
        );
        assert_eq!(multi.unit, "multi@.service");
        multi.install(root).await;
        eprintln!("{}{}", python.sudoers, multi.sudoers);
        root_sh(
            root,
            "printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /etc/systemd/system/other.service
systemctl daemon-reload
systemctl start pyapp.service other.service",
            &[],
            "",
        )
        .await;
        serving(root, &python, 8101).await;

        let pid = |unit: &'static str| show(root, unit, "MainPID");
        let (app, other) = (pid("pyapp.service").await, pid("other.service").await);

        // Its own unit: restarted (a new process), and serving again.
        let ran = as_user(root, "pyapp", &["systemctl", "restart", "pyapp.service"]).await;
        if ran.0 != 0 {
            // Why the start failed, for whoever reads the failure.
            let journal = root_sh_output(
                root,
                "journalctl -u pyapp.service -n 40 --no-pager",
                &[],
                "",
            )
            .await;
            panic!(
                "restart of pyapp.service exited {}: {}\n{}",
                ran.0,
                ran.1,
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        assert_ne!(pid("pyapp.service").await, app);
        serving(root, &python, 8101).await;
        // Each instance of its own, up to maxInstances (not released yet:
        // systemd skips it, and says so with success).
        let ran = as_user(root, "multi", &["systemctl", "restart", "multi@3.service"]).await;
        assert_eq!(ran.0, 0, "{}", ran.1);

        // Nothing else, refused by sudo before anything runs.
        for (user, argv) in [
            ("pyapp", &["systemctl", "restart", "other.service"][..]),
            ("pyapp", &["systemctl", "stop", "ssh"]),
            ("pyapp", &["bash", "-c", "id"]),
            (
                "pyapp",
                &["systemctl", "restart", "pyapp.service", "other.service"],
            ),
            ("pyapp", &["systemctl", "restart", "multi@1.service"]),
            ("pyapp", &["systemctl", "kill", "pyapp.service"]),
            // The unit's full name only, as berth's agent passes it.
            ("pyapp", &["systemctl", "restart", "pyapp"]),
            ("multi", &["systemctl", "restart", "multi@4.service"]),
            ("multi", &["systemctl", "restart", "multi@.service"]),
            (
                "multi",
                &["systemctl", "restart", "multi@1.service", "other.service"],
            ),
            ("multi", &["systemctl", "restart", "pyapp.service"]),
        ] {
            let (code, stderr) = as_user(root, user, argv).await;
            assert_ne!(code, 0, "{user} may run {argv:?}");
            assert!(
                stderr.contains("sudo: a password is required"),
                "{user} {argv:?}: {stderr}"
            );
        }
        assert_eq!(
            pid("other.service").await,
            other,
            "other.service was restarted"
        );
        let ssh = root_sh(root, "systemctl is-active ssh.service", &[], "").await;
        assert_eq!(ssh.trim(), "active");
    });
}

// --- The services -----------------------------------------------------------

/// The test app (tests/app/app.py) as a python service.
fn python_service(name: &str, port: u16) -> Rendered {
    render(
        name,
        &json!({
            "enable": true,
            "port": port,
            "runtime": "python",
            "start": "exec python3 app.py",
            // app.py's default is relative to the release, not data/.
            "environment": { "APP_DB": format!("/var/lib/{name}/data/app.db") },
        }),
    )
}

fn python_files() -> Vec<(&'static str, String)> {
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app/app.py");
    vec![("app.py", std::fs::read_to_string(app).unwrap())]
}

/// A node service with the runtime's default start, `npm start`.
fn node_service(name: &str, port: u16) -> Rendered {
    render(
        name,
        &json!({
            "enable": true,
            "port": port,
            "runtime": "node",
            // The lab has no network; npm need not look for itself.
            "environment": { "npm_config_update_notifier": "false" },
        }),
    )
}

/// An HTTP server answering /health with 200, its revision and NODE_ENV,
/// logging each request into data/.
fn node_files(service: &Rendered) -> Vec<(&'static str, String)> {
    let server = format!(
        r#"const fs = require("fs");
const http = require("http");
const revision = fs.readFileSync(".berth-revision", "utf8").trim();
const log = "{dir}/data/requests.log";
http.createServer((req, res) => {{
  fs.appendFileSync(log, `${{req.method}} ${{req.url}}\n`);
  const ok = req.url === "/health";
  res.writeHead(ok ? 200 : 404, {{ "Content-Type": "application/json" }});
  res.end(JSON.stringify({{ ok, revision, nodeEnv: process.env.NODE_ENV }}) + "\n");
}}).listen(Number(process.env.PORT), "127.0.0.1", () => {{
  console.log(`serving ${{revision}} on 127.0.0.1:${{process.env.PORT}}`);
}});
"#,
        dir = service.dir()
    );
    let package = json!({
        "name": service.name,
        "private": true,
        "scripts": { "start": "node server.js" },
    });
    vec![
        ("server.js", server),
        ("package.json", format!("{package:#}\n")),
    ]
}

// --- On the host --------------------------------------------------------------

/// A systemd lab host under /srv/berth-test-<pid>-rendered-<name>; `body`
/// runs against it as root, then the lab goes down (or, on a panic, the
/// guard takes it down).
fn on_systemd_host(name: &str, body: impl AsyncFnOnce(&SshHost)) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = PathBuf::from(format!(
            "/srv/berth-test-{}-rendered-{name}",
            std::process::id()
        ));
        let lab = LabGuard::up(&dir, &[HostKind::Systemd])
            .await
            .expect("lab up");
        let root = lab.connect("h1").await.unwrap();
        body(&root).await;
        let _ = root.close().await;
        lab.down().await.unwrap();
    });
}

/// The /health answer of `service` on `port`, once it is 200 (within 30 s).
async fn serving(root: &SshHost, service: &Rendered, port: u16) -> Value {
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = root_sh_output(
            root,
            r#"curl -sS -m 5 -w '\n%{http_code}' "$1""#,
            &[&url],
            "",
        )
        .await;
        let text = out.stdout_str();
        if let Some((body, "200")) = text.rsplit_once('\n') {
            return serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        }
        if Instant::now() > deadline {
            let journal = root_sh(
                root,
                r#"systemctl status --no-pager "$1"; journalctl -u "$1" -o cat"#,
                &[&service.unit],
                "",
            )
            .await;
            panic!(
                "{} does not serve on {port}: {text}\n{journal}",
                service.unit
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// For each of `paths`, whether the service's user, in the mount
/// namespace of its running unit (what its sandbox made of the file
/// system), may create a file there: `None`, or what refused it.
async fn writable(
    root: &SshHost,
    service: &Rendered,
    paths: &[&str],
) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    for path in paths {
        let out = root_sh_output(
            root,
            r#"pid=$(systemctl show -P MainPID "$1")
[ "$pid" -gt 0 ] || { echo "$1 does not run" >&2; exit 100; }
nsenter -t "$pid" -m -S "$(id -u "$2")" -G "$(id -g "$2")" -- \
  sh -c 'echo probe > "$1/.berth-probe" && rm "$1/.berth-probe"' sh "$3""#,
            &[&service.unit, &service.user, path],
            "",
        )
        .await;
        let refusal =
            (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned());
        assert_ne!(out.status.code(), Some(100), "{refusal:?}");
        found.push(((*path).to_owned(), refusal));
    }
    found
}

/// The value of `property` of `unit` (`systemctl show -P`).
async fn show(root: &SshHost, unit: &str, property: &str) -> String {
    root_sh(
        root,
        r#"systemctl show -P "$2" "$1""#,
        &[unit, property],
        "",
    )
    .await
    .trim()
    .to_owned()
}

/// `systemd-analyze security <unit>` of a loaded unit: its overall
/// exposure, and the settings it counts against the unit (its lines
/// marked ✗).
async fn exposure(root: &SshHost, unit: &str) -> (f64, Vec<String>) {
    let out = root_sh(
        root,
        r#"systemd-analyze security --no-pager "$1" 2>&1"#,
        &[unit],
        "",
    )
    .await;
    let score = out
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("Overall exposure level for ")?;
            rest.split_once(": ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure in:\n{out}"));
    let exposed = out
        .lines()
        .filter(|line| line.trim_start().starts_with('✗'))
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (score, exposed)
}

/// Runs `sudo -n <argv>` as `user` (no password, no terminal, as berth's
/// agent does): its exit code and stderr.
async fn as_user(root: &SshHost, user: &str, argv: &[&str]) -> (i32, String) {
    let mut args = vec![user];
    args.extend_from_slice(argv);
    let out = root_sh_output(
        root,
        r#"user=$1; shift; cd / && runuser -u "$user" -- sudo -n "$@""#,
        &args,
        "",
    )
    .await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
