//! GitHub's checks of one commit: the check runs and the combined commit
//! status, polled until they finish (`berth ci-gate`, and `--ci-gate` on
//! `berth deploy` and `berth app deploy`).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, LINK};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::env;
use crate::error::UsageError;
use crate::output::{paint, Printer, Style};

/// The API when `GITHUB_API_URL` is not set.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

pub const EVENT_CHECK: &str = "check";
pub const EVENT_CI_GATE: &str = "ci_gate";

/// Pages of check runs followed at most (100 each).
const MAX_PAGES: usize = 50;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `OWNER/NAME` of a GitHub repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repo(String);

impl Repo {
    pub fn parse(text: &str) -> Result<Repo, UsageError> {
        let hint = "write the repository as OWNER/NAME, e.g. `--repo berth-deploy/berth`";
        let Some((owner, name)) = text.split_once('/') else {
            return Err(UsageError::new(format!("`{text}` is not OWNER/NAME")).hint(hint));
        };
        let owner_ok =
            !owner.is_empty() && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let name_ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !owner_ok || !name_ok {
            return Err(UsageError::new(format!("`{text}` is not OWNER/NAME")).hint(hint));
        }
        Ok(Repo(text.to_owned()))
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A commit id: 7 to 40 hex digits, kept in lower case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sha(String);

impl Sha {
    pub fn parse(text: &str) -> Result<Sha, UsageError> {
        if (7..=40).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Sha(text.to_ascii_lowercase()));
        }
        Err(
            UsageError::new(format!("`{text}` is not a commit SHA (7 to 40 hex digits)"))
                .hint("give the commit CI ran for, e.g. `--sha \"$GITHUB_SHA\"`"),
        )
    }

    /// Only a full 40-digit SHA names exactly one commit for good.
    pub fn is_full(&self) -> bool {
        self.0.len() == 40
    }

    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

impl fmt::Display for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Seconds, possibly fractional (`0.2`), for `--timeout` and `--interval`.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "`{text}` is not a number of seconds from 0 to 86400"
        )),
    }
}

/// How long to wait, how often to ask, and what must be there.
#[derive(Clone, Debug)]
pub struct GateOptions {
    /// Check run names or status contexts that must appear and pass.
    pub require: Vec<String>,
    pub timeout: Duration,
    pub interval: Duration,
}

/// The settings read from the environment.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    /// `GITHUB_API_URL` (default api.github.com) and `GITHUB_TOKEN`.
    pub fn from_env() -> Api {
        let base = std::env::var(env::GITHUB_API_URL)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        Api {
            base: base.trim_end_matches('/').to_owned(),
            // A token read from a file often ends in a newline.
            token: std::env::var(env::GITHUB_TOKEN)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
        }
    }
}

/// Where a check comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A check run (GitHub Actions, apps).
    CheckRun,
    /// A commit status (`context`).
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Passed,
    Failed,
}

/// One check run or commit status, classified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub kind: Kind,
    pub state: State,
    /// A check run's `conclusion` (or `status` while it runs), a status's
    /// `state`.
    pub conclusion: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CheckRunsPage {
    #[serde(default)]
    total_count: usize,
    #[serde(default)]
    check_runs: Vec<CheckRun>,
}

#[derive(Debug, Deserialize)]
struct CheckRun {
    name: String,
    status: String,
    conclusion: Option<String>,
    html_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CombinedStatus {
    #[serde(default)]
    statuses: Vec<CommitStatus>,
}

#[derive(Debug, Deserialize)]
struct CommitStatus {
    context: String,
    state: String,
    target_url: Option<String>,
}

impl CheckRun {
    fn classify(self) -> Check {
        let state = match (self.status.as_str(), self.conclusion.as_deref()) {
            ("completed", Some("success" | "neutral" | "skipped")) => State::Passed,
            // failure, cancelled, timed_out, action_required, stale,
            // startup_failure, and anything GitHub adds later.
            ("completed", _) => State::Failed,
            _ => State::Pending,
        };
        let conclusion = match state {
            State::Pending => Some(self.status),
            _ => self.conclusion,
        };
        Check {
            name: self.name,
            kind: Kind::CheckRun,
            state,
            conclusion,
            url: self.html_url,
        }
    }
}

impl CommitStatus {
    fn classify(self) -> Check {
        let state = match self.state.as_str() {
            "success" => State::Passed,
            "failure" | "error" => State::Failed,
            _ => State::Pending,
        };
        Check {
            name: self.context,
            kind: Kind::Status,
            state,
            conclusion: Some(self.state),
            url: self.target_url.filter(|u| !u.is_empty()),
        }
    }
}

/// What the checks say at one moment.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    failed: Vec<Check>,
    /// Names still running, and required names not seen yet.
    pending: Vec<String>,
}

fn evaluate(checks: &[Check], require: &[String]) -> Verdict {
    let failed = checks
        .iter()
        .filter(|c| c.state == State::Failed)
        .cloned()
        .collect();
    let mut pending: Vec<String> = checks
        .iter()
        .filter(|c| c.state == State::Pending)
        .map(|c| c.name.clone())
        .collect();
    for name in require {
        if !checks.iter().any(|c| &c.name == name) {
            pending.push(name.clone());
        }
    }
    Verdict { failed, pending }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    TimedOut,
}

/// How the gate ended, as the `ci_gate` event carries it.
#[derive(Debug, Serialize)]
pub struct GateOutcome {
    pub repo: String,
    pub sha: String,
    pub outcome: Outcome,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub pending: Vec<String>,
    #[serde(skip)]
    pub failed_checks: Vec<Check>,
}

impl GateOutcome {
    /// Why a deploy does not go ahead, in one line.
    pub fn reason(&self) -> String {
        let at = format!("{}@{}", self.repo, &self.sha[..7.min(self.sha.len())]);
        match self.outcome {
            Outcome::Passed => format!("the checks of {at} passed"),
            Outcome::Failed => format!(
                "the checks of {at} failed: {}",
                self.failed_checks
                    .iter()
                    .map(described)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Outcome::TimedOut if self.pending.is_empty() => {
                format!("the checks of {at} did not finish in time")
            }
            Outcome::TimedOut => format!(
                "the checks of {at} did not finish in time: still pending {}",
                self.pending.join(", ")
            ),
        }
    }
}

/// `test (failure, https://…)`.
fn described(check: &Check) -> String {
    let mut text = check.name.clone();
    let detail: Vec<&str> = [check.conclusion.as_deref(), check.url.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if !detail.is_empty() {
        text.push_str(&format!(" ({})", detail.join(", ")));
    }
    text
}

/// A check's line for humans when its state changes.
fn line(check: &Check, color: bool) -> String {
    let label = match check.state {
        State::Pending => "wait".to_owned(),
        State::Passed => "ok  ".to_owned(),
        State::Failed => paint("FAIL", Style::Error, color),
    };
    format!("{label} {}", described(check))
}

/// Why a poll got no answer to use.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("could not ask GitHub ({url})")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GitHub answered {status} to {url}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("GitHub's answer to {url} is not what berth expects")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What one request can end in, besides an answer.
enum Failure {
    /// The rate limit is used up until then.
    RateLimited(SystemTime),
    /// Worth asking again at the next poll.
    Transient(GithubError),
    /// Bad repo, commit or token: asking again will not help.
    Fatal(anyhow::Error),
}

struct Client {
    http: reqwest::Client,
    api: Api,
    repo: Repo,
    sha: Sha,
}

impl Client {
    async fn get(&self, url: &str) -> Result<(HeaderMap, Vec<u8>), Failure> {
        let mut request = self
            .http
            .get(url)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .timeout(REQUEST_TIMEOUT);
        if let Some(token) = &self.api.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request_error = |source| {
            Failure::Transient(GithubError::Request {
                url: url.to_owned(),
                source,
            })
        };
        let response = request.send().await.map_err(request_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(request_error)?.to_vec();
        if status.is_success() {
            return Ok((headers, body));
        }
        if let Some(reset) = rate_limited(status, &headers) {
            return Err(Failure::RateLimited(reset));
        }
        let token_hint = match self.api.token {
            Some(_) => format!(
                "check that {} can read the checks and commit statuses of {}",
                env::GITHUB_TOKEN,
                self.repo
            ),
            None => format!(
                "{} is not set; a private repository answers 404 without a token that can read it",
                env::GITHUB_TOKEN
            ),
        };
        match status {
            StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => {
                Err(Failure::Fatal(anyhow::Error::new(
                    UsageError::new(format!("no commit {} in {}", self.sha, self.repo)).hint(
                        format!(
                            "check the repository and the commit (it must be pushed); {token_hint}"
                        ),
                    ),
                )))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let message = match (&self.api.token, status) {
                    (Some(_), StatusCode::UNAUTHORIZED) => format!(
                        "GitHub does not accept {} (401 Unauthorized)",
                        env::GITHUB_TOKEN
                    ),
                    (Some(_), _) => format!(
                        "{} may not read the checks of {} (403 Forbidden)",
                        env::GITHUB_TOKEN,
                        self.repo
                    ),
                    (None, _) => format!(
                        "GitHub wants a token to read the checks of {} ({status}), and {} is not set",
                        self.repo,
                        env::GITHUB_TOKEN
                    ),
                };
                Err(Failure::Fatal(anyhow::Error::new(
                    UsageError::new(message).hint(format!(
                        "set {} to a token with `checks: read` and `statuses: read` on {}",
                        env::GITHUB_TOKEN,
                        self.repo
                    )),
                )))
            }
            _ => Err(Failure::Transient(GithubError::Status {
                url: url.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(200).collect(),
            })),
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(url: &str, body: &[u8]) -> Result<T, Failure> {
        serde_json::from_slice(body).map_err(|source| {
            Failure::Transient(GithubError::Decode {
                url: url.to_owned(),
                source,
            })
        })
    }

    /// Every check run and commit status of the commit, classified.
    async fn poll(&self) -> Result<Vec<Check>, Failure> {
        let commit = format!("{}/repos/{}/commits/{}", self.api.base, self.repo, self.sha);
        let mut checks = Vec::new();
        let first = format!("{commit}/check-runs?per_page=100");
        let mut url = first.clone();
        let mut runs = 0;
        for page in 1..=MAX_PAGES {
            let (headers, body) = self.get(&url).await?;
            let parsed: CheckRunsPage = Self::decode(&url, &body)?;
            let empty = parsed.check_runs.is_empty();
            runs += parsed.check_runs.len();
            checks.extend(parsed.check_runs.into_iter().map(CheckRun::classify));
            url = match next_link(&headers) {
                Some(next) => next,
                None if !empty && runs < parsed.total_count => format!("{first}&page={}", page + 1),
                None => break,
            };
        }
        let url = format!("{commit}/status");
        let (_, body) = self.get(&url).await?;
        let combined: CombinedStatus = Self::decode(&url, &body)?;
        checks.extend(combined.statuses.into_iter().map(CommitStatus::classify));
        Ok(checks)
    }
}

/// When a 403 or 429 says the rate limit is used up: until when.
fn rate_limited(status: StatusCode, headers: &HeaderMap) -> Option<SystemTime> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(secs) = header("retry-after") {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining") == Some(0) {
        let reset = header("x-ratelimit-reset").unwrap_or(0);
        return Some(UNIX_EPOCH + Duration::from_secs(reset));
    }
    None
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| url.to_owned())
    })
}

/// Waits until the checks of `sha` in `repo` finish, fail, or `timeout`
/// runs out, with a line per state change (and a `check` event), then the
/// `ci_gate` event. Bad input, a missing commit and a refused token are
/// errors; a failed or unfinished gate is an outcome.
pub async fn gate(
    repo: &Repo,
    sha: &Sha,
    opts: &GateOptions,
    printer: Printer,
) -> anyhow::Result<GateOutcome> {
    let client = Client {
        http: reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("could not make an HTTP client")?,
        api: Api::from_env(),
        repo: repo.clone(),
        sha: sha.clone(),
    };
    let at = format!("{repo}@{}", sha.short());
    printer.line(format!("waiting for the checks of {at}"));
    let deadline = Instant::now() + opts.timeout;
    let mut seen: HashMap<(Kind, String), (State, Option<String>)> = HashMap::new();
    let mut answered = false;
    let mut last: Vec<Check> = Vec::new();
    let mut pending: Vec<String> = opts.require.clone();
    loop {
        match client.poll().await {
            Ok(checks) => {
                answered = true;
                for check in &checks {
                    let key = (check.kind, check.name.clone());
                    let now = (check.state, check.conclusion.clone());
                    if seen.get(&key) != Some(&now) {
                        printer.line(line(check, printer.color()));
                        printer.event(EVENT_CHECK, check);
                        seen.insert(key, now);
                    }
                }
                let verdict = evaluate(&checks, &opts.require);
                pending = verdict.pending;
                last = checks;
                if !verdict.failed.is_empty() {
                    return Ok(finish(
                        repo,
                        sha,
                        Outcome::Failed,
                        &last,
                        verdict.failed,
                        pending,
                        printer,
                    ));
                }
                if pending.is_empty() {
                    if last.is_empty() {
                        printer.line(format!(
                            "no checks on {at}: no workflow ran for it, and none is required"
                        ));
                    }
                    return Ok(finish(
                        repo,
                        sha,
                        Outcome::Passed,
                        &last,
                        Vec::new(),
                        pending,
                        printer,
                    ));
                }
            }
            Err(Failure::Fatal(err)) => return Err(err),
            Err(Failure::Transient(err)) if answered => {
                printer.warn(format!(
                    "{err}: {}; asking again",
                    crate::error::causes(&err)
                ));
            }
            Err(Failure::Transient(err)) => return Err(err.into()),
            Err(Failure::RateLimited(reset)) => {
                let wait = reset.duration_since(SystemTime::now()).unwrap_or_default()
                    + Duration::from_secs(1);
                if Instant::now() + wait > deadline {
                    printer.warn(format!(
                        "GitHub's rate limit is used up for {} s, past the timeout",
                        wait.as_secs()
                    ));
                    break;
                }
                printer.warn(format!(
                    "GitHub's rate limit is used up: waiting {} s for it to reset",
                    wait.as_secs()
                ));
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(opts.interval.min(deadline - now)).await;
    }
    Ok(finish(
        repo,
        sha,
        Outcome::TimedOut,
        &last,
        Vec::new(),
        pending,
        printer,
    ))
}

fn finish(
    repo: &Repo,
    sha: &Sha,
    outcome: Outcome,
    checks: &[Check],
    failed: Vec<Check>,
    pending: Vec<String>,
    printer: Printer,
) -> GateOutcome {
    let result = GateOutcome {
        repo: repo.to_string(),
        sha: sha.to_string(),
        outcome,
        passed: checks
            .iter()
            .filter(|c| c.state == State::Passed)
            .map(|c| c.name.clone())
            .collect(),
        failed: failed.iter().map(|c| c.name.clone()).collect(),
        pending,
        failed_checks: failed,
    };
    match outcome {
        Outcome::Passed if !result.passed.is_empty() => printer.line(format!(
            "{} passed: {}",
            plural(result.passed.len(), "check"),
            result.passed.join(", ")
        )),
        Outcome::Passed => {}
        _ => printer.line(result.reason()),
    }
    printer.event(EVENT_CI_GATE, &result);
    result
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: &str) -> Check {
        serde_json::from_str::<CheckRun>(json).unwrap().classify()
    }

    #[test]
    fn repos_are_owner_slash_name() {
        assert!(Repo::parse("berth-deploy/berth").is_ok());
        assert!(Repo::parse("a/b.c_d-e").is_ok());
        for bad in [
            "berth",
            "a/b/c",
            "/b",
            "a/",
            "a b/c",
            "a/..",
            "https://github.com/a/b",
        ] {
            let err = Repo::parse(bad).unwrap_err();
            assert!(err.message.contains("is not OWNER/NAME"), "{bad}");
            assert!(err.hint.unwrap().contains("--repo"));
        }
    }

    #[test]
    fn shas_are_7_to_40_hex_digits() {
        assert_eq!(Sha::parse("ABCDEF1").unwrap().to_string(), "abcdef1");
        let full = "3f2a9c1e0b7d4c65a8e1f0d2b3c4a5e6f7081920";
        assert!(Sha::parse(full).unwrap().is_full());
        assert!(!Sha::parse("3f2a9c1").unwrap().is_full());
        assert_eq!(Sha::parse(full).unwrap().short(), "3f2a9c1");
        for bad in ["abc123", "main", "", "3f2a9c1g", &format!("{full}0")] {
            assert!(Sha::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_may_be_fractional() {
        assert_eq!(parse_secs("0.2").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_secs("1800").unwrap(), Duration::from_secs(1800));
        for bad in ["0", "-1", "x", "NaN", "inf"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_runs_pass_fail_or_wait() {
        let c = run(
            r#"{"id":1,"name":"build","status":"in_progress","conclusion":null,"html_url":"https://x/1"}"#,
        );
        assert_eq!(
            (c.state, c.conclusion.as_deref()),
            (State::Pending, Some("in_progress"))
        );
        assert_eq!(c.url.as_deref(), Some("https://x/1"));
        let c = run(r#"{"name":"build","status":"queued","conclusion":null,"html_url":null}"#);
        assert_eq!(c.state, State::Pending);
        for passed in ["success", "neutral", "skipped"] {
            let c = run(&format!(
                r#"{{"name":"t","status":"completed","conclusion":"{passed}","html_url":null}}"#
            ));
            assert_eq!(c.state, State::Passed, "{passed}");
            assert_eq!(c.conclusion.as_deref(), Some(passed));
        }
        for failed in [
            "failure",
            "cancelled",
            "timed_out",
            "action_required",
            "stale",
            "startup_failure",
        ] {
            let c = run(&format!(
                r#"{{"name":"t","status":"completed","conclusion":"{failed}","html_url":null}}"#
            ));
            assert_eq!(c.state, State::Failed, "{failed}");
        }
    }

    #[test]
    fn commit_statuses_pass_fail_or_wait() {
        let status = |state: &str| {
            serde_json::from_str::<CommitStatus>(&format!(
                r#"{{"context":"ci/jenkins","state":"{state}","target_url":""}}"#
            ))
            .unwrap()
            .classify()
        };
        assert_eq!(status("pending").state, State::Pending);
        assert_eq!(status("success").state, State::Passed);
        assert_eq!(status("failure").state, State::Failed);
        assert_eq!(status("error").state, State::Failed);
        assert_eq!(status("success").url, None);
    }

    fn check(name: &str, state: State) -> Check {
        Check {
            name: name.into(),
            kind: Kind::CheckRun,
            state,
            conclusion: None,
            url: None,
        }
    }

    #[test]
    fn required_checks_wait_until_they_appear() {
        let checks = [check("build", State::Passed), check("lint", State::Pending)];
        let verdict = evaluate(&checks, &["test".into(), "build".into()]);
        assert!(verdict.failed.is_empty());
        assert_eq!(verdict.pending, vec!["lint", "test"]);
        // Nothing ran and nothing is required: done.
        assert_eq!(
            evaluate(&[], &[]),
            Verdict {
                failed: vec![],
                pending: vec![]
            }
        );
        let verdict = evaluate(&[check("test", State::Failed)], &[]);
        assert_eq!(verdict.failed[0].name, "test");
    }

    #[test]
    fn next_page_from_the_link_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            r#"<https://api.github.com/repositories/1/commits/abc/check-runs?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/commits/abc/check-runs?per_page=100&page=3>; rel="last""#
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some(
                "https://api.github.com/repositories/1/commits/abc/check-runs?per_page=100&page=2"
            )
        );
        headers.insert(LINK, r#"<https://x/?page=1>; rel="prev""#.parse().unwrap());
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn rate_limits_say_when_they_reset() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset", "1700000000".parse().unwrap());
        assert_eq!(
            rate_limited(StatusCode::FORBIDDEN, &headers),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(rate_limited(StatusCode::NOT_FOUND, &headers), None);
        let mut refused = HeaderMap::new();
        refused.insert("x-ratelimit-remaining", "4999".parse().unwrap());
        assert_eq!(rate_limited(StatusCode::FORBIDDEN, &refused), None);
    }

    #[test]
    fn reasons_name_the_failed_checks() {
        let mut failed = check("test", State::Failed);
        failed.conclusion = Some("failure".into());
        failed.url = Some("https://github.com/o/n/actions/runs/1/job/2".into());
        let outcome = GateOutcome {
            repo: "o/n".into(),
            sha: "3f2a9c1e0b7d".into(),
            outcome: Outcome::Failed,
            passed: vec![],
            failed: vec!["test".into()],
            pending: vec![],
            failed_checks: vec![failed],
        };
        assert_eq!(
            outcome.reason(),
            "the checks of o/n@3f2a9c1 failed: test (failure, https://github.com/o/n/actions/runs/1/job/2)"
        );
    }
}
