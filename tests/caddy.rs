//! Caddy reading what berth's modules write (issue 22). The Caddyfile
//! nixpkgs' caddy module assembles from berth's virtual hosts
//! (tests/common/caddy.rs) is fed to Debian's caddy: `caddy adapt` and
//! `caddy validate` accept every kind of virtual host berth writes, and
//! name exactly what they lack for the options that need a plugin or a
//! later Caddy. Then a real Caddy in front of the test app on a systemd lab
//! host (tests/common/app.rs) serves it over HTTPS with its internal CA, and
//! clients inside the host send a request every 10 ms through Caddy (GET
//! and POST) and on the app's port while the service is deployed again and
//! again: plain (not one GET fails through Caddy, while the app's port
//! refuses some), and socket-activated (nothing fails).
//! `BERTH_CADDY_DEPLOYS` deploys (3 under `cargo test`; 10 in
//! `bench/caddy/run`, which prints the rows BENCHMARKS.md records). Needs
//! root, nix-instantiate, caddy and the lab's packages (scripts/install-deps).

mod common;

use std::time::Duration;

use common::app::{Instances, World, PORT};
use common::caddy::{self, objects_with, Sandbox};
use serde_json::Value;

// The virtual hosts berth writes, one of each kind (Nix: name -> the
// options of berth.services.<name>).
const PLAIN: &str = r#"notes = { enable = true; port = 3000; domain = "notes.example.com"; };"#;
const INSTANCES: &str = r#"multi = { enable = true; port = 4000; instances = 2; maxInstances = 3; domain = "multi.example.com"; };"#;
const ALIASES: &str = r#"shop = { enable = true; port = 3001; domain = "shop.example.com";
  serverAliases = [ "www.shop.example.com" "shop.example.org" ];
  caddy = { hsts = false; extraConfig = "encode zstd gzip\nheader X-Frame-Options DENY"; }; };"#;
// A service that serves nothing: no virtual host.
const WORKER: &str =
    r#"worker = { enable = true; runtime = "python"; start = "python3 -m worker"; };"#;

fn services(defs: &[&str]) -> String {
    format!("{{ {} }}", defs.join(" "))
}

/// The Caddyfile of `defs` with access logs in the sandbox (so that
/// `validate`, which opens them, writes nothing outside it).
fn caddyfile(sandbox: &Sandbox, defs: &[&str]) -> String {
    let logs = sandbox.path().join("log");
    caddy::caddyfile(&services(defs), "", logs.to_str().unwrap())
}

/// The route of the virtual host named `host` in an adapted config.
fn route<'a>(config: &'a Value, host: &str) -> &'a Value {
    let routes = config["apps"]["http"]["servers"]["srv0"]["routes"]
        .as_array()
        .expect("one server with routes");
    routes
        .iter()
        .find(|r| {
            r["match"][0]["host"]
                .as_array()
                .is_some_and(|names| names.iter().any(|n| n == host))
        })
        .unwrap_or_else(|| panic!("no route for {host} in {config:#}"))
}

fn one<'a>(route: &'a Value, handler: &str) -> &'a Value {
    let found = objects_with(route, "handler", handler);
    assert_eq!(found.len(), 1, "one {handler} in {route:#}");
    found[0]
}

#[test]
fn debian_caddy_accepts_every_virtual_host_berth_writes() {
    let sandbox = Sandbox::new("hosts");
    // Each kind alone, then all of them as one host's Caddyfile.
    for defs in [
        &[PLAIN][..],
        &[INSTANCES],
        &[ALIASES],
        &[PLAIN, INSTANCES, ALIASES, WORKER],
    ] {
        let text = caddyfile(&sandbox, defs);
        if let Err(err) = sandbox.adapt(&text) {
            panic!("caddy adapt refused {defs:?}: {err}\n{text}");
        }
        if let Err(err) = sandbox.validate(&text) {
            panic!("caddy validate refused {defs:?}: {err}\n{text}");
        }
    }

    // What Caddy understood of them: the proxy that waits out a restart,
    // every instance's port, HSTS, the names, the extra directives, the
    // access logs of nixpkgs' module.
    let text = caddyfile(&sandbox, &[PLAIN, INSTANCES, ALIASES, WORKER]);
    let config = sandbox.adapt(&text).unwrap();
    let logs = sandbox.path().join("log");
    let dials = |proxy: &Value| -> Vec<String> {
        proxy["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["dial"].as_str().unwrap().to_owned())
            .collect()
    };
    let hsts = "max-age=31536000; includeSubDomains";
    for (host, upstreams, fail_duration, names) in [
        (
            "notes.example.com",
            vec!["127.0.0.1:3000"],
            None,
            vec!["notes.example.com"],
        ),
        (
            "multi.example.com",
            vec!["127.0.0.1:4000", "127.0.0.1:4001", "127.0.0.1:4002"],
            Some(10_000_000_000u64),
            vec!["multi.example.com"],
        ),
        (
            "shop.example.com",
            vec!["127.0.0.1:3001"],
            None,
            vec![
                "shop.example.com",
                "www.shop.example.com",
                "shop.example.org",
            ],
        ),
    ] {
        let route = route(&config, host);
        assert_eq!(
            route["match"][0]["host"],
            serde_json::json!(names),
            "{host}"
        );
        let proxy = one(route, "reverse_proxy");
        assert_eq!(dials(proxy), upstreams, "{host}");
        assert_eq!(
            proxy["load_balancing"]["try_duration"], 30_000_000_000u64,
            "{host}"
        );
        assert_eq!(
            proxy["load_balancing"]["try_interval"], 250_000_000u64,
            "{host}"
        );
        assert_eq!(
            proxy["health_checks"]["passive"]["fail_duration"].as_u64(),
            fail_duration,
            "{host}"
        );
        let headers = objects_with(route, "handler", "headers");
        let sent: Vec<&Value> = headers
            .iter()
            .map(|h| &h["response"]["set"]["Strict-Transport-Security"][0])
            .filter(|v| !v.is_null())
            .collect();
        if host == "shop.example.com" {
            assert!(sent.is_empty(), "{host} sends HSTS: {route:#}");
            assert_eq!(
                one(route, "encode")["prefer"],
                serde_json::json!(["zstd", "gzip"])
            );
            let frame: Vec<&Value> = headers
                .iter()
                .map(|h| &h["response"]["set"]["X-Frame-Options"][0])
                .filter(|v| !v.is_null())
                .collect();
            assert_eq!(frame, [&Value::from("DENY")], "{route:#}");
        } else {
            assert_eq!(sent, [&Value::from(hsts)], "{host}");
        }
        let file = logs.join(format!("access-{host}.log"));
        let writers = objects_with(&config["logging"], "filename", file.to_str().unwrap());
        assert_eq!(
            writers.len(),
            1,
            "{host}'s access log: {:#}",
            config["logging"]
        );
    }
    // Only the three served services have a route; the worker none.
    assert_eq!(
        config["apps"]["http"]["servers"]["srv0"]["routes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(config["logging"]["logs"]["default"]["level"], "ERROR");
}

/// The Caddyfile of the plain service and one with `caddy` options
/// `extra`.
fn with_caddy_options(sandbox: &Sandbox, extra: &str) -> String {
    let def = format!(
        r#"limited = {{ enable = true; port = 3005; domain = "limited.example.com"; caddy = {{ {extra} }}; }};"#
    );
    caddyfile(sandbox, &[PLAIN, &def])
}

/// `without` is `with` but for its one `<directive> { … }` block (blank
/// lines aside); returns that block.
fn assert_only_block(with: &str, directive: &str, without: &str) -> String {
    let (rest, block) = caddy::cut_block(with, directive);
    assert_eq!(
        caddy::without_blank_lines(&rest),
        caddy::without_blank_lines(without),
        "more than the {directive} block differs"
    );
    block
}

/// `caddy adapt` and `caddy validate` both refuse `text` with the parse
/// error `message` about `directive` (`parsing caddyfile tokens for
/// '<directive>'`) at a line within `lines`: Caddy names the line where it
/// stopped reading the directive, which need not be the offending one.
fn assert_refused(
    sandbox: &Sandbox,
    text: &str,
    directive: &str,
    lines: std::ops::RangeInclusive<usize>,
    message: &str,
) {
    let context = format!("parsing caddyfile tokens for '{directive}': ");
    for (verb, result, prefix) in [
        ("adapt", sandbox.adapt(text).map(drop), ""),
        (
            "validate",
            sandbox.validate(text),
            "adapting config using caddyfile: ",
        ),
    ] {
        let err = result.expect_err(verb);
        let (said, line, said_message) = caddy::parse_error(&err);
        assert_eq!(said, format!("{prefix}{context}"), "{verb}: {err}");
        assert_eq!(said_message, message, "{verb}: {err}");
        assert!(
            lines.contains(&line),
            "{verb}: {err}: not in lines {lines:?}"
        );
    }
}

#[test]
fn the_rate_limit_is_all_debian_caddy_lacks_a_plugin_for() {
    let sandbox = Sandbox::new("ratelimit");
    let limited = with_caddy_options(
        &sandbox,
        r#"rateLimit = { enable = true; events = 100; window = "10s"; };"#,
    );
    let plain = with_caddy_options(&sandbox, "");
    // The rate limit adds its block and nothing else.
    let block = assert_only_block(&limited, "rate_limit", &plain);
    assert_eq!(
        block,
        "\t\trate_limit {\n\t\t\tzone berth_limited {\n\t\t\t\tkey {client_ip}\n\
         \t\t\t\tevents 100\n\t\t\t\twindow 10s\n\t\t\t}\n\t\t}\n"
    );
    if caddy::has_module("http.handlers.rate_limit") {
        // A Caddy built with github.com/mholt/caddy-ratelimit, as berth
        // builds it on NixOS.
        sandbox.validate(&limited).unwrap();
    } else {
        // Debian's caddy has no such directive, and that is its one
        // complaint: without the block, the same file is valid.
        assert_refused(
            &sandbox,
            &limited,
            "route",
            caddy::block_lines(&limited, "limited.example.com"),
            "unrecognized directive: rate_limit - are you sure your Caddyfile \
             structure (nesting and braces) is correct?",
        );
    }
    sandbox
        .validate(&caddy::cut_block(&limited, "rate_limit").0)
        .unwrap();
}

#[test]
fn trusted_proxies_need_caddy_2_6_3() {
    let sandbox = Sandbox::new("proxies");
    let trusting = with_caddy_options(
        &sandbox,
        r#"rateLimit.trustedProxies = [ "173.245.48.0/20" "private_ranges" ];"#,
    );
    // The ranges go to the server-wide options, and nothing else changes.
    let block = assert_only_block(&trusting, "servers", &with_caddy_options(&sandbox, ""));
    assert_eq!(
        block,
        "\tservers {\n\t\ttrusted_proxies static 173.245.48.0/20 private_ranges\n\t}\n"
    );
    // The server option `trusted_proxies` (and `{client_ip}`, the key of
    // berth's rate limit) came with Caddy 2.6.3; Debian 12 has 2.6.2,
    // nixpkgs a later one.
    if caddy::version() >= (2, 6, 3) {
        sandbox.validate(&trusting).unwrap();
    } else {
        assert_refused(
            &sandbox,
            &trusting,
            "servers",
            caddy::block_lines(&trusting, "servers"),
            "unrecognized servers option 'trusted_proxies'",
        );
    }
    sandbox
        .validate(&caddy::cut_block(&trusting, "servers").0)
        .unwrap();
}

#[test]
fn a_dns_challenge_is_all_debian_caddy_lacks_a_plugin_for() {
    let sandbox = Sandbox::new("dns");
    let dns = with_caddy_options(
        &sandbox,
        r#"tls = { dnsProvider = "cloudflare"; dnsTokenFile = "/run/agenix/cloudflare"; };"#,
    );
    let block = assert_only_block(&dns, "tls", &with_caddy_options(&sandbox, ""));
    let token = "{file./run/credentials/caddy.service/berth-limited-dns-token}";
    assert_eq!(
        block,
        format!("\ttls {{\n\t\tdns cloudflare {token}\n\t}}\n")
    );
    if caddy::has_module("dns.providers.cloudflare") {
        sandbox.validate(&dns).unwrap();
    } else {
        assert_refused(
            &sandbox,
            &dns,
            "tls",
            caddy::block_lines(&dns, "tls"),
            "getting module named 'dns.providers.cloudflare': module not registered: \
             dns.providers.cloudflare",
        );
    }
    sandbox.validate(&caddy::cut_block(&dns, "tls").0).unwrap();
}

/// The lab's service as berth.services.notes with a test domain, plain or
/// socket-activated (the virtual host is the same).
fn lab_services(socket: bool) -> String {
    format!(
        r#"{{ notes = {{ enable = true; port = {PORT}; domain = "notes.test"; socketActivation = {socket}; }}; }}"#
    )
}

// What differs from production: the lab has no network, so Caddy's
// internal CA issues notes.test's certificate (`local_certs`) instead of an
// ACME CA, and `skip_install_trust` keeps Caddy from trying to add that CA
// to the lab host's trust store (clients are given it with --cacert).
// Everything else is the file a NixOS host gets: nixpkgs' global options
// and access log, berth's virtual host, `caddy fmt`.
const LAB_GLOBAL: &str = "local_certs\nskip_install_trust";

/// curl through Caddy inside the lab host, with Caddy's root CA, as a
/// client that resolves notes.test to the host.
fn curl(args: &str) -> String {
    format!(
        "curl -sS --max-time 40 --resolve notes.test:443:127.0.0.1 {args} https://notes.test/health"
    )
}

/// Three clients inside the lab host, each sending a request every 10 ms
/// until the stop file exists, then the counts as JSON: `caddy`, GET
/// /health through Caddy (HTTPS to notes.test with Caddy's root CA, one
/// kept-alive connection as a browser keeps, opened again after an
/// error); `caddy-post`, the same with POST /echo and a body; `direct`,
/// GET /health on the app's port, a new connection each time (the app
/// speaks HTTP/1.0). A request fails on an error or an answer other than
/// 200.
const POLLER: &str = r#"
import http.client, json, os, socket, ssl, sys, threading, time

ca, port, stop, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
tls = ssl.create_default_context(cafile=ca)

class ThroughCaddy(http.client.HTTPSConnection):
    # notes.test is 127.0.0.1 here (curl's --resolve).
    def connect(self):
        raw = socket.create_connection(("127.0.0.1", 443), self.timeout)
        self.sock = tls.wrap_socket(raw, server_hostname="notes.test")

def client(target):
    if target.startswith("caddy"):
        # Caddy may hold a request up to lb_try_duration (30 s).
        return ThroughCaddy("notes.test", 443, timeout=40, context=tls)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=2)

counts = {}

def poll(target):
    c = counts[target] = {"total": 0, "failed": 0, "longest_ms": 0, "failures": []}
    conn = client(target)
    while not os.path.exists(stop):
        start = time.monotonic()
        try:
            if target == "caddy-post":
                conn.request("POST", "/echo", body=b'{"n": 1}')
            else:
                conn.request("GET", "/health")
            answer = conn.getresponse()
            answer.read()
            error = None if answer.status == 200 else f"{answer.status} {answer.reason}"
            if answer.will_close:
                conn.close()
        except Exception as e:
            error = repr(e)
            conn.close()
        took = (time.monotonic() - start) * 1000
        c["total"] += 1
        c["longest_ms"] = max(c["longest_ms"], round(took))
        if error is not None:
            c["failed"] += 1
            if len(c["failures"]) < 20:
                c["failures"].append(f"{time.time():.3f} {error}")
        time.sleep(0.01)

threads = [threading.Thread(target=poll, args=(t,)) for t in ("caddy", "caddy-post", "direct")]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out + ".tmp", "w") as f:
    json.dump(counts, f)
os.rename(out + ".tmp", out)
"#;

/// The number of deploys under the pollers.
fn deploys() -> u32 {
    std::env::var("BERTH_CADDY_DEPLOYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// What the clients counted during the deploys, and the errors Caddy
/// logged meanwhile.
struct Counts {
    deploys: u32,
    json: Value,
    errors: Vec<Value>,
}

impl Counts {
    fn get(&self, client: &str, key: &str) -> u64 {
        self.json[client][key].as_u64().unwrap()
    }

    fn failed(&self, client: &str) -> u64 {
        self.get(client, "failed")
    }

    /// BENCHMARKS.md's row for the service run as `how`.
    fn row(&self, how: &str) -> String {
        let of = |client: &str| {
            format!(
                "{} of {}",
                self.get(client, "failed"),
                self.get(client, "total")
            )
        };
        format!(
            "| {how} | {} | {} | {} | {} | {:.2} s |",
            self.deploys,
            of("caddy"),
            of("caddy-post"),
            of("direct"),
            self.get("caddy", "longest_ms") as f64 / 1000.0,
        )
    }
}

const TABLE_HEAD: &str =
    "| service | deploys | GET through Caddy: failed | POST through Caddy: failed \
                          | GET on the app's port: failed | longest GET through Caddy |\n\
                          | --- | ---: | ---: | ---: | ---: | ---: |";

/// Deploys a first revision, then puts Caddy in front of the service with
/// the Caddyfile a NixOS host gets, and checks it serves notes.test over
/// HTTPS with its internal CA.
async fn caddy_in_front(w: &World, socket: bool) {
    let base = w.commit(serde_json::json!({ "v": 0 }), "main").await;
    let run = w.deploy(&base, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let text = caddy::caddyfile(&lab_services(socket), LAB_GLOBAL, "/var/log/caddy");
    caddy::start_in(w, &text).await;
    // Caddy runs as its own user, as on NixOS.
    let user = w
        .sh("ps -o user= -p \"$(systemctl show -p MainPID --value caddy.service)\"")
        .await;
    assert_eq!(user.trim(), "caddy");

    // HTTPS through Caddy with its internal CA's root: 200 from the app,
    // with berth's HSTS header. Caddy gets the certificate just after it
    // starts: wait for it.
    let ok = format!(
        "{} -o /dev/null -w '%{{http_code}}'",
        curl(&format!("--cacert {}", caddy::ROOT_CA))
    );
    let mut code = String::new();
    for _ in 0..100 {
        code = w.sh(&format!("{ok} 2>&1; true")).await;
        if code == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        code,
        "200",
        "{}",
        w.sh("journalctl -u caddy.service -o cat | tail -n 30")
            .await
    );
    let answer = w
        .sh(&curl(&format!("--cacert {} -i", caddy::ROOT_CA)))
        .await;
    let status = answer.lines().next().unwrap_or("");
    assert!(
        status.split(' ').nth(1) == Some("200")
            && answer
                .to_lowercase()
                .contains("strict-transport-security: max-age=31536000; includesubdomains")
            && answer.contains(&base),
        "{answer}"
    );
    // The certificate is Caddy's CA's, which the host does not trust.
    let untrusted = w
        .sh(&format!("{} -o /dev/null; echo rc=$?", curl("")))
        .await;
    assert!(untrusted.contains("rc=60"), "{untrusted}");
    // nixpkgs' access log for the host, in the module's log directory.
    let logged = w.sh("cat /var/log/caddy/access-notes.test.log").await;
    assert!(logged.contains("\"host\":\"notes.test\""), "{logged}");
}

/// Deploys new revisions under the three clients of [`POLLER`] and
/// returns what they counted.
async fn poll_during_deploys(w: &World) -> Counts {
    w.write("/root/poll.py", POLLER).await;
    let since = w.sh("date +%s").await;
    w.sh(&format!(
        "rm -f /root/poll.stop /root/poll.json && systemd-run --quiet --unit=berth-poll --collect \
         python3 /root/poll.py {} {PORT} /root/poll.stop /root/poll.json",
        caddy::ROOT_CA
    ))
    .await;
    let deploys = deploys();
    for n in 1..=deploys {
        let rev = w.commit(serde_json::json!({ "v": n }), "main").await;
        let run = w.deploy(&rev, &[]);
        assert_eq!(run.code, 0, "deploy {n}: {}", run.stderr);
        assert_eq!(w.serving().as_deref(), Some(rev.as_str()));
    }
    w.sh("touch /root/poll.stop").await;
    let mut json = String::new();
    // A request Caddy holds may take up to lb_try_duration to end.
    for _ in 0..600 {
        json = w.sh("cat /root/poll.json 2>/dev/null; true").await;
        if !json.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let json: Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("no counts from the clients ({e}): {json}"));
    let errors = w
        .sh(&format!(
            "journalctl -u caddy.service -o cat --since @{} | grep '^{{' || true",
            since.trim()
        ))
        .await
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["level"] == "error")
        .collect();
    let counts = Counts {
        deploys,
        json,
        errors,
    };
    eprintln!(
        "{:#}\nCaddy's errors: {:#}",
        counts.json,
        Value::from(counts.errors.clone())
    );
    counts
}

/// Adds `row` to the file BERTH_BENCH_OUT names (bench/caddy/run).
fn record(row: &str) {
    eprintln!("{TABLE_HEAD}\n{row}");
    if let Ok(out) = std::env::var("BERTH_BENCH_OUT") {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(out)
            .unwrap();
        writeln!(file, "{row}").unwrap();
    }
}

#[test]
fn caddy_in_front_of_a_plain_service_drops_no_get_during_deploys() {
    World::run("caddy", async |w| {
        caddy_in_front(w, false).await;
        let counts = poll_during_deploys(w).await;
        record(&counts.row("plain"));
        // The app's own port refused connections during every restart: the
        // deploys did interrupt it. Through Caddy, which waits out the
        // restart (lb_try_duration), not one GET failed.
        assert!(
            counts.failed("direct") >= u64::from(counts.deploys),
            "{:#}",
            counts.json
        );
        assert_eq!(counts.failed("caddy"), 0, "{:#}", counts.json);
        assert!(
            counts.get("caddy", "total") > 50 * u64::from(counts.deploys),
            "{:#}",
            counts.json
        );
        // A POST may fail with Caddy's 502 when it meets the restart:
        // Caddy retries a POST only when the app refused the connection (a
        // POST the app may have received is not sent twice), and before
        // Caddy 2.11.2 that retry has lost the body (caddyserver/caddy#7546,
        // "invalid Read on closed Body"). Those are Caddy's only errors.
        for error in &counts.errors {
            assert_eq!(error["status"], 502, "{error:#}");
            assert_eq!(error["request"]["method"], "POST", "{error:#}");
        }
        assert_eq!(
            counts.errors.len() as u64,
            counts.failed("caddy-post"),
            "{:#}",
            counts.json
        );
        let lost_body = counts
            .errors
            .iter()
            .filter(|e| {
                e["msg"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("http: invalid Read on closed Body"))
            })
            .count();
        eprintln!(
            "POSTs failed: {} ({lost_body} retried without their body, the others on a \
             connection the stopping app closed)",
            counts.errors.len()
        );
    });
}

#[test]
fn caddy_in_front_of_a_socket_activated_service_drops_no_request() {
    World::run_with("caddy-socket", Instances::SOCKET, &[], async |w| {
        caddy_in_front(w, true).await;
        let counts = poll_during_deploys(w).await;
        record(&counts.row("socket-activated"));
        // systemd holds the port: no connection is refused, so Caddy never
        // retries, and nothing fails, GET or POST, through Caddy or not.
        for client in ["caddy", "caddy-post", "direct"] {
            assert_eq!(counts.failed(client), 0, "{client}: {:#}", counts.json);
        }
        assert!(counts.errors.is_empty(), "{:#}", Value::from(counts.errors));
        assert!(
            counts.get("caddy", "total") > 50 * u64::from(counts.deploys),
            "{:#}",
            counts.json
        );
    });
}
