//! Deploy notifications: what a finished deploy tells Discord, Slack or any
//! JSON webhook, classified as the Caroline seed's pipeline does (FAILURE,
//! FULL, CONDENSED, SUPPRESS). Payload builders are pure; [`send`] posts
//! them. A notification that cannot be delivered never fails a deploy.
//!
//! System deploys send one message per host (per `host_result`), to the
//! `--notify` URLs and that node's `berth.deployment.notify`; app deploys
//! send one message per deploy.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::output::Printer;

/// The JSON event each delivery attempt becomes with `--json`.
pub const EVENT_NOTIFY: &str = "notify";

/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before the one retry.
const RETRY_AFTER: Duration = Duration::from_millis(500);

const RED: u32 = 0xe0_1e_5a;
const GREEN: u32 = 0x2e_b6_7d;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A NixOS system on a node.
    System,
    /// An app (a service) on a host.
    App,
}

/// What a deploy is worth telling, as the Caroline seed defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The deploy or its health checks failed.
    Failure,
    /// A recovery happened, migrations ran, or a system changed.
    Full,
    /// A routine app code deploy.
    Condensed,
    /// Nothing changed, or only docs or tests: send nothing.
    Suppress,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Failure => "failure",
            State::Full => "full",
            State::Condensed => "condensed",
            State::Suppress => "suppress",
        }
    }
}

/// One deploy's message, whatever the format.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub kind: Kind,
    /// The node (system) or the service (app).
    pub target: String,
    pub host: String,
    pub state: State,
    pub from: Option<String>,
    pub to: Option<String>,
    pub duration: Duration,
    /// For a failure: whether the rollback put things back (`None` when
    /// nothing had changed, so there was nothing to roll back).
    pub rolled_back: Option<bool>,
    pub message: String,
    pub ci_run_url: Option<String>,
}

/// What a finished deploy did, for [`state_of`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The deploy or its health checks failed.
    pub failed: bool,
    /// The host already ran it: nothing changed.
    pub unchanged: bool,
    /// An interrupted deploy was recovered first (app: a `recovered` event).
    pub recovered: bool,
    /// Migrations ran (app: a `migrate` phase).
    pub migrated: bool,
    /// Only docs or tests changed (app: a `changes` event that says
    /// `quiet`).
    pub quiet: bool,
}

/// FAILURE when it failed, SUPPRESS when nothing changed, FULL for a
/// recovery, SUPPRESS when only docs or tests changed, FULL for any system
/// change or migrations, else CONDENSED.
pub fn state_of(kind: Kind, facts: Facts) -> State {
    if facts.failed {
        State::Failure
    } else if facts.unchanged {
        State::Suppress
    } else if facts.recovered {
        State::Full
    } else if facts.quiet {
        State::Suppress
    } else if kind == Kind::System || facts.migrated {
        State::Full
    } else {
        State::Condensed
    }
}

/// The notification of one host's system deploy; `to` is the system it
/// was given.
pub fn of_system(
    report: &crate::deploy::Report,
    to: Option<String>,
    ci_run_url: Option<String>,
) -> Notification {
    use crate::deploy::Outcome;
    let (failed, unchanged, rolled_back) = match &report.outcome {
        Outcome::Deployed { .. } => (false, false, None),
        // Nothing changed: the host already ran it, a newer revision
        // superseded it (`--skip-superseded`), or it was not tried (the
        // host that failed has its own message).
        Outcome::Unchanged { .. } | Outcome::Skipped { .. } => (false, true, None),
        Outcome::RolledBack { .. } => (true, false, Some(true)),
        Outcome::Failed { .. } => (true, false, None),
        Outcome::NeedsAttention { .. } => (true, false, Some(false)),
    };
    let facts = Facts {
        failed,
        unchanged,
        ..Facts::default()
    };
    Notification {
        kind: Kind::System,
        target: report.node.clone(),
        host: report.host.clone(),
        state: state_of(Kind::System, facts),
        from: None,
        to,
        duration: Duration::from_secs_f64(report.seconds.max(0.0)),
        rolled_back,
        message: report.outcome.describe(),
        ci_run_url,
    }
}

/// The notification of an app deploy, from the agent's result and the
/// events it printed (`stdout`).
pub fn of_app(
    service: &str,
    host: &str,
    result: &crate::agent::AgentResult,
    stdout: &[u8],
    duration: Duration,
    ci_run_url: Option<String>,
) -> Notification {
    use crate::agent::Outcome;
    let (failed, unchanged, rolled_back) = match result.outcome {
        Outcome::Confirmed | Outcome::Pending => (false, false, None),
        Outcome::Unchanged => (false, true, None),
        Outcome::RolledBack => (true, false, Some(true)),
        Outcome::RollbackFailed => (true, false, Some(false)),
        // Failed before the stop, or never started: nothing to roll back.
        Outcome::Failed | Outcome::Busy | Outcome::TimedOut => (true, false, None),
    };
    let recovered =
        !crate::agent::find_events(stdout, crate::app::transaction::EVENT_RECOVERED).is_empty();
    let migrated = crate::agent::find_events(stdout, crate::agent::EVENT_PHASE)
        .iter()
        .any(|e| e["phase"] == "migrate");
    let quiet = crate::agent::find_events(stdout, crate::app::transaction::EVENT_CHANGES)
        .iter()
        .any(|e| e["quiet"] == true);
    let facts = Facts {
        failed,
        unchanged,
        recovered,
        migrated,
        quiet,
    };
    let field = |k: &str| {
        result
            .deployment
            .as_ref()
            .and_then(|d| d[k].as_str())
            .map(str::to_owned)
    };
    Notification {
        kind: Kind::App,
        target: service.to_owned(),
        host: host.to_owned(),
        state: state_of(Kind::App, facts),
        from: field("from_path"),
        to: field("to_path"),
        duration,
        rolled_back,
        message: result.message.clone(),
        ci_run_url: ci_run_url.or_else(|| field("ci_run_url")),
    }
}

/// Where a webhook URL posts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Discord,
    Slack,
    Generic,
}

impl Format {
    pub fn of(url: &str) -> Format {
        let host = host_of(url);
        let path = url
            .split_once("://")
            .map_or("", |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
        if matches!(
            host,
            "discord.com" | "discordapp.com" | "ptb.discord.com" | "canary.discord.com"
        ) && path.starts_with("/api/webhooks/")
        {
            Format::Discord
        } else if host == "hooks.slack.com" {
            Format::Slack
        } else {
            Format::Generic
        }
    }
}

/// The host of a URL, without user info or port.
fn host_of(url: &str) -> &str {
    let authority = authority(url);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    }
}

fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    &rest[..end]
}

/// `scheme://host[:port]`: a webhook's path (and any user info or query)
/// is its secret, so only this much is ever printed.
pub fn redact(url: &str) -> String {
    let Some((scheme, _)) = url.split_once("://") else {
        return "<invalid url>".into();
    };
    let authority = authority(url);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{authority}")
}

/// The body to POST to `url`.
pub fn payload(url: &str, n: &Notification) -> Value {
    match Format::of(url) {
        Format::Discord => discord(n),
        Format::Slack => slack(n),
        Format::Generic => generic(n),
    }
}

/// One line: `FAILURE: notes on h1 (rolled back)`, `deployed notes on h1`.
pub fn headline(n: &Notification) -> String {
    let what = match n.kind {
        Kind::System => format!("system {}", n.target),
        Kind::App => n.target.clone(),
    };
    match n.state {
        State::Failure => format!("FAILURE: {what} on {}{}", n.host, rollback_note(n)),
        State::Full | State::Condensed => format!("deployed {what} on {}", n.host),
        State::Suppress => format!("{what} on {} unchanged", n.host),
    }
}

fn rollback_note(n: &Notification) -> &'static str {
    match n.rolled_back {
        Some(true) => " (rolled back)",
        Some(false) => " (ROLLBACK FAILED: needs attention)",
        None => "",
    }
}

fn short(path: &Option<String>) -> String {
    match path {
        Some(p) => {
            // A store path or a release directory: its last component.
            let last = p.trim_end_matches('/').rsplit('/').next().unwrap_or(p);
            last.to_owned()
        }
        None => "-".into(),
    }
}

fn seconds(n: &Notification) -> f64 {
    (n.duration.as_secs_f64() * 10.0).round() / 10.0
}

/// `from → to in 12.3s`.
fn change(n: &Notification) -> String {
    format!(
        "{} → {} in {:.1}s",
        short(&n.from),
        short(&n.to),
        n.duration.as_secs_f64()
    )
}

/// The text of a message, for formats that take one string.
pub fn text(n: &Notification) -> String {
    let mut text = format!("{}: {}", headline(n), change(n));
    if n.state != State::Condensed && !n.message.is_empty() {
        text.push_str(&format!("\n{}", n.message));
    }
    if let Some(url) = &n.ci_run_url {
        text.push_str(&format!("\nCI run: {url}"));
    }
    text
}

/// A Discord embed: red for a failure, green otherwise. A condensed one
/// is a title and a line; full and failure ones carry fields.
pub fn discord(n: &Notification) -> Value {
    let color = if n.state == State::Failure {
        RED
    } else {
        GREEN
    };
    let mut embed = serde_json::Map::new();
    embed.insert("title".into(), headline(n).into());
    let description = match n.state {
        State::Condensed => change(n),
        _ => format!("{}\n{}", change(n), n.message),
    };
    embed.insert("description".into(), description.into());
    embed.insert("color".into(), color.into());
    if n.state != State::Condensed {
        let target = match n.kind {
            Kind::System => "node",
            Kind::App => "service",
        };
        let mut fields = vec![
            json!({ "name": "host", "value": n.host, "inline": true }),
            json!({ "name": target, "value": n.target, "inline": true }),
            json!({ "name": "duration", "value": format!("{:.1}s", n.duration.as_secs_f64()), "inline": true }),
            json!({ "name": "from", "value": n.from.as_deref().unwrap_or("-") }),
            json!({ "name": "to", "value": n.to.as_deref().unwrap_or("-") }),
        ];
        if n.state == State::Failure {
            let rollback = match n.rolled_back {
                Some(true) => "rolled back",
                Some(false) => "ROLLBACK FAILED: the host needs attention",
                None => "nothing changed",
            };
            fields.push(json!({ "name": "rollback", "value": rollback }));
        }
        embed.insert("fields".into(), fields.into());
    }
    if let Some(url) = &n.ci_run_url {
        embed.insert("url".into(), url.clone().into());
    }
    json!({ "embeds": [embed] })
}

/// A Slack message: `text` for notifications, `blocks` for the channel.
pub fn slack(n: &Notification) -> Value {
    let mut blocks = vec![json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": format!("*{}*\n{}", headline(n), change(n)) }
    })];
    if n.state != State::Condensed && !n.message.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": { "type": "plain_text", "text": n.message }
        }));
    }
    if let Some(url) = &n.ci_run_url {
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": format!("<{url}|CI run>") }]
        }));
    }
    json!({ "text": text(n), "blocks": blocks })
}

/// Everything, flat, for any other receiver.
pub fn generic(n: &Notification) -> Value {
    json!({
        "event": "berth.deploy",
        "state": n.state.as_str(),
        "kind": n.kind,
        "target": n.target,
        "host": n.host,
        "from": n.from,
        "to": n.to,
        "duration_secs": seconds(n),
        "rolled_back": n.rolled_back,
        "message": n.message,
        "ci_run_url": n.ci_run_url,
    })
}

/// Posts `n` to every URL (nothing for SUPPRESS): one retry after a 5xx
/// or a connection error, 10 s per attempt. Returns each URL as given
/// with how it went; errors never contain the URL.
pub async fn send(urls: &[String], n: &Notification) -> Vec<(String, Result<(), String>)> {
    if n.state == State::Suppress || urls.is_empty() {
        return Vec::new();
    }
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            let why = e.without_url().to_string();
            return urls.iter().map(|u| (u.clone(), Err(why.clone()))).collect();
        }
    };
    let mut results = Vec::new();
    for url in urls {
        let body = payload(url, n);
        let mut outcome = post(&client, url, &body).await;
        if let Err(Failure::Retry(_)) = outcome {
            tokio::time::sleep(RETRY_AFTER).await;
            outcome = post(&client, url, &body).await;
        }
        results.push((
            url.clone(),
            outcome.map_err(|f| match f {
                Failure::Retry(why) | Failure::Final(why) => why,
            }),
        ));
    }
    results
}

enum Failure {
    /// Worth one more try: a 5xx or no answer.
    Retry(String),
    Final(String),
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<(), Failure> {
    match client.post(url).json(body).send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.is_server_error() {
                Err(Failure::Retry(format!("the webhook answered {status}")))
            } else {
                Err(Failure::Final(format!("the webhook answered {status}")))
            }
        }
        Err(e) if e.is_builder() => Err(Failure::Final(e.without_url().to_string())),
        Err(e) => Err(Failure::Retry(describe(e))),
    }
}

/// reqwest's error and its causes, without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Shows each delivery: a `notify` event, and a warning for each failure.
pub fn show(printer: Printer, what: &str, results: &[(String, Result<(), String>)]) {
    for (url, result) in results {
        let url = redact(url);
        match result {
            Ok(()) => {
                printer.line(format!("{what}: notified {url}"));
                printer.event(
                    EVENT_NOTIFY,
                    &json!({ "url": url, "ok": true, "error": null }),
                );
            }
            Err(why) => {
                printer.warn(format!("{what}: could not notify {url}: {why}"));
                printer.event(
                    EVENT_NOTIFY,
                    &json!({ "url": url, "ok": false, "error": why }),
                );
            }
        }
    }
}

/// `--notify` URLs then `extra`, each once, in order.
pub fn merge(flags: &[String], extra: &[String]) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for url in flags.iter().chain(extra) {
        if !urls.contains(url) {
            urls.push(url.clone());
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(state: State) -> Notification {
        Notification {
            kind: Kind::App,
            target: "notes".into(),
            host: "h1".into(),
            state,
            from: Some("/srv/notes/releases/aaaa1111".into()),
            to: Some("/srv/notes/releases/bbbb2222".into()),
            duration: Duration::from_millis(12_340),
            rolled_back: None,
            message: "health check failed".into(),
            ci_run_url: Some("https://github.com/o/r/actions/runs/7".into()),
        }
    }

    #[test]
    fn states_follow_the_seed() {
        let f = |failed, unchanged, recovered, migrated| Facts {
            failed,
            unchanged,
            recovered,
            migrated,
            quiet: false,
        };
        assert_eq!(
            state_of(Kind::App, f(true, false, true, true)),
            State::Failure
        );
        assert_eq!(
            state_of(Kind::System, f(true, false, false, false)),
            State::Failure
        );
        assert_eq!(
            state_of(Kind::App, f(false, true, false, false)),
            State::Suppress
        );
        assert_eq!(
            state_of(Kind::System, f(false, true, false, false)),
            State::Suppress
        );
        assert_eq!(
            state_of(Kind::System, f(false, false, false, false)),
            State::Full
        );
        assert_eq!(
            state_of(Kind::App, f(false, false, true, false)),
            State::Full
        );
        assert_eq!(
            state_of(Kind::App, f(false, false, false, true)),
            State::Full
        );
        assert_eq!(
            state_of(Kind::App, f(false, false, false, false)),
            State::Condensed
        );
    }

    fn result(outcome: &str) -> crate::agent::AgentResult {
        serde_json::from_value(json!({
            "outcome": outcome,
            "message": "m",
            "deployment": { "from_path": "/r/a", "to_path": "/r/b", "ci_run_url": "https://ci/1" }
        }))
        .unwrap()
    }

    #[test]
    fn app_results_are_classified() {
        let d = Duration::from_secs(3);
        let routine = b"{\"event\":\"phase\",\"phase\":\"build\",\"message\":\"x\"}\n";
        let migrate = b"{\"event\":\"phase\",\"phase\":\"migrate\",\"message\":\"x\"}\n";
        let recovered = b"{\"event\":\"recovered\",\"outcome\":\"rolled_back\"}\n";
        let n = of_app("notes", "h1", &result("confirmed"), routine, d, None);
        assert_eq!(n.state, State::Condensed);
        assert_eq!(n.from.as_deref(), Some("/r/a"));
        assert_eq!(n.to.as_deref(), Some("/r/b"));
        assert_eq!(n.ci_run_url.as_deref(), Some("https://ci/1"));
        let n = of_app("notes", "h1", &result("confirmed"), migrate, d, None);
        assert_eq!(n.state, State::Full);
        let n = of_app("notes", "h1", &result("confirmed"), recovered, d, None);
        assert_eq!(n.state, State::Full);
        let n = of_app("notes", "h1", &result("unchanged"), routine, d, None);
        assert_eq!(n.state, State::Suppress);
        let n = of_app("notes", "h1", &result("rolled_back"), migrate, d, None);
        assert_eq!((n.state, n.rolled_back), (State::Failure, Some(true)));
        let n = of_app("notes", "h1", &result("rollback_failed"), routine, d, None);
        assert_eq!((n.state, n.rolled_back), (State::Failure, Some(false)));
        let n = of_app(
            "notes",
            "h1",
            &result("failed"),
            routine,
            d,
            Some("https://x".into()),
        );
        assert_eq!((n.state, n.rolled_back), (State::Failure, None));
        assert_eq!(n.ci_run_url.as_deref(), Some("https://x"));

        // Docs or tests only: nothing to tell, even when migrations ran,
        // unless it failed or recovered something.
        let docs = [
            &b"{\"event\":\"changes\",\"quiet\":true,\"touched\":true}\n"[..],
            migrate,
        ]
        .concat();
        let n = of_app("notes", "h1", &result("confirmed"), &docs, d, None);
        assert_eq!(n.state, State::Suppress);
        let n = of_app("notes", "h1", &result("rolled_back"), &docs, d, None);
        assert_eq!(n.state, State::Failure);
        let docs_recovered = [&docs[..], recovered].concat();
        let n = of_app(
            "notes",
            "h1",
            &result("confirmed"),
            &docs_recovered,
            d,
            None,
        );
        assert_eq!(n.state, State::Full);
    }

    #[test]
    fn system_reports_are_classified() {
        use crate::deploy::{Outcome, Report};
        let report = |outcome| Report {
            node: "web1".into(),
            host: "10.0.0.1".into(),
            outcome,
            deployment: None,
            seconds: 4.0,
            log: Vec::new(),
        };
        let to = Some("/nix/store/abc-nixos-system".to_owned());
        let n = of_system(
            &report(Outcome::Deployed {
                generation: Some(3),
            }),
            to.clone(),
            None,
        );
        assert_eq!((n.state, n.kind), (State::Full, Kind::System));
        assert_eq!(n.to, to);
        let n = of_system(
            &report(Outcome::Unchanged {
                why: "superseded: web1 runs 0123456789ab, which already contains ba9876543210"
                    .into(),
            }),
            None,
            None,
        );
        assert_eq!(n.state, State::Suppress);
        let n = of_system(&report(Outcome::Skipped { why: "w".into() }), None, None);
        assert_eq!(n.state, State::Suppress);
        let n = of_system(&report(Outcome::RolledBack { why: "w".into() }), None, None);
        assert_eq!((n.state, n.rolled_back), (State::Failure, Some(true)));
        let n = of_system(
            &report(Outcome::NeedsAttention { why: "w".into() }),
            None,
            None,
        );
        assert_eq!((n.state, n.rolled_back), (State::Failure, Some(false)));
        assert!(headline(&n).contains("ROLLBACK FAILED"), "{}", headline(&n));
        let n = of_system(&report(Outcome::Failed { why: "w".into() }), None, None);
        assert_eq!((n.state, n.rolled_back), (State::Failure, None));
    }

    #[test]
    fn formats_by_url() {
        assert_eq!(
            Format::of("https://discord.com/api/webhooks/1/tok"),
            Format::Discord
        );
        assert_eq!(
            Format::of("https://discordapp.com/api/webhooks/1/tok"),
            Format::Discord
        );
        assert_eq!(Format::of("https://discord.com/other"), Format::Generic);
        assert_eq!(
            Format::of("https://hooks.slack.com/services/T/B/x"),
            Format::Slack
        );
        assert_eq!(
            Format::of("https://hooks.slack.com.evil.example/x"),
            Format::Generic
        );
        assert_eq!(Format::of("http://127.0.0.1:8080/hook"), Format::Generic);
    }

    #[test]
    fn redaction_keeps_scheme_and_host() {
        assert_eq!(
            redact("https://discord.com/api/webhooks/123/secret"),
            "https://discord.com"
        );
        assert_eq!(
            redact("https://user:pw@example.com:8443/x?token=s"),
            "https://example.com:8443"
        );
        assert_eq!(redact("http://127.0.0.1:9/a"), "http://127.0.0.1:9");
        assert_eq!(redact("https://h?token=s"), "https://h");
        assert_eq!(redact("not a url/secret"), "<invalid url>");
    }

    #[test]
    fn discord_failure_is_red_with_rollback_field() {
        let mut n = note(State::Failure);
        n.rolled_back = Some(true);
        let v = discord(&n);
        let embed = &v["embeds"][0];
        assert_eq!(embed["title"], "FAILURE: notes on h1 (rolled back)");
        assert_eq!(embed["color"], RED);
        assert_eq!(embed["url"], "https://github.com/o/r/actions/runs/7");
        assert_eq!(
            embed["description"],
            "aaaa1111 → bbbb2222 in 12.3s\nhealth check failed"
        );
        let fields = embed["fields"].as_array().unwrap();
        let field = |name: &str| {
            fields
                .iter()
                .find(|f| f["name"] == name)
                .map(|f| f["value"].clone())
        };
        assert_eq!(field("host"), Some(json!("h1")));
        assert_eq!(field("service"), Some(json!("notes")));
        assert_eq!(field("duration"), Some(json!("12.3s")));
        assert_eq!(field("from"), Some(json!("/srv/notes/releases/aaaa1111")));
        assert_eq!(field("rollback"), Some(json!("rolled back")));
        n.rolled_back = Some(false);
        let v = discord(&n);
        assert_eq!(
            v["embeds"][0]["title"],
            "FAILURE: notes on h1 (ROLLBACK FAILED: needs attention)"
        );
    }

    #[test]
    fn discord_full_and_condensed_are_green() {
        let v = discord(&note(State::Full));
        assert_eq!(v["embeds"][0]["color"], GREEN);
        assert_eq!(v["embeds"][0]["title"], "deployed notes on h1");
        let fields = v["embeds"][0]["fields"].as_array().unwrap();
        assert!(fields.iter().all(|f| f["name"] != "rollback"));
        let v = discord(&note(State::Condensed));
        assert_eq!(v["embeds"][0]["color"], GREEN);
        assert_eq!(
            v["embeds"][0]["description"],
            "aaaa1111 → bbbb2222 in 12.3s"
        );
        assert!(v["embeds"][0].get("fields").is_none());
    }

    #[test]
    fn slack_has_text_and_blocks() {
        let mut n = note(State::Failure);
        n.kind = Kind::System;
        n.target = "web1".into();
        n.rolled_back = Some(true);
        let v = slack(&n);
        assert_eq!(
            v["text"],
            "FAILURE: system web1 on h1 (rolled back): aaaa1111 → bbbb2222 in 12.3s\n\
             health check failed\nCI run: https://github.com/o/r/actions/runs/7"
        );
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(
            blocks[0]["text"]["text"],
            "*FAILURE: system web1 on h1 (rolled back)*\naaaa1111 → bbbb2222 in 12.3s"
        );
        assert_eq!(
            blocks[2]["elements"][0]["text"],
            "<https://github.com/o/r/actions/runs/7|CI run>"
        );
        let v = slack(&note(State::Condensed));
        assert_eq!(v["blocks"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["text"],
            "deployed notes on h1: aaaa1111 → bbbb2222 in 12.3s\n\
             CI run: https://github.com/o/r/actions/runs/7"
        );
    }

    #[test]
    fn generic_is_flat() {
        let mut n = note(State::Failure);
        n.rolled_back = Some(false);
        assert_eq!(
            generic(&n),
            json!({
                "event": "berth.deploy",
                "state": "failure",
                "kind": "app",
                "target": "notes",
                "host": "h1",
                "from": "/srv/notes/releases/aaaa1111",
                "to": "/srv/notes/releases/bbbb2222",
                "duration_secs": 12.3,
                "rolled_back": false,
                "message": "health check failed",
                "ci_run_url": "https://github.com/o/r/actions/runs/7",
            })
        );
        assert_eq!(generic(&note(State::Full))["state"], "full");
        assert_eq!(generic(&note(State::Condensed))["state"], "condensed");
        assert_eq!(
            payload("https://hooks.slack.com/services/x", &n)["text"],
            text(&n)
        );
        assert!(payload("https://discord.com/api/webhooks/1/t", &n)["embeds"].is_array());
        assert_eq!(payload("http://127.0.0.1/h", &n), generic(&n));
    }

    #[test]
    fn merge_keeps_order_and_drops_repeats() {
        let flags = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
        let node = vec!["b".to_owned(), "c".to_owned()];
        assert_eq!(merge(&flags, &node), ["a", "b", "c"]);
    }
}
