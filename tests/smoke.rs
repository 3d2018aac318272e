//! `berth smoke` against a real HTTP server on 127.0.0.1: passing and
//! failing checks, redirects left alone, retries, no answer, bad input.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{events, run};

/// A server that answers fixed statuses per path, one thread per
/// connection, and records each request target.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let flaky = Arc::new(AtomicUsize::new(0));
        let log = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                let flaky = flaky.clone();
                thread::spawn(move || answer(stream, &log, &flaky));
            }
        });
        Server { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many times `target` was asked for.
    fn hits(&self, target: &str) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|r| r.as_str() == target).count()
    }
}

fn answer(stream: TcpStream, log: &Mutex<Vec<String>>, flaky: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // The headers, up to the empty line; a GET has no body.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    log.lock().unwrap().push(target.clone());
    let (status, extra) = match target.as_str() {
        "/health" => ("200 OK", ""),
        "/api/items" => ("401 Unauthorized", ""),
        "/admin" => ("302 Found", "Location: /login\r\n"),
        "/boom" => ("500 Internal Server Error", ""),
        "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) == 0 => ("503 Service Unavailable", ""),
        "/flaky" => ("200 OK", ""),
        "/search?q=a=b" => ("200 OK", ""),
        "/search" => ("400 Bad Request", ""),
        "/slow" => {
            thread::sleep(Duration::from_secs(3));
            ("200 OK", "")
        }
        "/app/health" => ("204 No Content", ""),
        _ => ("404 Not Found", ""),
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

fn berth() -> Command {
    let mut cmd = common::berth();
    cmd.arg("smoke");
    cmd
}

/// The lines of stderr with each `(N ms…)` made `(… ms…)`.
fn lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|line| match line.rfind(" (") {
            Some(at) if line.ends_with(')') => {
                let timing = &line[at + 2..line.len() - 1];
                let rest = timing.split_once(" ms").map_or("", |(_, rest)| rest);
                format!("{} (… ms{rest})", &line[..at])
            }
            _ => line.to_owned(),
        })
        .collect()
}

#[test]
fn passing_checks_exit_0_with_a_line_each_and_a_summary() {
    let server = Server::start();
    let (code, out, err) = run(berth().args([
        "--url",
        &server.url(),
        "--expect",
        "/health=200",
        "--expect",
        "/api/items=401",
        "--expect",
        "/admin=302",
        "--expect",
        "/nowhere=4xx",
        "--expect",
        "/search?q=a=b=2xx",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "no --json, nothing on stdout");
    assert_eq!(
        lines(&err),
        [
            "ok   /health 200 (… ms)",
            "ok   /api/items 401 (… ms)",
            "ok   /admin 302 to /login (… ms)",
            "ok   /nowhere 404 (… ms)",
            "ok   /search?q=a=b 200 (… ms)",
            "5 checks: 5 passed, 0 failed",
        ]
    );
    assert_eq!(server.hits("/login"), 0, "a redirect was followed");
}

#[test]
fn without_expect_it_checks_health() {
    let server = Server::start();
    let (code, _, err) = run(berth().args(["--url", &format!("{}/", server.url())]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        lines(&err),
        ["ok   /health 200 (… ms)", "1 check: 1 passed, 0 failed"]
    );
    assert_eq!(server.hits("/health"), 1);
}

#[test]
fn a_path_in_the_url_prefixes_every_path() {
    let server = Server::start();
    let url = format!("{}/app/", server.url());
    let (code, _, err) = run(berth().args(["--url", &url, "--expect", "/health=204"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(server.hits("/app/health"), 1);
}

#[test]
fn failing_checks_exit_1_with_events() {
    let server = Server::start();
    let (code, out, err) = run(berth().args([
        "--json",
        "--url",
        &server.url(),
        "--expect",
        "/health=200",
        "--expect",
        "/api/items=200",
        "--expect",
        "/admin=2xx",
    ]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        lines(&err),
        [
            "ok   /health 200 (… ms)",
            "FAIL /api/items expected 200, got 401 (… ms)",
            "FAIL /admin expected 2xx, got 302 to /login (… ms)",
            "3 checks: 1 passed, 2 failed",
        ]
    );
    // A 4xx or a 3xx is an answer: no retry.
    assert_eq!(server.hits("/api/items"), 1);
    assert_eq!(server.hits("/admin"), 1);

    let events = events(&out);
    assert_eq!(events.len(), 4, "{out}");
    let names: Vec<_> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["check", "check", "check", "summary"]);
    let items = &events[1];
    assert_eq!(items["path"], "/api/items");
    assert_eq!(items["url"], format!("{}/api/items", server.url()));
    assert_eq!(items["expect"], "200");
    assert_eq!(items["status"], 401);
    assert_eq!(items["ok"], false);
    assert_eq!(items["attempts"], 1);
    assert!(items["ms"].is_u64());
    assert!(items["error"].is_null());
    assert_eq!(events[2]["location"], "/login");
    assert_eq!(events[0]["ok"], true);
    let summary = &events[3];
    assert_eq!(summary["checks"], 3);
    assert_eq!(summary["passed"], 1);
    assert_eq!(summary["failed"], 2);
    assert_eq!(summary["url"], format!("{}/", server.url()));
}

#[test]
fn server_errors_are_retried() {
    let server = Server::start();
    let (code, _, err) = run(berth().args([
        "--url",
        &server.url(),
        "--expect",
        "/boom=200",
        "--expect",
        "/flaky=200",
        "--expect",
        "/boom=5xx",
        "--retries",
        "2",
    ]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        lines(&err),
        [
            "FAIL /boom expected 200, got 500 (… ms, 3 tries)",
            "ok   /flaky 200 (… ms, 2 tries)",
            "ok   /boom 500 (… ms)",
            "3 checks: 2 passed, 1 failed",
        ]
    );
    assert_eq!(server.hits("/boom"), 4);
    assert_eq!(server.hits("/flaky"), 2);
}

#[test]
fn connection_refused_fails_the_check() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, out, err) = run(berth().args([
        "--json",
        "--url",
        &format!("http://127.0.0.1:{port}"),
        "--retries",
        "1",
    ]));
    assert_eq!(code, 1, "{err}");
    let lines = lines(&err);
    assert!(
        lines[0].starts_with("FAIL /health expected 200, could not connect: ")
            && lines[0].ends_with("(… ms, 2 tries)"),
        "{err}"
    );
    assert_eq!(lines[1], "1 check: 0 passed, 1 failed");
    let events = events(&out);
    assert!(events[0]["status"].is_null());
    assert_eq!(events[0]["attempts"], 2);
    assert!(
        events[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("could not connect: "),
        "{out}"
    );
}

#[test]
fn a_slow_answer_times_out() {
    let server = Server::start();
    let (code, _, err) = run(berth().args([
        "--url",
        &server.url(),
        "--expect",
        "/slow=200",
        "--timeout",
        "1",
        "--retries",
        "0",
    ]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        lines(&err)[0],
        "FAIL /slow expected 200, no answer within 1 s (… ms)"
    );
}

#[test]
fn bad_input_exits_2_and_says_what_to_write() {
    let cases = [
        (
            ["--url", "http://127.0.0.1:1", "--expect", "foo"],
            "error: invalid value 'foo' for '--expect <PATH=STATUS>': \
             no `=` between a path and a status",
            "tip: write PATH=STATUS, e.g. `--expect /health=200`",
        ),
        (
            ["--url", "http://127.0.0.1:1", "--expect", "/health=ok"],
            "error: invalid value '/health=ok' for '--expect <PATH=STATUS>': \
             `ok` is not an HTTP status",
            "tip: write a code from 100 to 599 (`200`) or a class from `1xx` to `5xx`",
        ),
        (
            ["--url", "ftp://example.com", "--expect", "/=200"],
            "error: invalid value 'ftp://example.com' for '--url <URL>': \
             the scheme is `ftp`, and berth smoke checks http and https",
            "tip: write it with its scheme, e.g. `--url https://notes.example.com`",
        ),
        (
            ["--url", "notes.example.com", "--expect", "/=200"],
            "error: invalid value 'notes.example.com' for '--url <URL>': not a URL",
            "tip: write it with its scheme",
        ),
    ];
    for (args, error, tip) in cases {
        let (code, out, err) = run(berth().args(args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(out, "");
        assert!(err.starts_with(error), "{args:?}: {err}");
        assert!(err.contains(tip), "{args:?}: {err}");
    }
}
