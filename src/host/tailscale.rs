//! Reaching nodes over Tailscale: with `berth.deployment.tailscale.enable`, a
//! node's `targetHost` (a MagicDNS name, a Tailscale IP or `tag:NAME`) is
//! resolved through `tailscale status --json` to the peer's Tailscale IPv4
//! address, and an offline peer is refused before anything is built.
//!
//! The JSON is Tailscale's `ipnstate.Status`
//! (<https://github.com/tailscale/tailscale/blob/main/ipn/ipnstate/ipnstate.go>):
//! berth reads `BackendState`, `MagicDNSSuffix` (or
//! `CurrentTailnet.MagicDNSSuffix`), `Self`, and `Peer` (a map keyed by node
//! key) with each peer's `HostName`, `DNSName` (an FQDN ending in a dot),
//! `TailscaleIPs`, `Online`, `Tags` and `LastSeen`. Tailscale marks the
//! format as subject to change, so every one of them may be missing or null.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use crate::flake::{NodeMeta, NodeName};
use crate::output::Printer;
use crate::process::{self, Cmd, CommandError, JobLog, Via};

/// Turning Tailscale off for a node, the way out of every error here.
const TURN_OFF: &str = "turn off berth.deployment.tailscale.enable";

/// How many peer names an "unknown peer" message lists.
const KNOWN_SHOWN: usize = 20;

/// What can go wrong resolving a node through Tailscale. Everything but an
/// unreadable status is found before anything is built: a usage error.
#[derive(Debug, thiserror::Error)]
pub enum TailscaleError {
    #[error("`tailscale` is not installed: berth runs `tailscale status --json` to reach nodes over Tailscale")]
    NotInstalled,
    #[error("could not read the state of Tailscale")]
    Status {
        #[source]
        source: Box<CommandError>,
    },
    #[error("`tailscale status --json` printed what berth cannot read: {why}")]
    Unreadable { why: String },
    #[error("tailscale is not connected: BackendState={state}")]
    NotRunning { state: String },
    #[error("no tailscale peer is `{target}` (peers: {known})")]
    UnknownPeer { target: String, known: String },
    #[error("no tailscale peer carries `{tag}` (tags in the tailnet: {known})")]
    UnknownTag { tag: String, known: String },
    #[error("`{target}` matches {} tailscale peers: {}", .peers.len(), .peers.join(", "))]
    Ambiguous { target: String, peers: Vec<String> },
    #[error("tailscale peer {peer} is offline (last seen {last_seen})")]
    Offline { peer: String, last_seen: String },
    #[error("tailscale peer {peer} has no Tailscale IPv4 address (it has {addresses})")]
    NoIpv4 { peer: String, addresses: String },
    #[error("node {node}: could not resolve targetHost `{target}` through Tailscale")]
    Node {
        node: NodeName,
        target: String,
        #[source]
        source: Box<TailscaleError>,
    },
}

impl crate::error::Diagnose for TailscaleError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: self.is_usage(),
        }
    }
}

impl TailscaleError {
    /// What to do about it, when berth can tell.
    pub fn hint(&self) -> Option<String> {
        match self {
            TailscaleError::NotInstalled => {
                Some("install tailscale, or turn off berth.deployment.tailscale.enable".into())
            }
            TailscaleError::Status { source } => match source.as_ref() {
                CommandError::Failed { .. } => Some(format!(
                    "is tailscaled running? Start it (`sudo systemctl start tailscaled`) and connect with `tailscale up`, or {TURN_OFF}"
                )),
                _ => None,
            },
            TailscaleError::NotRunning { state } => Some(match state.as_str() {
                "NeedsLogin" => format!("log in with `tailscale up`, or {TURN_OFF}"),
                "Stopped" => format!("connect with `tailscale up`, or {TURN_OFF}"),
                "NeedsMachineAuth" => {
                    "an admin of the tailnet must approve this machine in the admin console".into()
                }
                "Starting" => "tailscale is still starting: deploy again in a moment".into(),
                _ => format!(
                    "start tailscaled and connect with `tailscale up`, or {TURN_OFF}"
                ),
            }),
            TailscaleError::UnknownPeer { .. } => Some(
                "with Tailscale on, targetHost is a MagicDNS name (`web1` or `web1.tailnet.ts.net`), a Tailscale IP or `tag:NAME`; `tailscale status` lists the peers"
                    .into(),
            ),
            TailscaleError::UnknownTag { .. } => Some(
                "tag the host (`tailscale up --advertise-tags=tag:NAME` on it, allowed by the tailnet's ACLs), or set targetHost to its name"
                    .into(),
            ),
            TailscaleError::Ambiguous { .. } => Some(
                "targetHost must pick exactly one peer: give the node its full MagicDNS name or its Tailscale IP"
                    .into(),
            ),
            TailscaleError::Offline { .. } => Some(
                "bring the host back onto the tailnet (`tailscale up` on it), or set berth.deployment.tailscale.checkOnline = false to try anyway"
                    .into(),
            ),
            TailscaleError::NoIpv4 { .. } => Some(format!(
                "berth connects to a peer's Tailscale IPv4 address: allow IPv4 in the tailnet, or {TURN_OFF} and set targetHost yourself"
            )),
            // The renderer sees the source as a `Box`, which it cannot
            // downcast: the node's error speaks for it.
            TailscaleError::Node { source, .. } => source.hint(),
            TailscaleError::Unreadable { .. } => None,
        }
    }

    /// A configuration or environment error found before anything was built
    /// or changed (exit 2). Only output berth cannot read is not.
    pub fn is_usage(&self) -> bool {
        match self {
            TailscaleError::Unreadable { .. } => false,
            TailscaleError::Node { source, .. } => source.is_usage(),
            _ => true,
        }
    }
}

/// `tailscale status --json`: the tailnet as this machine's tailscaled sees
/// it.
pub fn status_cmd() -> Cmd {
    Cmd::new("tailscale").args(["status", "--json"])
}

/// What berth reads of `tailscale status --json`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    #[serde(default, deserialize_with = "nullable")]
    backend_state: String,
    /// Deprecated by Tailscale in favour of `CurrentTailnet.MagicDNSSuffix`,
    /// but the only one older versions print.
    #[serde(rename = "MagicDNSSuffix", default, deserialize_with = "nullable")]
    magic_dns_suffix: String,
    #[serde(default, deserialize_with = "nullable")]
    current_tailnet: Option<Tailnet>,
    #[serde(rename = "Self", default, deserialize_with = "nullable")]
    self_: Option<Peer>,
    #[serde(default, deserialize_with = "nullable")]
    peer: BTreeMap<String, Option<Peer>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tailnet {
    #[serde(rename = "MagicDNSSuffix", default, deserialize_with = "nullable")]
    magic_dns_suffix: String,
}

/// One node of the tailnet, `Self` or a peer (Tailscale's `PeerStatus`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Peer {
    #[serde(default, deserialize_with = "nullable")]
    host_name: String,
    /// `host.<MagicDNSSuffix>.`, with the trailing dot.
    #[serde(rename = "DNSName", default, deserialize_with = "nullable")]
    dns_name: String,
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "nullable")]
    tailscale_ips: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    online: bool,
    /// ACL tags, `tag:NAME`; absent when untagged.
    #[serde(default, deserialize_with = "nullable")]
    tags: Vec<String>,
    /// RFC 3339; Go's zero time (`0001-01-01T00:00:00Z`) when never seen or
    /// online.
    #[serde(default, deserialize_with = "nullable")]
    last_seen: String,
}

/// Go writes nil slices, maps and pointers as `null`: read them as empty.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Where a node's `targetHost` led.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    /// The peer's first Tailscale IPv4 address: what berth connects to.
    pub address: String,
    /// The peer's MagicDNS name, without the trailing dot.
    pub dns_name: String,
    pub online: bool,
}

/// Reads what [`status_cmd`] printed.
pub fn parse(json: &[u8]) -> Result<Status, TailscaleError> {
    serde_json::from_slice(json).map_err(|e| TailscaleError::Unreadable { why: e.to_string() })
}

/// Runs [`status_cmd`] here and reads it.
pub async fn status() -> Result<Status, TailscaleError> {
    let out = match process::output(&status_cmd(), Via::Local, &JobLog::new()).await {
        Err(CommandError::Spawn { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Err(TailscaleError::NotInstalled)
        }
        result => result.and_then(|out| out.check()),
    }
    .map_err(|source| TailscaleError::Status {
        source: Box::new(source),
    })?;
    parse(&out.stdout)
}

/// Resolves the `targetHost` of every node with `tailscale.enable` and
/// points the node at the peer's address, asking tailscaled once for all
/// of them. Nodes without Tailscale are left alone, and nothing runs when
/// there are none.
pub async fn resolve_nodes(nodes: &mut [NodeMeta], printer: Printer) -> Result<(), TailscaleError> {
    if !nodes.iter().any(|n| n.settings.tailscale.enable) {
        return Ok(());
    }
    let status = status().await?;
    // Once, not once per node: it is not about any one of them.
    status.check_running()?;
    for node in nodes.iter_mut().filter(|n| n.settings.tailscale.enable) {
        let target = node.settings.target_host(&node.name).to_owned();
        let resolved = status
            .resolve(&target, node.settings.tailscale.check_online)
            .map_err(|source| TailscaleError::Node {
                node: node.name.clone(),
                target: target.clone(),
                source: Box::new(source),
            })?;
        printer.event(
            "tailscale",
            &serde_json::json!({
                "node": node.name,
                "target": target,
                "dns_name": resolved.dns_name,
                "address": resolved.address,
                "online": resolved.online,
            }),
        );
        let offline = if resolved.online { "" } else { " (offline)" };
        printer.line(format!(
            "{}: tailscale {} -> {}{offline}",
            node.name, resolved.dns_name, resolved.address
        ));
        node.settings.target_host = Some(resolved.address);
    }
    Ok(())
}

impl Status {
    /// An error unless tailscaled is connected to its tailnet: in any other
    /// state its peers are stale or missing.
    pub fn check_running(&self) -> Result<(), TailscaleError> {
        if self.backend_state == "Running" {
            return Ok(());
        }
        let state = match self.backend_state.as_str() {
            "" => "NoState",
            state => state,
        };
        Err(TailscaleError::NotRunning {
            state: state.to_owned(),
        })
    }

    /// The peer `target` names, as MagicDNS would resolve it: a short name
    /// (`web1`), a full name with or without its trailing dot, a Tailscale
    /// IP, or `tag:NAME` for the one peer carrying that tag. This machine
    /// (`Self`) counts as a peer. With `check_online`, an offline peer is an
    /// error.
    pub fn resolve(&self, target: &str, check_online: bool) -> Result<Resolved, TailscaleError> {
        self.check_running()?;
        let peer = self.find(target)?;
        let dns_name = peer.name();
        let online = peer.online;
        if check_online && !online {
            let last_seen = match peer.last_seen.as_str() {
                "" | "0001-01-01T00:00:00Z" => "never".to_owned(),
                time => time.to_owned(),
            };
            return Err(TailscaleError::Offline {
                peer: dns_name,
                last_seen,
            });
        }
        let ipv4 = peer
            .tailscale_ips
            .iter()
            .find(|ip| matches!(ip.parse::<IpAddr>(), Ok(IpAddr::V4(_))));
        let Some(address) = ipv4 else {
            return Err(TailscaleError::NoIpv4 {
                peer: dns_name,
                addresses: list_or_none(&peer.tailscale_ips),
            });
        };
        Ok(Resolved {
            address: address.clone(),
            dns_name,
            online,
        })
    }

    fn suffix(&self) -> &str {
        let suffix = match &self.current_tailnet {
            Some(tailnet) if !tailnet.magic_dns_suffix.is_empty() => &tailnet.magic_dns_suffix,
            _ => &self.magic_dns_suffix,
        };
        suffix.trim_matches('.')
    }

    /// `Self` (always online: it is this machine, and tailscaled runs) and
    /// every peer, in name order so messages do not depend on node keys.
    fn nodes(&self) -> Vec<Peer> {
        let this = self.self_.iter().cloned().map(|mut p| {
            p.online = true;
            p
        });
        let mut all: Vec<Peer> = this.chain(self.peer.values().flatten().cloned()).collect();
        all.sort_by_key(Peer::name);
        all
    }

    fn find(&self, target: &str) -> Result<Peer, TailscaleError> {
        let nodes = self.nodes();
        if target.starts_with("tag:") {
            let tagged: Vec<&Peer> = nodes
                .iter()
                .filter(|p| p.tags.iter().any(|t| t == target))
                .collect();
            return match tagged[..] {
                [one] => Ok(one.clone()),
                [] => {
                    let mut known: Vec<&str> = nodes
                        .iter()
                        .flat_map(|p| &p.tags)
                        .map(String::as_str)
                        .collect();
                    known.sort_unstable();
                    known.dedup();
                    Err(TailscaleError::UnknownTag {
                        tag: target.to_owned(),
                        known: list_or_none(&known),
                    })
                }
                _ => Err(self.ambiguous(target, &tagged)),
            };
        }
        let matches: Vec<&Peer> = match target.parse::<IpAddr>() {
            Ok(ip) => nodes
                .iter()
                .filter(|p| p.tailscale_ips.iter().any(|a| a.parse() == Ok(ip)))
                .collect(),
            Err(_) => {
                let want = target.trim_end_matches('.').to_ascii_lowercase();
                let full: Vec<&Peer> = nodes.iter().filter(|p| p.name() == want).collect();
                if full.is_empty() {
                    self.by_short_name(&nodes, &want)
                } else {
                    full
                }
            }
        };
        match matches[..] {
            [one] => Ok(one.clone()),
            [] => Err(self.unknown(target, &nodes)),
            _ => Err(self.ambiguous(target, &matches)),
        }
    }

    /// The peers whose first label is `short`. A name in this tailnet wins
    /// over a same-named node shared in from another, as MagicDNS's search
    /// domain makes it.
    fn by_short_name<'a>(&self, nodes: &'a [Peer], short: &str) -> Vec<&'a Peer> {
        let all: Vec<&Peer> = nodes
            .iter()
            .filter(|p| p.name().split('.').next() == Some(short))
            .collect();
        let suffix = self.suffix();
        let ours: Vec<&Peer> = all
            .iter()
            .copied()
            .filter(|p| !suffix.is_empty() && p.name() == format!("{short}.{suffix}"))
            .collect();
        if ours.is_empty() {
            all
        } else {
            ours
        }
    }

    fn unknown(&self, target: &str, nodes: &[Peer]) -> TailscaleError {
        let names: Vec<String> = nodes.iter().map(|p| self.short(p)).collect();
        let mut known = list_or_none(&names[..names.len().min(KNOWN_SHOWN)]);
        if names.len() > KNOWN_SHOWN {
            known.push_str(&format!(" and {} more", names.len() - KNOWN_SHOWN));
        }
        TailscaleError::UnknownPeer {
            target: target.to_owned(),
            known,
        }
    }

    fn ambiguous(&self, target: &str, peers: &[&Peer]) -> TailscaleError {
        TailscaleError::Ambiguous {
            target: target.to_owned(),
            peers: peers.iter().map(|p| p.name()).collect(),
        }
    }

    /// A peer's name as `tailscale status` shows it: without this tailnet's
    /// suffix.
    fn short(&self, peer: &Peer) -> String {
        let name = peer.name();
        let suffix = self.suffix();
        match name.strip_suffix(suffix).and_then(|n| n.strip_suffix('.')) {
            Some(short) if !suffix.is_empty() && !short.is_empty() => short.to_owned(),
            _ => name,
        }
    }
}

impl Peer {
    /// The MagicDNS name, lowercase, without its trailing dot; the host name
    /// when there is none.
    fn name(&self) -> String {
        let dns = self.dns_name.trim_end_matches('.');
        if dns.is_empty() {
            self.host_name.to_ascii_lowercase()
        } else {
            dns.to_ascii_lowercase()
        }
    }
}

fn list_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `tailscale status --json` prints (1.6x–1.9x), trimmed of
    /// fields berth does not read only where they are long; values invented.
    const RUNNING: &str = r#"{
      "Version": "1.76.6-t1f1a0f5a8-g4e2c1d3e1",
      "TUN": true,
      "BackendState": "Running",
      "HaveNodeKey": true,
      "AuthURL": "",
      "TailscaleIPs": ["100.101.1.1", "fd7a:115c:a1e0::1"],
      "Self": {
        "ID": "nSelf1CNTRL",
        "PublicKey": "nodekey:0000000000000000000000000000000000000000000000000000000000000001",
        "HostName": "deployer",
        "DNSName": "deployer.tailnet-x.ts.net.",
        "OS": "linux",
        "UserID": 1234,
        "TailscaleIPs": ["100.101.1.1", "fd7a:115c:a1e0::1"],
        "Addrs": ["192.0.2.10:41641"],
        "CurAddr": "",
        "Relay": "fra",
        "RxBytes": 0,
        "TxBytes": 0,
        "Created": "2024-01-10T09:00:00Z",
        "LastWrite": "0001-01-01T00:00:00Z",
        "LastSeen": "0001-01-01T00:00:00Z",
        "LastHandshake": "0001-01-01T00:00:00Z",
        "Online": true,
        "ExitNode": false,
        "ExitNodeOption": false,
        "Active": false,
        "PeerAPIURL": ["http://100.101.1.1:34567"],
        "InNetworkMap": true,
        "InMagicSock": false,
        "InEngine": false
      },
      "Health": [],
      "MagicDNSSuffix": "tailnet-x.ts.net",
      "CurrentTailnet": {
        "Name": "ops@example.com",
        "MagicDNSSuffix": "tailnet-x.ts.net",
        "MagicDNSEnabled": true
      },
      "CertDomains": ["deployer.tailnet-x.ts.net"],
      "Peer": {
        "nodekey:aa00000000000000000000000000000000000000000000000000000000000002": {
          "ID": "nWeb1CNTRL",
          "PublicKey": "nodekey:aa00000000000000000000000000000000000000000000000000000000000002",
          "HostName": "web1",
          "DNSName": "web1.tailnet-x.ts.net.",
          "OS": "linux",
          "UserID": 1234,
          "TailscaleIPs": ["100.64.0.5", "fd7a:115c:a1e0::5"],
          "AllowedIPs": ["100.64.0.5/32", "fd7a:115c:a1e0::5/128"],
          "Tags": ["tag:web", "tag:prod"],
          "Addrs": ["198.51.100.5:41641"],
          "CurAddr": "198.51.100.5:41641",
          "Relay": "fra",
          "RxBytes": 1024,
          "TxBytes": 2048,
          "Created": "2024-02-01T12:00:00Z",
          "LastWrite": "2024-05-01T10:00:00Z",
          "LastSeen": "0001-01-01T00:00:00Z",
          "LastHandshake": "2024-05-01T10:00:00Z",
          "Online": true,
          "ExitNode": false,
          "ExitNodeOption": false,
          "Active": true,
          "PeerAPIURL": ["http://100.64.0.5:45678"],
          "InNetworkMap": true,
          "InMagicSock": true,
          "InEngine": true
        },
        "nodekey:bb00000000000000000000000000000000000000000000000000000000000003": {
          "ID": "nWeb2CNTRL",
          "PublicKey": "nodekey:bb00000000000000000000000000000000000000000000000000000000000003",
          "HostName": "web2",
          "DNSName": "web2.tailnet-x.ts.net.",
          "OS": "linux",
          "UserID": 1234,
          "TailscaleIPs": ["100.64.0.6", "fd7a:115c:a1e0::6"],
          "Tags": ["tag:web"],
          "Created": "2024-02-01T12:00:00Z",
          "LastSeen": "2024-04-28T17:42:10.5Z",
          "Online": false,
          "Active": false,
          "InNetworkMap": true,
          "InMagicSock": true,
          "InEngine": false
        },
        "nodekey:cc00000000000000000000000000000000000000000000000000000000000004": {
          "ID": "nDb1CNTRL",
          "PublicKey": "nodekey:cc00000000000000000000000000000000000000000000000000000000000004",
          "HostName": "db1",
          "DNSName": "db1.tailnet-x.ts.net.",
          "OS": "linux",
          "UserID": 1234,
          "TailscaleIPs": ["100.64.0.7", "fd7a:115c:a1e0::7"],
          "Tags": ["tag:db"],
          "LastSeen": "0001-01-01T00:00:00Z",
          "Online": true
        },
        "nodekey:dd00000000000000000000000000000000000000000000000000000000000005": {
          "ID": "nPhoneCNTRL",
          "PublicKey": "nodekey:dd00000000000000000000000000000000000000000000000000000000000005",
          "HostName": "Pixel 8",
          "DNSName": "pixel-8.tailnet-x.ts.net.",
          "OS": "android",
          "UserID": 1234,
          "TailscaleIPs": ["100.64.0.9", "fd7a:115c:a1e0::9"],
          "LastSeen": "0001-01-01T00:00:00Z",
          "Online": false
        }
      },
      "User": {
        "1234": { "ID": 1234, "LoginName": "ops@example.com", "DisplayName": "Ops" }
      },
      "ClientVersion": null
    }"#;

    fn running() -> Status {
        parse(RUNNING.as_bytes()).unwrap()
    }

    fn web1() -> Resolved {
        Resolved {
            address: "100.64.0.5".into(),
            dns_name: "web1.tailnet-x.ts.net".into(),
            online: true,
        }
    }

    #[test]
    fn status_cmd_is_status_json() {
        assert_eq!(status_cmd().argv(), ["tailscale", "status", "--json"]);
    }

    #[test]
    fn short_name_resolves_to_the_first_ipv4() {
        assert_eq!(running().resolve("web1", true).unwrap(), web1());
        assert_eq!(running().resolve("WEB1", true).unwrap(), web1());
    }

    #[test]
    fn full_name_with_or_without_the_trailing_dot() {
        let status = running();
        assert_eq!(
            status.resolve("web1.tailnet-x.ts.net.", true).unwrap(),
            web1()
        );
        assert_eq!(
            status.resolve("web1.tailnet-x.ts.net", true).unwrap(),
            web1()
        );
    }

    #[test]
    fn tailscale_ips_v4_and_v6() {
        let status = running();
        assert_eq!(status.resolve("100.64.0.5", true).unwrap(), web1());
        // Written differently from how tailscale prints it, still the same
        // address; the result is the IPv4 one.
        assert_eq!(status.resolve("fd7a:115c:a1e0:0::5", true).unwrap(), web1());
    }

    #[test]
    fn tag_picks_the_one_peer_carrying_it() {
        let resolved = running().resolve("tag:db", true).unwrap();
        assert_eq!(resolved.address, "100.64.0.7");
        assert_eq!(resolved.dns_name, "db1.tailnet-x.ts.net");
        assert_eq!(running().resolve("tag:prod", true).unwrap(), web1());
    }

    #[test]
    fn ambiguous_tag_names_the_peers() {
        let err = running().resolve("tag:web", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`tag:web` matches 2 tailscale peers: web1.tailnet-x.ts.net, web2.tailnet-x.ts.net"
        );
        assert!(err.is_usage());
        assert!(err.hint().unwrap().contains("exactly one peer"));
    }

    #[test]
    fn unknown_tag_lists_the_tags() {
        let err = running().resolve("tag:cache", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no tailscale peer carries `tag:cache` (tags in the tailnet: tag:db, tag:prod, tag:web)"
        );
        assert!(err.is_usage());
    }

    #[test]
    fn offline_peer_is_refused_with_when_it_was_last_seen() {
        let err = running().resolve("web2", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tailscale peer web2.tailnet-x.ts.net is offline (last seen 2024-04-28T17:42:10.5Z)"
        );
        assert!(err.is_usage());
        assert!(err.hint().unwrap().contains("checkOnline = false"));
        // A peer never seen has Go's zero time.
        let err = running().resolve("pixel-8", true).unwrap_err();
        assert!(
            err.to_string().ends_with("is offline (last seen never)"),
            "{err}"
        );
    }

    #[test]
    fn offline_peer_resolves_without_the_check() {
        let resolved = running().resolve("web2", false).unwrap();
        assert_eq!(
            resolved,
            Resolved {
                address: "100.64.0.6".into(),
                dns_name: "web2.tailnet-x.ts.net".into(),
                online: false,
            }
        );
    }

    #[test]
    fn self_is_a_target() {
        let resolved = running().resolve("deployer", true).unwrap();
        assert_eq!(resolved.address, "100.101.1.1");
        assert!(resolved.online);
        assert_eq!(running().resolve("100.101.1.1", true).unwrap(), resolved);
    }

    #[test]
    fn unknown_peer_lists_the_known_ones() {
        let err = running().resolve("web9", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no tailscale peer is `web9` (peers: db1, deployer, pixel-8, web1, web2)"
        );
        assert!(err.is_usage());
        assert!(err.hint().unwrap().contains("tag:NAME"));
        // Another tailnet's name, or an address outside the tailnet.
        assert!(running().resolve("web1.other.ts.net", true).is_err());
        assert!(running().resolve("10.0.0.5", true).is_err());
    }

    #[test]
    fn backend_not_running_is_a_usage_error_with_a_hint() {
        let json = r#"{
          "Version": "1.76.6-t1f1a0f5a8-g4e2c1d3e1",
          "TUN": true,
          "BackendState": "NeedsLogin",
          "AuthURL": "",
          "TailscaleIPs": null,
          "Self": {
            "ID": "",
            "PublicKey": "nodekey:0000000000000000000000000000000000000000000000000000000000000000",
            "HostName": "deployer",
            "DNSName": "",
            "OS": "",
            "UserID": 0,
            "TailscaleIPs": null,
            "Online": false,
            "LastSeen": "0001-01-01T00:00:00Z"
          },
          "Health": ["not logged in"],
          "MagicDNSSuffix": "",
          "CurrentTailnet": null,
          "CertDomains": null,
          "Peer": null,
          "User": null,
          "ClientVersion": null
        }"#;
        let status = parse(json.as_bytes()).unwrap();
        let err = status.resolve("web1", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tailscale is not connected: BackendState=NeedsLogin"
        );
        assert!(err.is_usage());
        assert!(err.hint().unwrap().contains("tailscale up"));
        let stopped = parse(br#"{"BackendState": "Stopped"}"#).unwrap();
        assert!(matches!(
            stopped.check_running(),
            Err(TailscaleError::NotRunning { state }) if state == "Stopped"
        ));
        let empty = parse(b"{}").unwrap();
        assert_eq!(
            empty.check_running().unwrap_err().to_string(),
            "tailscale is not connected: BackendState=NoState"
        );
    }

    #[test]
    fn short_name_prefers_this_tailnet_over_a_shared_in_node() {
        let json = r#"{
          "BackendState": "Running",
          "MagicDNSSuffix": "tailnet-x.ts.net",
          "Peer": {
            "nodekey:01": { "DNSName": "web1.tailnet-x.ts.net.", "TailscaleIPs": ["100.64.0.5"], "Online": true },
            "nodekey:02": { "DNSName": "web1.friend.ts.net.", "TailscaleIPs": ["100.70.0.5"], "Online": true },
            "nodekey:03": { "DNSName": "api.a.ts.net.", "TailscaleIPs": ["100.70.0.8"], "Online": true },
            "nodekey:04": { "DNSName": "api.b.ts.net.", "TailscaleIPs": ["100.70.0.9"], "Online": true }
          }
        }"#;
        let status = parse(json.as_bytes()).unwrap();
        assert_eq!(status.resolve("web1", true).unwrap().address, "100.64.0.5");
        assert_eq!(
            status.resolve("web1.friend.ts.net", true).unwrap().address,
            "100.70.0.5"
        );
        assert!(matches!(
            status.resolve("api", true),
            Err(TailscaleError::Ambiguous { peers, .. }) if peers == ["api.a.ts.net", "api.b.ts.net"]
        ));
    }

    #[test]
    fn peer_without_ipv4_is_named() {
        let json = r#"{
          "BackendState": "Running",
          "Peer": { "nodekey:01": { "DNSName": "v6.t.ts.net.", "TailscaleIPs": ["fd7a:115c:a1e0::5"], "Online": true } }
        }"#;
        let err = parse(json.as_bytes())
            .unwrap()
            .resolve("v6", true)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tailscale peer v6.t.ts.net has no Tailscale IPv4 address (it has fd7a:115c:a1e0::5)"
        );
    }

    #[test]
    fn unreadable_output_is_not_a_usage_error() {
        let err = parse(b"Tailscale is stopped.").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("`tailscale status --json` printed what berth cannot read:"));
        assert!(!err.is_usage());
        assert!(parse(br#"{"Peer": {"nodekey:01": {"TailscaleIPs": "100.64.0.5"}}}"#).is_err());
    }

    #[test]
    fn node_errors_carry_the_inner_verdict() {
        let err = TailscaleError::Node {
            node: NodeName::new("web2").unwrap(),
            target: "web2".into(),
            source: Box::new(running().resolve("web2", true).unwrap_err()),
        };
        assert_eq!(
            err.to_string(),
            "node web2: could not resolve targetHost `web2` through Tailscale"
        );
        assert!(err.is_usage());
        // What the renderer shows: the inner verdict among the causes, and
        // its hint once, not once more for the node's error around it.
        let anyhow = anyhow::Error::new(err);
        let text: Vec<String> = anyhow.chain().map(|c| c.to_string()).collect();
        assert!(
            text.iter()
                .any(|c| c.starts_with("tailscale peer web2.tailnet-x.ts.net is offline")),
            "{text:?}"
        );
        let hints: Vec<String> = anyhow
            .chain()
            .filter_map(|c| c.downcast_ref::<TailscaleError>())
            .filter_map(|e| e.hint())
            .collect();
        assert_eq!(
            hints
                .iter()
                .filter(|h| h.starts_with("bring the host back"))
                .count(),
            1,
            "{hints:?}"
        );
    }

    #[test]
    fn not_installed_hint() {
        let err = TailscaleError::NotInstalled;
        assert!(err.is_usage());
        assert_eq!(
            err.hint().unwrap(),
            "install tailscale, or turn off berth.deployment.tailscale.enable"
        );
    }
}
