//! Every parser of text from outside berth (flags, manifests, URLs) or from
//! another program (nix, systemctl, tailscale, GitHub, the agent) on any
//! input: a value or an error, never a panic. The properties of each
//! parser's accepted values live beside it; this sweep only feeds them
//! garbage. More cases: `PROPTEST_CASES=100000 cargo test --lib prop_`.

use std::str::FromStr;

use proptest::prelude::*;

use crate::testing::prop::{bytes, config, text};

/// Any JSON value, nested a few levels, with keys that parsers look for
/// among random ones: so a parser meets the shape it expects, with the
/// wrong types or values inside.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        proptest::sample::select(
            &[
                "name",
                "tags",
                "event",
                "outcome",
                "message",
                "result",
                "path",
                "references",
                "narSize",
                "drvPath",
                "out",
                "revision",
                "locked",
                "rev",
                "type",
                "narHash",
                "url",
                "original",
                "Peer",
                "Self",
                "Online",
                "DNSName",
                "HostName",
                "TailscaleIPs",
                "BackendState",
                "hasToplevel",
                "deployment",
                "targetHost",
                "status",
                "conclusion",
                "check_runs",
                "statuses",
                "state",
                "sha",
                "total_count",
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-z]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Raw bytes, or the bytes of a JSON value (one line, or a value per line
/// as NDJSON).
fn output() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(64),
        json().prop_map(|v| v.to_string().into_bytes()),
        proptest::collection::vec(json(), 0..4).prop_map(|vs| {
            vs.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes()
        }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn prop_text_parsers_never_panic(t in text()) {
        let _ = crate::flake::NodeName::new(t.as_str());
        let _ = crate::flake::FlakeRef::parse(&t);
        let _ = crate::flake::Selector::parse(&t);
        let _ = crate::flake::Revision::new(t.as_str());
        let _ = crate::app::manifest::ServiceName::new(t.as_str());
        let _ = crate::app::release::parse_rev(&t);
        let _ = crate::app::release::parse_name(&t);
        let _ = crate::app::changes::Filter::new(std::slice::from_ref(&t));
        let _ = crate::host::Destination::parse(&t);
        let _ = crate::nix::StorePath::new(t.as_str());
        let _ = crate::nix::diff::parse_drv_name(&t);
        let _ = crate::nix::dry_activate::parse(&t);
        let _ = crate::app::unit::parse_show(&t);
        let _ = crate::github::Repo::parse(&t);
        let _ = crate::github::Sha::parse(&t);
        let _ = crate::github::parse_secs(&t);
        let _ = crate::command::smoke::StatusMatch::parse(&t);
        let _ = crate::command::smoke::Expect::parse(&t);
        let _ = crate::command::smoke::BaseUrl::parse(&t);
        let _ = crate::state::Kind::from_str(&t);
        let _ = crate::state::Status::from_str(&t);
        let _ = crate::state::id::parse_id(&t);
    }

    #[test]
    fn prop_output_parsers_never_panic(out in output()) {
        let web1 = crate::flake::NodeName::new("web1").unwrap();
        let _ = crate::flake::parse_eval(&out, None);
        let _ = crate::flake::parse_eval(&out, Some(&web1));
        let _ = crate::flake::parse_drv_paths(&out, &[web1]);
        let drv = crate::nix::StorePath::new("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x.drv").unwrap();
        let _ = crate::flake::parse_realise(&out, &[drv]);
        let _ = crate::flake::parse_metadata(".", &out);
        let _ = crate::nix::diff::parse_path_info(&out);
        let _ = crate::host::tailscale::parse(&out);
        let _ = crate::agent::find_result(&out);
        let _ = crate::agent::find_events(&out, "phase");
    }
}
