//! Fan-out: when many hosts need the same signed closure, the deployer's
//! uplink carries it once. The first host to reach its copy gets it from
//! the deployer (the seed); every host that has it serves it to its peers
//! (`agent serve`, a binary cache of the signed paths), and the others
//! take it from those peers (`agent fetch`), each peer feeding a few hosts
//! at a time so the copies spread as a tree over the hosts' own links.
//!
//! Nothing here is trusted that a signature does not vouch for: a host's
//! Nix takes a path from a peer only when a key the host trusts signed it.
//! A host asks for every signed path of its closure (the signatures the
//! deployer reads for the activation anyway), so hosts whose systems
//! differ still share what they have in common; whatever its peers did
//! not give it (a path only it needs, a peer that died mid-copy: Nix tries
//! the next peer, then gives up on the path) the deployer copies after,
//! as without fan-out. Peers serve until every host is past its copy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::agent::{call, peer};
use crate::host::{Background, Host};
use crate::nix::keys::PublicKey;
use crate::nix::signatures::SignedPath;
use crate::nix::StorePath;
use crate::process::{CommandError, JobLog, Stream};

/// How many hosts take the closure from the deployer at once.
const SEEDS: usize = 1;
/// How many hosts one peer feeds at once: enough to keep its link busy,
/// few enough that the hosts it fed soon serve too.
const PER_PEER: usize = 3;
/// How long a peer's cache may take to start.
const SERVE_START: Duration = Duration::from_secs(20);
/// How often a waiting host looks again for a peer (one may have died).
const RECHECK: Duration = Duration::from_secs(1);

/// One deploy's fan-out, shared by its hosts.
pub struct FanOut {
    /// The deployer's public key, for hosts whose agent.json names none.
    key: PublicKey,
    state: Mutex<State>,
    changed: Notify,
    turn: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// Seeds copying from the deployer now.
    seeding: usize,
    peers: Vec<Peer>,
    /// Hosts not yet past their copy.
    remaining: usize,
}

struct Peer {
    url: String,
    node: String,
    /// Hosts fetching from it first now.
    feeding: usize,
    serving: Background,
}

/// What a host does next to get its closure.
enum Role {
    /// Copy from the deployer.
    Seed,
    /// Fetch from the peers at `urls`, the first one counted as feeding
    /// it; `from` names their nodes.
    Fetch { urls: Vec<String>, from: String },
}

/// A host's place in the fan-out until it is past its copy: dropping it
/// tells the peers one fewer host needs them; the last one stops them.
pub struct Ticket(Arc<FanOut>);

impl FanOut {
    /// A fan-out for `hosts` hosts, signed with the secret key whose public
    /// key is `key`; one ticket per host.
    pub fn tickets(key: PublicKey, hosts: usize) -> Vec<Ticket> {
        let fan = Arc::new(FanOut {
            key,
            state: Mutex::new(State {
                remaining: hosts,
                ..State::default()
            }),
            changed: Notify::new(),
            turn: AtomicUsize::new(0),
        });
        (0..hosts).map(|_| Ticket(fan.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn role(&self) -> Role {
        loop {
            let changed = self.changed.notified();
            {
                let mut state = self.lock();
                let peers = &mut state.peers;
                peers.retain(|p| p.serving.is_running());
                if !peers.is_empty() {
                    // The least busy peer first; the rest, from a turn
                    // that moves, as fallbacks.
                    let turn = self.turn.fetch_add(1, Ordering::Relaxed) % peers.len();
                    peers.rotate_left(turn);
                    peers.sort_by_key(|p| p.feeding);
                    if peers[0].feeding < PER_PEER {
                        peers[0].feeding += 1;
                        let names: Vec<&str> = peers.iter().map(|p| p.node.as_str()).collect();
                        return Role::Fetch {
                            urls: peers.iter().map(|p| p.url.clone()).collect(),
                            from: names.join(", "),
                        };
                    }
                } else if state.seeding < SEEDS {
                    state.seeding += 1;
                    return Role::Seed;
                }
            }
            let _ = tokio::time::timeout(RECHECK, changed).await;
        }
    }

    fn fed(&self, url: &str) {
        if let Some(p) = self.lock().peers.iter_mut().find(|p| p.url == url) {
            p.feeding = p.feeding.saturating_sub(1);
        }
        self.changed.notify_waiters();
    }

    /// Starts `node`'s host serving `toplevel` to its peers, unless no
    /// other host needs it any more; a host that cannot serve is only
    /// not a peer.
    async fn serve(&self, host: &dyn Host, agent: &str, node: &str, toplevel: &StorePath) {
        if self.lock().remaining <= 1 {
            return;
        }
        let log = JobLog::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Mutex::new(Some(tx));
        log.watch(move |stream, line| {
            let serving = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|v| stream == Stream::Stdout && v["event"] == peer::EVENT_SERVING)
                .and_then(|v| serde_json::from_value::<peer::Serving>(v).ok());
            if let Some(serving) = serving {
                if let Some(tx) = tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = tx.send(serving);
                }
            }
        });
        let Some(serving) = host.start(call::serve(agent, toplevel), log.clone()) else {
            return;
        };
        match tokio::time::timeout(SERVE_START, rx).await {
            Ok(Ok(started)) => {
                tracing::debug!(node, "serving {toplevel} at {}", started.url);
                let mut state = self.lock();
                if state.remaining > 0 {
                    state.peers.push(Peer {
                        url: started.url,
                        node: node.to_owned(),
                        feeding: 0,
                        serving,
                    });
                }
            }
            _ => tracing::warn!(
                node,
                "could not serve its closure to peers: {}",
                log.tail(5).join(" / ")
            ),
        }
        self.changed.notify_waiters();
    }
}

impl Ticket {
    /// Gets `toplevel`'s closure onto `node`'s `host`: what its peers have
    /// of its `signed` paths (the closure's, as this machine has them; a
    /// peer serves no other) from them, then the rest (all of it, for the
    /// seed) from here; then serves it to the hosts still waiting. `phase`
    /// tells the operator.
    pub async fn copy(
        &self,
        host: &dyn Host,
        agent: &str,
        node: &str,
        toplevel: &StorePath,
        signed: &[SignedPath],
        phase: &(dyn Fn(&str) + Sync),
    ) -> Result<(), CommandError> {
        let fan = &self.0;
        match fan.role().await {
            Role::Seed => {
                phase(&format!(
                    "copying {toplevel} (the hosts after this one take it from their peers)"
                ));
                let copied = host.copy_closure(std::slice::from_ref(toplevel)).await;
                if copied.is_ok() {
                    fan.serve(host, agent, node, toplevel).await;
                }
                fan.lock().seeding -= 1;
                fan.changed.notify_waiters();
                copied
            }
            Role::Fetch { urls, from } => {
                phase(&format!("taking {toplevel} from its peers ({from})"));
                let paths: Vec<StorePath> = signed.iter().map(|p| p.path.clone()).collect();
                let fetched = host
                    .run(&call::fetch(agent, &paths, &urls, Some(&fan.key)))
                    .await
                    .map(|out| {
                        crate::agent::find_events(&out.stdout, peer::EVENT_FETCHED)
                            .into_iter()
                            .find_map(|v| serde_json::from_value::<peer::Fetched>(v).ok())
                    });
                fan.fed(&urls[0]);
                // What the peers did not give (a path only this host
                // needs, a peer that died) comes from here; with all of
                // it there, the copy only checks.
                match fetched {
                    Ok(Some(f)) if f.missing == 0 => {}
                    Ok(Some(f)) => {
                        // One path missing is the host's own toplevel, as
                        // a rule: no need to say why.
                        let why = match &f.why {
                            Some(why) if f.missing > 1 => format!(" ({why})"),
                            _ => String::new(),
                        };
                        phase(&format!(
                            "copying the {} of {} paths its peers did not give{why}",
                            f.missing, f.paths
                        ))
                    }
                    Ok(None) => phase("copying: the agent did not say what it took from its peers"),
                    Err(err) => {
                        tracing::warn!(node, "taking {toplevel} from {from}: {err}");
                        phase(&format!("copying {toplevel}: taking it from {from} failed"));
                    }
                }
                host.copy_closure(std::slice::from_ref(toplevel)).await?;
                fan.serve(host, agent, node, toplevel).await;
                Ok(())
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.remaining -= 1;
        if state.remaining == 0 {
            // Dropped, each stops its peer's cache.
            state.peers.clear();
        }
        drop(state);
        self.0.changed.notify_waiters();
    }
}
