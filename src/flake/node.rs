//! [`NodeName`] and [`FlakeRef`]: how a user names a fleet flake and its
//! nodes, checked once so the rest of berth can splice them safely.

use std::fmt;
use std::str::FromStr;

use super::FlakeError;

/// What a node name may hold, for error messages.
pub(crate) const NODE_NAME_RULE: &str =
    "a node name is letters, digits, `_`, `-` and `.`, and starts with a letter, digit or `_`";

/// The name of a node, `nixosConfigurations.<node>`.
///
/// The rule keeps it safe to splice inside double quotes into a Nix
/// expression (no `"`, `\` or `${`), to use as an SSH host name when
/// `targetHost` is unset (no leading `-` that ssh would read as an option),
/// and to tell apart from selector syntax (no `,`, `*`, `?` or `@`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    pub fn new(text: impl Into<String>) -> Result<Self, FlakeError> {
        let text = text.into();
        match why_invalid(&text) {
            None => Ok(NodeName(text)),
            Some(why) => Err(FlakeError::InvalidNodeName { text, why }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A node name as clap reads it (the agent's `--node`), checked.
pub fn parse_node_name(text: &str) -> Result<String, FlakeError> {
    NodeName::new(text).map(|n| n.0)
}

/// Why `text` is not a node name, or `None` if it is one.
pub(crate) fn why_invalid(text: &str) -> Option<String> {
    let Some(first) = text.chars().next() else {
        return Some("it is empty".into());
    };
    if let Some(bad) = text
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
    {
        return Some(format!("it holds {}", crate::error::character(bad)));
    }
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Some(format!("it starts with {}", crate::error::character(first)));
    }
    None
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = FlakeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        NodeName::new(text)
    }
}

impl serde::Serialize for NodeName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for NodeName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        NodeName::new(text).map_err(serde::de::Error::custom)
    }
}

/// `FLAKE[#NODE]`, as typed on the command line: `.`, `./fleet#web1`,
/// `path:/srv/fleet#db`, `github:owner/repo#web1`, or `#web1` for the flake
/// in the current directory. Made by [`FlakeRef::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlakeRef {
    /// The flake, as nix reads it (`.` when the text began with `#`).
    pub flake: String,
    /// The node after `#`, if one was named.
    pub node: Option<NodeName>,
}

impl FlakeRef {
    pub fn parse(text: &str) -> Result<Self, FlakeError> {
        let invalid = |why: &'static str| FlakeError::InvalidFlakeRef {
            text: text.to_owned(),
            why,
        };
        // A URL's fragment starts at its first `#`.
        let (flake, node) = match text.split_once('#') {
            Some((flake, node)) => (flake, Some(node)),
            None => (text, None),
        };
        let flake = if flake.is_empty() { "." } else { flake };
        if flake.starts_with('-') {
            return Err(invalid(
                "it starts with `-`, which nix would read as an option",
            ));
        }
        let node = match node {
            None => None,
            Some("") => {
                return Err(invalid(
                    "nothing follows `#`: write FLAKE#NODE, or FLAKE for every node",
                ))
            }
            Some(node) => Some(NodeName::new(node)?),
        };
        Ok(FlakeRef {
            flake: flake.to_owned(),
            node,
        })
    }
}

impl fmt::Display for FlakeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.flake)?;
        match &self.node {
            Some(node) => write!(f, "#{node}"),
            None => Ok(()),
        }
    }
}

impl FromStr for FlakeRef {
    type Err = FlakeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FlakeRef::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_that_are_accepted() {
        for good in ["web1", "db-2", "web_1", "host.example.org", "_x", "1host"] {
            let name = NodeName::new(good).unwrap();
            assert_eq!(name.as_str(), good);
            assert_eq!(name.to_string(), good);
            assert_eq!(AsRef::<str>::as_ref(&name), good);
        }
    }

    #[test]
    fn node_names_that_are_rejected() {
        for bad in [
            "",
            "-oProxyCommand",
            ".hidden",
            "web 1",
            "a\"b",
            "a${b}",
            "a\\b",
            "web*",
            "web?",
            "@web",
            "a,b",
            "a#b",
            "wéb",
        ] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn node_name_error_names_the_text_and_the_rule() {
        assert_eq!(
            NodeName::new("web 1").unwrap_err().to_string(),
            "`web 1` is not a valid node name: it holds ' ' \
             (a node name is letters, digits, `_`, `-` and `.`, and starts with a letter, digit or `_`)"
        );
        assert!(NodeName::new("-x")
            .unwrap_err()
            .to_string()
            .contains("it starts with '-'"));
        assert!(NodeName::new("")
            .unwrap_err()
            .to_string()
            .contains("it is empty"));
    }

    #[test]
    fn node_name_serde_round_trip_validates() {
        let name = NodeName::new("web1").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"web1\"");
        assert_eq!(serde_json::from_str::<NodeName>("\"web1\"").unwrap(), name);
        assert!(serde_json::from_str::<NodeName>("\"a b\"").is_err());
    }

    #[test]
    fn flake_refs_split_at_the_first_hash() {
        let cases = [
            (".", ".", None),
            ("./fleet#web1", "./fleet", Some("web1")),
            ("path:/x#db", "path:/x", Some("db")),
            ("github:o/r#n", "github:o/r", Some("n")),
            ("github:o/r?ref=main#n", "github:o/r?ref=main", Some("n")),
            ("#web1", ".", Some("web1")),
            ("../fleet", "../fleet", None),
            (
                "/srv/fleet#host.example.org",
                "/srv/fleet",
                Some("host.example.org"),
            ),
        ];
        for (text, flake, node) in cases {
            let r: FlakeRef = text.parse().unwrap();
            assert_eq!(r.flake, flake, "{text}");
            assert_eq!(r.node.as_ref().map(NodeName::as_str), node, "{text}");
        }
        assert_eq!(FlakeRef::parse("#web1").unwrap().to_string(), ".#web1");
        assert_eq!(FlakeRef::parse("./f").unwrap().to_string(), "./f");
    }

    #[test]
    fn flake_refs_that_are_rejected() {
        assert_eq!(
            FlakeRef::parse(".#").unwrap_err().to_string(),
            "`.#` is not a valid flake reference: nothing follows `#`: write FLAKE#NODE, or FLAKE for every node"
        );
        assert!(FlakeRef::parse("--impure#x")
            .unwrap_err()
            .to_string()
            .contains("nix would read as an option"));
        assert!(matches!(
            FlakeRef::parse(".#a\"b"),
            Err(FlakeError::InvalidNodeName { .. })
        ));
        assert!(matches!(
            FlakeRef::parse(".#a#b"),
            Err(FlakeError::InvalidNodeName { .. })
        ));
    }

    #[test]
    fn hostile_node_names_are_refused_with_the_rule() {
        for (text, why) in [
            ("$(touch /tmp/x)", "it holds '$'"),
            ("`id`", "it holds '`'"),
            ("a'b", "it holds '\\''"),
            ("a\nb", "it holds '\\n'"),
            ("..", "it starts with '.'"),
            ("a/b", "it holds '/'"),
            ("-x", "it starts with '-'"),
            ("wеb1", "it holds 'е' (U+0435)"), // a Cyrillic е
        ] {
            let err = NodeName::new(text).unwrap_err().to_string();
            let shown = crate::error::printable(text);
            assert_eq!(
                err,
                format!("`{shown}` is not a valid node name: {why} ({NODE_NAME_RULE})")
            );
            let err = FlakeRef::parse(&format!(".#{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(512))]

        /// An accepted node name is safe inside a Nix string, as a path
        /// component, as a shell word and as an SSH host; rejected text
        /// gets an error that names it and the rule.
        #[test]
        fn prop_node_names_are_safe_or_refused(text in crate::testing::prop::text()) {
            match NodeName::new(text.clone()) {
                Ok(name) => {
                    let s = name.as_str();
                    proptest::prop_assert!(!s.contains(['"', '\\', '$', '/', ',', '*', '?', '@', '#']));
                    proptest::prop_assert!(!s.starts_with(['-', '.']));
                    proptest::prop_assert_eq!(crate::process::quote(std::ffi::OsStr::new(s)), std::ffi::OsStr::new(s));
                    proptest::prop_assert!(crate::host::Destination::parse(s).is_ok());
                    proptest::prop_assert_eq!(name.to_string().parse::<NodeName>().unwrap(), name.clone());
                }
                Err(e) => {
                    let message = e.to_string();
                    proptest::prop_assert!(message.contains(&crate::error::printable(&text)));
                    proptest::prop_assert!(message.contains(NODE_NAME_RULE));
                    proptest::prop_assert!(!message.contains(|c: char| c.is_control()));
                }
            }
        }

        /// `FLAKE#NODE`: never a panic; an accepted one reads back as
        /// itself from what it shows, and its flake is never an option.
        #[test]
        fn prop_flake_refs_round_trip(text in crate::testing::prop::text()) {
            if let Ok(r) = FlakeRef::parse(&text) {
                proptest::prop_assert_eq!(FlakeRef::parse(&r.to_string()).unwrap(), r.clone());
                proptest::prop_assert!(!r.flake.starts_with('-') && !r.flake.is_empty());
            }
        }
    }
}
