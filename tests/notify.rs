//! Notifications against real HTTP receivers on loopback: what arrives,
//! the retry after a 5xx, and an unreachable webhook reported, not fatal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::notify::{self, Kind, Notification, State};
use serde_json::{json, Value};

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Request {
    line: String,
    content_type: String,
    body: Value,
}

/// A webhook on 127.0.0.1 that records each request and answers with the
/// next of `statuses` (the last one repeating).
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(statuses: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let statuses = statuses.to_vec();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let status = *statuses.get(i).or(statuses.last()).unwrap();
                if let Some(request) = read_request(&mut stream) {
                    seen.lock().unwrap().push(request);
                }
                let reason = if status == 204 { "No Content" } else { "Error" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut length = 0;
    let mut content_type = String::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_owned(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        line: line.trim_end().to_owned(),
        content_type,
        body: serde_json::from_slice(&body).ok()?,
    })
}

fn notification(state: State, rolled_back: Option<bool>) -> Notification {
    Notification {
        kind: Kind::App,
        target: "notes".into(),
        host: "h1".into(),
        state,
        from: Some("/srv/notes/releases/aaaa".into()),
        to: Some("/srv/notes/releases/bbbb".into()),
        duration: Duration::from_millis(4_250),
        rolled_back,
        message: "the health check failed".into(),
        ci_run_url: Some("https://github.com/o/r/actions/runs/9".into()),
    }
}

#[tokio::test]
async fn each_state_arrives_as_generic_json() {
    let receiver = Receiver::start(&[204]);
    let url = receiver.url("/hooks/secret-token");
    let cases = [
        (State::Failure, Some(true), "failure"),
        (State::Failure, Some(false), "failure"),
        (State::Full, None, "full"),
        (State::Condensed, None, "condensed"),
    ];
    for (state, rolled_back, _) in cases {
        let results = notify::send(
            std::slice::from_ref(&url),
            &notification(state, rolled_back),
        )
        .await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0, url);
        assert_eq!(results[0].1, Ok(()));
    }
    let requests = receiver.requests();
    assert_eq!(requests.len(), cases.len());
    for (request, (_, rolled_back, state)) in requests.iter().zip(cases) {
        assert_eq!(request.line, "POST /hooks/secret-token HTTP/1.1");
        assert_eq!(request.content_type, "application/json");
        assert_eq!(
            request.body,
            json!({
                "event": "berth.deploy",
                "state": state,
                "kind": "app",
                "target": "notes",
                "host": "h1",
                "from": "/srv/notes/releases/aaaa",
                "to": "/srv/notes/releases/bbbb",
                "duration_secs": 4.3,
                "rolled_back": rolled_back,
                "message": "the health check failed",
                "ci_run_url": "https://github.com/o/r/actions/runs/9",
            })
        );
    }
}

#[tokio::test]
async fn suppress_sends_nothing() {
    let receiver = Receiver::start(&[204]);
    let results = notify::send(&[receiver.url("/h")], &notification(State::Suppress, None)).await;
    assert!(results.is_empty());
    // Anything sent would have arrived by now: send awaits each answer.
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn a_5xx_is_retried_once() {
    let receiver = Receiver::start(&[500, 204]);
    let n = notification(State::Full, None);
    let results = notify::send(&[receiver.url("/h")], &n).await;
    assert_eq!(results[0].1, Ok(()));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, requests[1].body);
    assert_eq!(requests[1].body["state"], "full");

    // Two 5xx: an error naming the status, after exactly two attempts.
    let failing = Receiver::start(&[503]);
    let results = notify::send(&[failing.url("/h")], &n).await;
    let err = results[0].1.clone().unwrap_err();
    assert!(err.contains("503"), "{err}");
    assert_eq!(failing.requests().len(), 2);

    // A 4xx is not retried.
    let refusing = Receiver::start(&[404]);
    let results = notify::send(&[refusing.url("/h")], &n).await;
    assert!(results[0].1.clone().unwrap_err().contains("404"));
    assert_eq!(refusing.requests().len(), 1);
}

#[tokio::test]
async fn an_unreachable_webhook_is_an_error_entry_without_its_secret() {
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dead = format!("http://{closed}/api/secret-path");
    let receiver = Receiver::start(&[204]);
    let live = receiver.url("/ok");
    let n = notification(State::Failure, Some(true));
    let results = notify::send(&[dead.clone(), live.clone()], &n).await;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].0, dead);
    let err = results[0].1.clone().unwrap_err();
    assert!(!err.contains("secret-path"), "{err}");
    assert!(!err.is_empty());
    // The next webhook is told all the same.
    assert_eq!(results[1], (live, Ok(())));
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(notify::redact(&dead), format!("http://{closed}"));
}

#[test]
fn discord_and_slack_urls_get_their_own_payloads() {
    let n = notification(State::Failure, Some(false));
    let discord = notify::payload("https://discord.com/api/webhooks/1/token", &n);
    assert_eq!(
        discord["embeds"][0]["title"],
        "FAILURE: notes on h1 (ROLLBACK FAILED: needs attention)"
    );
    let slack = notify::payload("https://hooks.slack.com/services/T/B/token", &n);
    assert!(slack["text"].as_str().unwrap().contains("ROLLBACK FAILED"));
    assert!(slack["blocks"].is_array());
    assert_eq!(
        notify::redact("https://hooks.slack.com/services/T/B/token"),
        "https://hooks.slack.com"
    );
}
