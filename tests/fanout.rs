//! Fan-out end to end, on a lab of four plain hosts behind a 40 Mbit/s
//! uplink with 1 Gbit/s links between them: systems that differ per host
//! but share a closure of 24 leaves. Signed, the closure crosses the
//! deployer's uplink about once and the other hosts take it from their
//! peers, each host checking signatures against the keys it trusts (h4's
//! agent.json names the signing key; h1–h3 have none and trust the
//! deployer's key, as a root deploy does). A host that trusts another key
//! takes nothing from its peers. Unsigned, every host copies from the
//! deployer. Needs root and the lab's packages (scripts/install-deps).

mod common;

use common::fanout::{self, FanFleet, CLOSURE_BYTES};
use common::fleet::generation;

/// Every host deployed, in `run`'s --json events.
fn assert_all_deployed(run: &common::Run, hosts: usize) {
    assert_eq!(run.code, 0, "{}", run.stderr);
    let results = run.events("host_result");
    assert_eq!(results.len(), hosts, "{}", run.stdout);
    for r in &results {
        assert_eq!(r["outcome"], "deployed", "{r}");
    }
}

#[test]
fn hosts_take_a_signed_closure_from_each_other() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let lab = fanout::lab("fanout", 4).await;
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = fanout::key(keys.path(), "fan-a");
        let (_, other) = fanout::key(keys.path(), "fan-b");
        let key = key.to_str().unwrap();
        let trust = |host: &str, public: &str| {
            let json =
                serde_json::json!({ "trustedPublicKeys": [public], "nixTrustedPublicKeys": [] });
            let file = lab.host(host).unwrap().etc_dir().join("agent.json");
            std::fs::write(file, json.to_string()).unwrap();
        };
        trust("h4", &public);
        let fleet = FanFleet::new("fanout", 4);

        // 1. Signed: one copy through the uplink, the rest from peers.
        let sent = fanout::uplink_sent(&lab);
        let run = fanout::deploy(&lab, &fleet, &["--sign-key", key]);
        let carried = fanout::uplink_sent(&lab) - sent;
        assert_all_deployed(&run, 4);
        let messages: Vec<(String, Vec<String>)> = (1..=4)
            .map(|i| (format!("fan{i}"), fanout::phases(&run, &format!("fan{i}"))))
            .collect();
        let seeds = messages
            .iter()
            .filter(|(_, m)| m.iter().any(|m| m.contains("take it from their peers")))
            .count();
        let fetchers = messages
            .iter()
            .filter(|(_, m)| m.iter().any(|m| m.contains("from its peers (fan")))
            .count();
        assert_eq!((seeds, fetchers), (1, 3), "{messages:#?}");
        // A fetching host's own toplevel is all its peers cannot give.
        let total = fanout::LEAVES + 1;
        let own = format!("copying the 1 of {total} paths its peers did not give");
        let own_only = messages
            .iter()
            .filter(|(_, m)| m.iter().any(|m| m.starts_with(&own)))
            .count();
        assert_eq!(own_only, 3, "{messages:#?}");
        assert!(
            carried > CLOSURE_BYTES * 9 / 10 && carried < CLOSURE_BYTES * 18 / 10,
            "the uplink carried {carried} bytes for a closure of {CLOSURE_BYTES}"
        );
        for i in 1..=4 {
            let (link, path) = generation(&lab, &format!("h{i}")).await;
            assert_eq!(link, "system-1-link");
            assert!(path.ends_with(&format!("-nixos-system-fan{i}-1")), "{path}");
        }

        // 2. h4 now trusts only another key: it takes nothing from its
        // peers (every path is copied to it, and its agent refuses the
        // system), while the others still share.
        trust("h4", &other);
        fleet.salt("2");
        let run = fanout::deploy(&lab, &fleet, &["--sign-key", key]);
        assert_eq!(run.code, 1, "{}", run.stderr);
        let h4 = fanout::phases(&run, "fan4");
        let took_nothing = format!("copying the {total} of {total} paths its peers did not give");
        let seeded = h4.iter().any(|m| m.contains("take it from their peers"));
        assert!(
            seeded || h4.iter().any(|m| m.contains(&took_nothing)),
            "h4 took paths from its peers that no key it trusts signed: {h4:#?}"
        );
        let results = run.events("host_result");
        for r in &results {
            let expected = if r["node"] == "fan4" {
                "failed"
            } else {
                "deployed"
            };
            assert_eq!(r["outcome"], expected, "{r}");
        }
        assert!(
            run.stderr
                .contains("not signed by a key this host trusts (fan-b)"),
            "{}",
            run.stderr
        );
        trust("h4", &public);

        // 3. Unsigned: no fan-out, every host copies from here.
        fleet.salt("3");
        let sent = fanout::uplink_sent(&lab);
        let run = fanout::deploy(&lab, &fleet, &[]);
        let carried = fanout::uplink_sent(&lab) - sent;
        assert_eq!(run.code, 1, "h4 requires signatures: {}", run.stderr);
        assert!(
            !run.stdout.contains("from its peers"),
            "unsigned systems fanned out: {}",
            run.stdout
        );
        assert!(
            carried > CLOSURE_BYTES * 35 / 10,
            "the uplink carried {carried} bytes for 4 copies of {CLOSURE_BYTES}"
        );

        // 4. The same systems again, signed: h1–h3 already run them, and
        // h4, refused in 3, now takes its system (its paths arrived
        // unsigned; the signatures reach them with the activation).
        let run = fanout::deploy(&lab, &fleet, &["--sign-key", key]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let results = run.events("host_result");
        assert_eq!(results.len(), 4);
        for r in &results {
            let expected = if r["node"] == "fan4" {
                "deployed"
            } else {
                "unchanged"
            };
            assert_eq!(r["outcome"], expected, "{r}");
        }
        lab.down().await.unwrap();
    });
}
