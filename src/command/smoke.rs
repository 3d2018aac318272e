//! `berth smoke --url URL [--expect PATH=STATUS]…`: read-only HTTP checks of
//! a deployed app. Each check GETs one path, follows no redirect, and
//! compares the status code; a summary follows, and the exit code says
//! whether every check passed.

use std::ffi::OsStr;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::builder::TypedValueParser;
use clap::error::{ContextKind, ContextValue};
use reqwest::Url;
use serde::Serialize;

use crate::context::Context;
use crate::error::{self, Exit, UsageError};
use crate::output::{paint, Style};

/// The check made when no `--expect` is given.
pub const DEFAULT_EXPECT: &str = "/health=200";

/// The pause before the first retry; it doubles for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

pub const EVENT_CHECK: &str = "check";
pub const EVENT_SUMMARY: &str = "summary";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The app's address, http or https; a path in it prefixes every PATH
    /// (`https://example.com/notes` checks `/notes/health`)
    #[arg(long, value_name = "URL", value_parser = WithHint(BaseUrl::parse))]
    pub url: BaseUrl,

    /// A path and the status it must answer, repeatable: a code (`/api/items=401`) or a class
    /// (`/=2xx`); a path may carry a query (`/search?q=a=200`)
    #[arg(
        long = "expect",
        value_name = "PATH=STATUS",
        value_parser = WithHint(Expect::parse),
        default_value = DEFAULT_EXPECT
    )]
    pub expect: Vec<Expect>,

    /// Seconds each request may take, from connecting to the status line
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub timeout: u64,

    /// More tries of a check that got no answer (connection error, timeout) or a 5xx it did not
    /// expect, after 0.5 s, then 1 s, 2 s, up to 4 s
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
}

/// What a path must answer: one status code, or a class such as `2xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    /// The first digit: 4 for `4xx`.
    Class(u8),
}

impl StatusMatch {
    pub fn parse(text: &str) -> Result<StatusMatch, UsageError> {
        let hint = "write a code from 100 to 599 (`200`) or a class from `1xx` to `5xx`, \
                    e.g. `--expect /health=200` or `--expect /=2xx`";
        if text.is_empty() {
            return Err(UsageError::new("no status after `=`").hint(hint));
        }
        let bytes = text.as_bytes();
        if bytes.len() == 3 && bytes[1..].eq_ignore_ascii_case(b"xx") {
            return match bytes[0] {
                digit @ b'1'..=b'5' => Ok(StatusMatch::Class(digit - b'0')),
                _ => Err(UsageError::new(format!("`{text}` is not a status class")).hint(hint)),
            };
        }
        match text.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) && text.len() == 3 => {
                Ok(StatusMatch::Code(code))
            }
            _ => Err(UsageError::new(format!("`{text}` is not an HTTP status")).hint(hint)),
        }
    }

    pub fn matches(self, code: u16) -> bool {
        match self {
            StatusMatch::Code(expected) => code == expected,
            StatusMatch::Class(class) => code / 100 == u16::from(class),
        }
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Code(code) => write!(f, "{code}"),
            StatusMatch::Class(class) => write!(f, "{class}xx"),
        }
    }
}

/// One `--expect PATH=STATUS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Starts with `/`; may carry a query.
    pub path: String,
    pub status: StatusMatch,
}

impl Expect {
    /// Splits at the last `=`, since a query may hold `=` and a status never
    /// does. A path without its leading `/` gets one.
    pub fn parse(text: &str) -> Result<Expect, UsageError> {
        let Some((path, status)) = text.rsplit_once('=') else {
            return Err(UsageError::new("no `=` between a path and a status").hint(
                "write PATH=STATUS, e.g. `--expect /health=200` or `--expect /api/items=401`",
            ));
        };
        if path.is_empty() {
            return Err(UsageError::new("no path before `=`")
                .hint("write PATH=STATUS, e.g. `--expect /health=200`; `/=200` checks the root"));
        }
        if path.contains('#') {
            return Err(
                UsageError::new("a fragment (`#…`) is never sent to the server")
                    .hint("leave out the part from `#` on"),
            );
        }
        let status = StatusMatch::parse(status)?;
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Ok(Expect { path, status })
    }
}

/// `--url`: an http or https URL without a query or fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(Url);

impl BaseUrl {
    pub fn parse(text: &str) -> Result<BaseUrl, UsageError> {
        let with_scheme = "write it with its scheme, e.g. `--url https://notes.example.com` or \
                           `--url http://127.0.0.1:8090`";
        let url = Url::parse(text)
            .map_err(|err| UsageError::new(format!("not a URL: {err}")).hint(with_scheme))?;
        match url.scheme() {
            "http" | "https" => {}
            // `localhost:8090` parses as the scheme `localhost` and no host.
            _ if !url.has_host() => {
                return Err(
                    UsageError::new("no `http://` or `https://` before the host").hint(with_scheme),
                )
            }
            other => {
                return Err(UsageError::new(format!(
                    "the scheme is `{other}`, and berth smoke checks http and https"
                ))
                .hint(with_scheme))
            }
        }
        if url.query().is_some() {
            return Err(UsageError::new("the URL has a query (`?…`)")
                .hint("put the query in a PATH, e.g. `--expect '/search?q=x=200'`"));
        }
        if url.fragment().is_some() {
            return Err(UsageError::new("the URL has a fragment (`#…`)")
                .hint("leave out the part from `#` on"));
        }
        Ok(BaseUrl(url))
    }

    /// The URL of `path` under this base: the base's own path, then `path`,
    /// with one `/` between them (`Url::join` would replace the base's path).
    pub fn join(&self, path: &str) -> Result<Url, UsageError> {
        let base = self.0.as_str().trim_end_matches('/');
        let path = path.strip_prefix('/').unwrap_or(path);
        let text = format!("{base}/{path}");
        Url::parse(&text).map_err(|err| UsageError::new(format!("`{text}` is not a URL: {err}")))
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown(&self.0))
    }
}

/// `url` without its password, for output.
fn shown(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// A clap value parser from a function that fails with a [`UsageError`]:
/// clap prints the bad value and the error's message, then its hint as a tip.
#[derive(Clone)]
struct WithHint<T>(fn(&str) -> Result<T, UsageError>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for WithHint<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        self.0.parse_ref(cmd, arg, value).map_err(|mut err| {
            let hint = std::error::Error::source(&err)
                .and_then(|source| source.downcast_ref::<UsageError>())
                .and_then(|usage| usage.hint.clone());
            if let Some(hint) = hint {
                err.insert(
                    ContextKind::Suggested,
                    ContextValue::StyledStrs(vec![hint.into()]),
                );
            }
            err
        })
    }
}

/// The outcome of one check, as the `check` event carries it.
#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub path: String,
    pub url: String,
    pub expect: String,
    /// The status of the last answer; none when there was none.
    pub status: Option<u16>,
    /// Where a redirect pointed.
    pub location: Option<String>,
    pub ok: bool,
    /// How long the last try took.
    pub ms: u64,
    pub attempts: u32,
    /// Why there was no answer.
    pub error: Option<String>,
}

impl CheckResult {
    /// `ok   /health 200 (12 ms)`, `FAIL /api/items expected 401, got 200 (8 ms)`.
    fn line(&self, color: bool) -> String {
        let mut got = match (self.status, &self.error) {
            (Some(status), _) => status.to_string(),
            (None, Some(error)) => error.clone(),
            (None, None) => "no answer".to_owned(),
        };
        if let Some(location) = &self.location {
            got.push_str(&format!(" to {location}"));
        }
        let mut timing = format!("{} ms", self.ms);
        if self.attempts > 1 {
            timing.push_str(&format!(", {} tries", self.attempts));
        }
        if self.ok {
            format!("ok   {} {got} ({timing})", self.path)
        } else {
            let got = match self.status {
                Some(_) => format!("got {got}"),
                None => got,
            };
            format!(
                "{} {} expected {}, {got} ({timing})",
                paint("FAIL", Style::Error, color),
                self.path,
                self.expect
            )
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    checks: usize,
    passed: usize,
    failed: usize,
}

pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<Exit> {
    let urls = args
        .expect
        .iter()
        .map(|expect| args.url.join(&expect.path))
        .collect::<Result<Vec<_>, _>>()?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("could not make an HTTP client")?;
    let timeout = Duration::from_secs(args.timeout);
    let mut passed = 0;
    for (expect, url) in args.expect.iter().zip(urls) {
        let result = check(&client, expect, url, timeout, args.retries).await;
        ctx.printer.line(result.line(ctx.printer.color()));
        ctx.printer.event(EVENT_CHECK, &result);
        passed += usize::from(result.ok);
    }
    let summary = Summary {
        url: args.url.to_string(),
        checks: args.expect.len(),
        passed,
        failed: args.expect.len() - passed,
    };
    ctx.printer.line(format!(
        "{} check{}: {} passed, {} failed",
        summary.checks,
        if summary.checks == 1 { "" } else { "s" },
        summary.passed,
        summary.failed
    ));
    ctx.printer.event(EVENT_SUMMARY, &summary);
    Ok(if summary.failed == 0 {
        Exit::SUCCESS
    } else {
        Exit::FAILURE
    })
}

/// GETs `url` until it answers as expected, or until a try gets an answer
/// worth no retry, or the retries run out.
async fn check(
    client: &reqwest::Client,
    expect: &Expect,
    url: Url,
    timeout: Duration,
    retries: u32,
) -> CheckResult {
    let mut result = CheckResult {
        path: expect.path.clone(),
        url: shown(&url),
        expect: expect.status.to_string(),
        status: None,
        location: None,
        ok: false,
        ms: 0,
        attempts: 0,
        error: None,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        if result.attempts > 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        result.attempts += 1;
        let started = Instant::now();
        let answer = client.get(url.clone()).timeout(timeout).send().await;
        result.ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let retry = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                result.status = Some(status);
                result.error = None;
                result.location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .filter(|_| response.status().is_redirection())
                    .map(|location| String::from_utf8_lossy(location.as_bytes()).into_owned());
                result.ok = expect.status.matches(status);
                !result.ok && response.status().is_server_error()
            }
            Err(err) => {
                result.status = None;
                result.location = None;
                result.error = Some(describe(&err, timeout));
                true
            }
        };
        if !retry || result.attempts > retries {
            return result;
        }
    }
}

/// Why a request got no answer, in a few words.
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs());
    }
    let mut root: &(dyn std::error::Error + 'static) = err;
    while let Some(source) = root.source() {
        root = source;
    }
    if err.is_connect() {
        format!("could not connect: {root}")
    } else {
        format!("the request failed: {}", error::causes(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn expect(text: &str) -> Expect {
        Expect::parse(text).unwrap()
    }

    #[test]
    fn expect_parses_codes_and_classes() {
        assert_eq!(
            expect("/health=200"),
            Expect {
                path: "/health".into(),
                status: StatusMatch::Code(200)
            }
        );
        assert_eq!(expect("/api/items=4xx").status, StatusMatch::Class(4));
        assert_eq!(expect("/=2XX").status, StatusMatch::Class(2));
        assert_eq!(expect("/=2XX").path, "/");
        // A query keeps its own `=`; the status is after the last one.
        assert_eq!(
            expect("/search?q=a=b&page=2=200"),
            Expect {
                path: "/search?q=a=b&page=2".into(),
                status: StatusMatch::Code(200)
            }
        );
        assert_eq!(expect("health=503").path, "/health");
    }

    #[test]
    fn bad_expectations_say_what_to_write() {
        let err = |text: &str| Expect::parse(text).unwrap_err();
        let e = err("/health");
        assert_eq!(e.message, "no `=` between a path and a status");
        assert!(e.hint.unwrap().contains("`--expect /health=200`"));
        assert_eq!(err("=200").message, "no path before `=`");
        assert_eq!(err("/health=").message, "no status after `=`");
        assert_eq!(err("/health=ok").message, "`ok` is not an HTTP status");
        assert_eq!(err("/health=600").message, "`600` is not an HTTP status");
        assert_eq!(err("/health=99").message, "`99` is not an HTTP status");
        assert_eq!(err("/health=0200").message, "`0200` is not an HTTP status");
        assert_eq!(err("/health=+20").message, "`+20` is not an HTTP status");
        assert_eq!(err("/health=6xx").message, "`6xx` is not a status class");
        assert!(err("/health=6xx").hint.unwrap().contains("`5xx`"));
        assert!(err("/a#b=200").message.contains("fragment"));
    }

    #[test]
    fn statuses_match_codes_and_classes() {
        assert!(StatusMatch::Code(401).matches(401));
        assert!(!StatusMatch::Code(401).matches(403));
        assert!(StatusMatch::Class(2).matches(200));
        assert!(StatusMatch::Class(2).matches(299));
        assert!(!StatusMatch::Class(2).matches(302));
        assert_eq!(StatusMatch::Class(3).to_string(), "3xx");
        assert_eq!(StatusMatch::Code(204).to_string(), "204");
    }

    #[test]
    fn base_urls_are_http_without_query() {
        assert!(BaseUrl::parse("https://notes.example.com").is_ok());
        assert!(BaseUrl::parse("http://127.0.0.1:8090/app/").is_ok());
        let err = |text: &str| BaseUrl::parse(text).unwrap_err();
        assert_eq!(
            err("ftp://example.com").message,
            "the scheme is `ftp`, and berth smoke checks http and https"
        );
        // Without a scheme, a host and port reads as a scheme and a path.
        assert_eq!(
            err("localhost:8090").message,
            "no `http://` or `https://` before the host"
        );
        assert!(err("notes.example.com").message.starts_with("not a URL"));
        assert!(err("notes.example.com").hint.unwrap().contains("https://"));
        assert!(err("http://example.com/?a=1").message.contains("query"));
        assert!(err("http://example.com/#top").message.contains("fragment"));
    }

    #[test]
    fn paths_join_under_the_base_path() {
        let join = |base: &str, path: &str| {
            BaseUrl::parse(base)
                .unwrap()
                .join(&expect(&format!("{path}=200")).path)
                .unwrap()
                .to_string()
        };
        let cases = [
            ("https://x.example", "/health", "https://x.example/health"),
            ("https://x.example/", "/health", "https://x.example/health"),
            ("https://x.example/", "/", "https://x.example/"),
            ("https://x.example", "/", "https://x.example/"),
            (
                "https://x.example/app",
                "/health",
                "https://x.example/app/health",
            ),
            (
                "https://x.example/app/",
                "/health",
                "https://x.example/app/health",
            ),
            (
                "https://x.example/app/",
                "health",
                "https://x.example/app/health",
            ),
            ("https://x.example/app/", "/", "https://x.example/app/"),
            (
                "http://127.0.0.1:8090",
                "/search?q=a b",
                "http://127.0.0.1:8090/search?q=a%20b",
            ),
            (
                "http://127.0.0.1:8090",
                "//other.example/x",
                "http://127.0.0.1:8090//other.example/x",
            ),
        ];
        for (base, path, want) in cases {
            assert_eq!(join(base, path), want, "{base} + {path}");
        }
    }

    #[test]
    fn passwords_are_not_shown() {
        let base = BaseUrl::parse("https://me:secret@x.example/").unwrap();
        assert_eq!(base.to_string(), "https://me:***@x.example/");
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_default_to_health_and_two_retries() {
        let cli = Cli::try_parse_from(["smoke", "--url", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(cli.args.expect, vec![expect(DEFAULT_EXPECT)]);
        assert_eq!((cli.args.timeout, cli.args.retries), (10, 2));
        let cli = Cli::try_parse_from([
            "smoke",
            "--url",
            "http://127.0.0.1:1",
            "--expect",
            "/a=401",
            "--expect",
            "/b=3xx",
        ])
        .unwrap();
        assert_eq!(cli.args.expect, vec![expect("/a=401"), expect("/b=3xx")]);
    }

    #[test]
    fn clap_shows_the_bad_value_and_the_hint() {
        let err = Cli::try_parse_from(["smoke", "--url", "http://x", "--expect", "foo"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "error: invalid value 'foo' for '--expect <PATH=STATUS>': \
                 no `=` between a path and a status\n"
            ),
            "{err}"
        );
        assert!(
            err.contains("tip: write PATH=STATUS, e.g. `--expect /health=200`"),
            "{err}"
        );
    }

    #[test]
    fn lines_for_humans() {
        let result = |status, ok, error: Option<&str>| CheckResult {
            path: "/api/items".into(),
            url: "http://x/api/items".into(),
            expect: "401".into(),
            status,
            location: None,
            ok,
            ms: 8,
            attempts: 1,
            error: error.map(str::to_owned),
        };
        assert_eq!(
            result(Some(401), true, None).line(false),
            "ok   /api/items 401 (8 ms)"
        );
        assert_eq!(
            result(Some(200), false, None).line(false),
            "FAIL /api/items expected 401, got 200 (8 ms)"
        );
        let mut refused = result(None, false, Some("could not connect: refused"));
        refused.attempts = 3;
        assert_eq!(
            refused.line(false),
            "FAIL /api/items expected 401, could not connect: refused (8 ms, 3 tries)"
        );
        let mut redirect = result(Some(302), false, None);
        redirect.location = Some("/login".into());
        assert_eq!(
            redirect.line(false),
            "FAIL /api/items expected 401, got 302 to /login (8 ms)"
        );
    }
}
