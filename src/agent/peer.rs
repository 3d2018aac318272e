//! Fan-out between hosts: a host that has a system serves its closure to
//! its peers as a Nix binary cache while a deploy runs (`agent serve`),
//! and a host takes its system from such peers (`agent fetch`), so the
//! deployer's uplink carries a closure once instead of once per host.
//!
//! Trust stays with signatures: the cache serves only signed paths, with
//! the signatures its store holds, and the fetching host's Nix takes a
//! path only if a key *it* trusts signed it and the NAR hashes to what was
//! signed. A peer can refuse to serve, or serve garbage, and that costs
//! the fetch, never the host's store.
//!
//! The cache listens on the address the deployer's SSH connection reached
//! the host on (`SSH_CONNECTION`), which is where its peers reach it too
//! (a tailnet address, a LAN address), on a port of the kernel's choosing,
//! under a random path that only the deployer learns. It stops when the
//! SSH session that started it goes (its stdout is closed, or its parent
//! changes), or after its lifetime at the latest.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::{self, Signatures};
use super::system::AgentError;
use crate::nix::keys::PublicKey;
use crate::nix::signatures::{self, SignedPath};
use crate::nix::{self, nar, StorePath};
use crate::process::{self, JobLog, Via};

/// The event `agent serve` prints once it listens.
pub const EVENT_SERVING: &str = "serving";
/// The event `agent fetch` ends with: a [`Fetched`].
pub const EVENT_FETCHED: &str = "fetched";
/// How long a client's connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(30);
/// The most a request's line and headers may hold.
const MAX_HEAD: usize = 16 * 1024;

/// Where a peer cache listens, for the deployer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    /// `http://ADDR:PORT/TOKEN`, the substituter URL.
    pub url: String,
    /// How many paths of the closure it serves (the signed ones).
    pub paths: usize,
}

/// What `agent serve` needs besides the system.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The address to listen on; by default the one SSH reached.
    pub listen: Option<IpAddr>,
    pub port: u16,
    /// When it stops whatever else happens.
    pub lifetime: Duration,
}

/// The closure's signed paths, by hash part.
struct Cache {
    token: String,
    paths: HashMap<String, SignedPath>,
}

/// Serves the signed paths of `path`'s closure until the session that
/// started it ends or `options.lifetime` passes. `announce` gets where
/// it listens, once it does.
pub async fn serve(
    path: &StorePath,
    options: &ServeOptions,
    log: &JobLog,
    announce: impl FnOnce(&Serving),
) -> Result<(), AgentError> {
    let io = |what: String| move |source| AgentError::Io { what, source };
    let out = process::output(&signatures::closure_cmd(path), Via::Local, log)
        .await?
        .check()?;
    let signed = signatures::parse(&out.stdout).map_err(|err| AgentError::Io {
        what: format!("read the closure of {path}"),
        source: io::Error::new(io::ErrorKind::InvalidData, err.to_string()),
    })?;
    let listen = match options.listen.or_else(ssh_server_address) {
        Some(addr) => addr,
        None => {
            return Err(AgentError::Io {
                what: "tell which address peers reach this host on".into(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "SSH_CONNECTION is not set (not run over SSH): pass --listen ADDR",
                ),
            })
        }
    };
    let listener =
        TcpListener::bind((listen, options.port)).map_err(io(format!("listen on {listen}")))?;
    let port = listener
        .local_addr()
        .map_err(io("read the port listened on".into()))?
        .port();
    let cache = Arc::new(Cache {
        token: token().map_err(io("read /dev/urandom".into()))?,
        paths: signed
            .into_iter()
            .map(|p| (p.path.hash_part().to_owned(), p))
            .collect(),
    });
    announce(&Serving {
        url: format!("http://{}/{}", SocketAddr::new(listen, port), cache.token),
        paths: cache.paths.len(),
    });
    let deadline = Instant::now() + options.lifetime;
    std::thread::spawn(move || {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        loop {
            std::thread::sleep(Duration::from_millis(250));
            // SAFETY: as above.
            let orphaned = unsafe { libc::getppid() } != parent;
            if orphaned || stdout_gone() || Instant::now() >= deadline {
                std::process::exit(0);
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let cache = cache.clone();
            std::thread::spawn(move || {
                if let Err(err) = connection(stream, &cache) {
                    tracing::debug!("a peer's connection ended: {err}");
                }
            });
        }
    })
    .await
    .map_err(|err| AgentError::Io {
        what: "serve".into(),
        source: io::Error::other(err.to_string()),
    })
}

/// The server's address of the SSH connection the agent runs under.
fn ssh_server_address() -> Option<IpAddr> {
    let text = std::env::var("SSH_CONNECTION").ok()?;
    text.split_whitespace().nth(2)?.parse().ok()
}

/// Whether nobody reads this process's stdout any more (the SSH channel
/// that started it closed): a pipe's writer polls as an error then.
fn stdout_gone() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

/// 128 random bits as hex: the path only the deployer learns.
fn token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One client's connection: requests one after the other (HTTP/1.1
/// keep-alive), until it closes, idles or asks to close.
fn connection(stream: TcpStream, cache: &Cache) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(256 * 1024, stream);
    while let Some(request) = read_request(&mut reader)? {
        respond(&request, cache, &mut writer)?;
        writer.flush()?;
        if request.close {
            break;
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    close: bool,
}

/// The next request's line and headers; `None` when the client closed.
fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head = reader.take(MAX_HEAD as u64);
    let mut line = String::new();
    if head.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not an HTTP request");
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Err(bad());
    };
    let mut request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        close: version == "HTTP/1.0",
    };
    loop {
        let mut header = String::new();
        if head.read_line(&mut header)? == 0 {
            return Err(bad());
        }
        let header = header.trim_end();
        if header.is_empty() {
            return Ok(Some(request));
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("connection")
                && value.trim().eq_ignore_ascii_case("close")
            {
                request.close = true;
            }
        }
    }
}

/// What a request gets.
#[derive(Debug, PartialEq, Eq)]
enum Reply<'a> {
    Text(&'static str, String),
    Nar(&'a SignedPath),
    NotFound,
}

/// `/TOKEN/nix-cache-info`, `/TOKEN/HASH.narinfo`, `/TOKEN/nar/HASH.nar`;
/// anything else is not found.
fn route<'a>(cache: &'a Cache, target: &str) -> Reply<'a> {
    let Some(rest) = target
        .strip_prefix('/')
        .and_then(|t| t.strip_prefix(cache.token.as_str()))
        .and_then(|t| t.strip_prefix('/'))
    else {
        return Reply::NotFound;
    };
    if rest == "nix-cache-info" {
        // Ahead of any cache the host also has (priority 40 and up).
        return Reply::Text(
            "text/x-nix-cache-info",
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 10\n".into(),
        );
    }
    if let Some(hash) = rest.strip_suffix(".narinfo") {
        return match cache.paths.get(hash) {
            Some(p) => Reply::Text("text/x-nix-narinfo", p.narinfo()),
            None => Reply::NotFound,
        };
    }
    if let Some(hash) = rest
        .strip_prefix("nar/")
        .and_then(|r| r.strip_suffix(".nar"))
    {
        if let Some(p) = cache.paths.get(hash) {
            return Reply::Nar(p);
        }
    }
    Reply::NotFound
}

fn respond(request: &Request, cache: &Cache, out: &mut impl Write) -> io::Result<()> {
    let head = request.method == "HEAD";
    if !head && request.method != "GET" {
        return status_line(out, "405 Method Not Allowed", "text/plain", 0, true);
    }
    match route(cache, &request.target) {
        Reply::Text(kind, body) => {
            status_line(out, "200 OK", kind, body.len() as u64, request.close)?;
            if !head {
                out.write_all(body.as_bytes())?;
            }
        }
        Reply::Nar(p) => {
            status_line(
                out,
                "200 OK",
                "application/x-nix-nar",
                p.nar_size,
                request.close,
            )?;
            if !head {
                let written = nar::dump(Path::new(p.path.as_str()), out)?;
                if written != p.nar_size {
                    // The client sees a short body and tries elsewhere.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} is {written} bytes as a NAR, not the {} recorded",
                            p.path, p.nar_size
                        ),
                    ));
                }
            }
        }
        Reply::NotFound => {
            let body = "not found\n";
            status_line(
                out,
                "404 Not Found",
                "text/plain",
                body.len() as u64,
                request.close,
            )?;
            if !head {
                out.write_all(body.as_bytes())?;
            }
        }
    }
    Ok(())
}

fn status_line(
    out: &mut impl Write,
    status: &str,
    kind: &str,
    len: u64,
    close: bool,
) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

/// Whom `agent fetch` trusts: the keys of the host's agent.json when it
/// has any (what `activate` will check the system against, plus what its
/// Nix trusts), else the key the deployer signed with, on top of what the
/// host's Nix trusts — unless a user other than root runs the agent
/// through sudo: then only what the host's Nix trusts, as for that user's
/// own copies.
pub fn fetch_keys(
    config: &Path,
    deployer_key: Option<PublicKey>,
    escalated: bool,
) -> Result<(Vec<PublicKey>, bool), config::ConfigError> {
    Ok(match config::load(config)? {
        Signatures::Required(trust) => (trust.closure_keys(), false),
        Signatures::NotRequired => (
            deployer_key.filter(|_| !escalated).into_iter().collect(),
            true,
        ),
    })
}

/// What `agent fetch` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// Paths asked for.
    pub paths: usize,
    /// Of those, the ones still not in the store (no peer had them, or
    /// the peers that had them failed): the deployer copies them.
    pub missing: usize,
    /// Nix's first error when it did not give them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Realises those of `paths` the peer caches at `urls` have, trusting
/// `keys` (on top of the host's own with `extra`); a path no peer has is
/// left missing, not an error.
pub async fn fetch(
    paths: &[StorePath],
    urls: &[String],
    keys: &[PublicKey],
    extra: bool,
    log: &JobLog,
) -> Result<Fetched, AgentError> {
    let missing = |paths: &[StorePath]| {
        paths
            .iter()
            .filter(|p| !Path::new(p.as_str()).exists())
            .cloned()
            .collect::<Vec<_>>()
    };
    let wanted = missing(paths);
    let mut why = None;
    if !wanted.is_empty() {
        // Nix's narinfo cache (an SQLite file under XDG_CACHE_HOME) of
        // its own: peers' URLs are new each deploy, so it would only
        // grow, and Nix processes writing one such file at once fail
        // with "executing SQLite statement" (seen in the lab, whose
        // hosts share root's home).
        let cache = tempfile::tempdir().map_err(|source| AgentError::Io {
            what: "make a temporary directory".into(),
            source,
        })?;
        // Its exit status says only that some path was not given.
        let cmd = nix::substitute(&wanted, urls, keys, extra).env("XDG_CACHE_HOME", cache.path());
        let out = process::output(&cmd, Via::Local, log).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            why = lines
                .iter()
                .find(|l| l.starts_with("error:") || l.starts_with("warning:"))
                .or(lines.last())
                .map(|l| l.chars().take(300).collect());
        }
    }
    let missing = missing(&wanted).len();
    Ok(Fetched {
        paths: paths.len(),
        missing,
        why: why.filter(|_| missing > 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/nix/store/67gmyx5vdbg0dv7csdd6gh406z3bs23w-nixos-system-web1";

    fn cache() -> Cache {
        let p = SignedPath {
            path: StorePath::new(P).unwrap(),
            nar_hash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
            nar_size: 120,
            references: vec![],
            signatures: vec!["ops:AAAA".into()],
        };
        Cache {
            token: "t0k".into(),
            paths: [(p.path.hash_part().to_owned(), p)].into(),
        }
    }

    #[test]
    fn only_the_token_path_serves() {
        let cache = cache();
        let hash = "67gmyx5vdbg0dv7csdd6gh406z3bs23w";
        assert!(matches!(
            route(&cache, "/t0k/nix-cache-info"),
            Reply::Text(_, t) if t.starts_with("StoreDir: /nix/store\n")
        ));
        assert!(matches!(
            route(&cache, &format!("/t0k/{hash}.narinfo")),
            Reply::Text(_, t) if t.contains("Sig: ops:AAAA\n")
        ));
        assert!(
            matches!(route(&cache, &format!("/t0k/nar/{hash}.nar")), Reply::Nar(p) if p.path.as_str() == P)
        );
        for target in [
            format!("/{hash}.narinfo"),
            format!("/other/{hash}.narinfo"),
            format!("/t0k/{}.narinfo", "0".repeat(32)),
            "/t0k/../etc/passwd".into(),
            "/t0kx/nix-cache-info".into(),
            "/t0k/nar/x.nar".into(),
        ] {
            assert_eq!(route(&cache, &target), Reply::NotFound, "{target}");
        }
    }

    #[test]
    fn requests_one_after_the_other() {
        let text =
            "GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut reader = io::Cursor::new(text.as_bytes());
        let first = read_request(&mut reader).unwrap().unwrap();
        assert_eq!(
            (first.method.as_str(), first.target.as_str(), first.close),
            ("GET", "/a", false)
        );
        let second = read_request(&mut reader).unwrap().unwrap();
        assert_eq!((second.method.as_str(), second.close), ("HEAD", true));
        assert!(read_request(&mut reader).unwrap().is_none());
        let endless = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(MAX_HEAD));
        assert!(read_request(&mut io::Cursor::new(endless.as_bytes())).is_err());
        assert!(read_request(&mut io::Cursor::new(&b"garbage\r\n\r\n"[..])).is_err());
    }

    #[test]
    fn a_head_request_gets_no_body_and_others_are_refused() {
        let cache = cache();
        let mut out = Vec::new();
        let request = |method: &str| Request {
            method: method.into(),
            target: "/t0k/nix-cache-info".into(),
            close: false,
        };
        respond(&request("HEAD"), &cache, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
        let mut out = Vec::new();
        respond(&request("POST"), &cache, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn whom_a_fetch_trusts() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.json");
        let deployer =
            PublicKey::parse("ops:4Gpc7Y0aWDnD2yIuT4bi3ReqDtYbvvAjqw95Lt5EfGo=").unwrap();
        let host = PublicKey::parse("fleet:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").unwrap();
        assert_eq!(
            fetch_keys(&config, Some(deployer.clone()), false).unwrap(),
            (vec![deployer.clone()], true)
        );
        assert_eq!(
            fetch_keys(&config, Some(deployer.clone()), true).unwrap(),
            (vec![], true)
        );
        std::fs::write(&config, format!(r#"{{"trustedPublicKeys":["{host}"]}}"#)).unwrap();
        assert_eq!(
            fetch_keys(&config, Some(deployer), false).unwrap(),
            (vec![host], false)
        );
        std::fs::write(&config, "{broken").unwrap();
        assert!(fetch_keys(&config, None, false).is_err());
    }
}
