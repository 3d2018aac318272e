//! [`Selector`]: which nodes `--on` names (`web1`, `web*`, `@tag`, joined by
//! commas), and [`select`], which combines it with `FLAKE#NODE`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use super::{FlakeError, NodeMeta, NodeName};

/// What a selector term may hold, for error messages.
const TERM_RULE: &str = "a term is a node name, a glob with `*` and `?`, or `@tag`";

/// The value of `--on`: comma-separated terms, each a node name, a glob over
/// node names (`web*`, `db?`) or a tag (`@web`, which may be a glob too).
/// A node is selected when any term matches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    text: String,
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    /// A glob over node names; a plain name is a glob without wildcards.
    Node(String),
    /// A glob over a node's tags.
    Tag(String),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, FlakeError> {
        let invalid = |why: String| FlakeError::InvalidSelector {
            text: text.to_owned(),
            why,
        };
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim) {
            if term.is_empty() {
                return Err(invalid(format!("it has an empty term; {TERM_RULE}")));
            }
            let (pattern, make): (&str, fn(String) -> Term) = match term.strip_prefix('@') {
                Some("") => return Err(invalid("`@` needs a tag after it".into())),
                Some(tag) => (tag, Term::Tag),
                None => (term, Term::Node),
            };
            if let Some(bad) = pattern
                .chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || "_-.*?".contains(c)))
            {
                return Err(invalid(format!(
                    "`{}` holds {}; {TERM_RULE}",
                    crate::error::printable(term),
                    crate::error::character(bad)
                )));
            }
            terms.push(make(pattern.to_owned()));
        }
        Ok(Selector {
            text: text.to_owned(),
            terms,
        })
    }

    /// Whether any term matches the node's name or one of its tags.
    pub fn matches(&self, node: &NodeMeta) -> bool {
        self.terms.iter().any(|term| match term {
            Term::Node(pattern) => glob(pattern, node.name.as_str()),
            Term::Tag(pattern) => node.settings.tags.iter().any(|tag| glob(pattern, tag)),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Selector {
    type Err = FlakeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Selector::parse(text)
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters
/// (none included) and `?` is exactly one.
fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and where in `text` it currently stops: on a
    // mismatch, that star swallows one more character and matching resumes.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    star = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The nodes a command acts on: the one `FLAKE#NODE` names, those `--on`
/// selects, both (the node, if `--on` also selects it), or every node.
pub fn select(
    nodes: &[NodeMeta],
    flake_node: Option<&NodeName>,
    on: Option<&Selector>,
) -> Result<Vec<NodeMeta>, FlakeError> {
    if nodes.is_empty() {
        return Err(FlakeError::NoNodes);
    }
    let candidates: Vec<&NodeMeta> = match flake_node {
        Some(name) => match nodes.iter().find(|n| &n.name == name) {
            Some(node) => vec![node],
            None => {
                return Err(FlakeError::UnknownNode {
                    node: name.to_string(),
                    known: known_nodes(nodes),
                })
            }
        },
        None => nodes.iter().collect(),
    };
    let Some(on) = on else {
        return Ok(candidates.into_iter().cloned().collect());
    };
    let selected: Vec<NodeMeta> = candidates
        .into_iter()
        .filter(|n| on.matches(n))
        .cloned()
        .collect();
    if !selected.is_empty() {
        return Ok(selected);
    }
    Err(match flake_node {
        Some(name) => FlakeError::NotSelected {
            node: name.clone(),
            selector: on.to_string(),
        },
        None => FlakeError::NoMatch {
            selector: on.to_string(),
            nodes: known_nodes(nodes),
            tags: known_tags(nodes),
        },
    })
}

fn known_nodes(nodes: &[NodeMeta]) -> String {
    let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    names.into_iter().collect::<Vec<_>>().join(", ")
}

fn known_tags(nodes: &[NodeMeta]) -> String {
    let tags: BTreeSet<String> = nodes
        .iter()
        .flat_map(|n| n.settings.tags.iter().map(|t| format!("@{t}")))
        .collect();
    if tags.is_empty() {
        return "none".into();
    }
    tags.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flake::DeploymentSettings;

    fn node(name: &str, tags: &[&str]) -> NodeMeta {
        NodeMeta {
            name: NodeName::new(name).unwrap(),
            settings: DeploymentSettings {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..DeploymentSettings::default()
            },
        }
    }

    fn fleet() -> Vec<NodeMeta> {
        vec![
            node("db1", &["db", "eu"]),
            node("web1", &["web", "eu"]),
            node("web2", &["web", "us"]),
            node("web10", &[]),
        ]
    }

    fn names(nodes: &[NodeMeta]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn on(text: &str) -> Vec<String> {
        let selector = Selector::parse(text).unwrap();
        fleet()
            .iter()
            .filter(|n| selector.matches(n))
            .map(|n| n.name.to_string())
            .collect()
    }

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("web1", "web1", true),
            ("web1", "web10", false),
            ("web*", "web", true),
            ("web*", "web10", true),
            ("web?", "web1", true),
            ("web?", "web10", false),
            ("web?", "web", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("*1", "web1", true),
            ("*1", "web10", false),
            ("w*b*1", "web-b1", true),
            ("w*b*1", "web-b2", false),
            ("*eb*", "web1", true),
            ("**", "abc", true),
            ("a*?c", "abc", true),
            ("a*?c", "ac", false),
            ("host.*", "host.example.org", true),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern:?} on {text:?}");
        }
    }

    #[test]
    fn terms_select_by_name_glob_and_tag() {
        assert_eq!(on("web1"), ["web1"]);
        assert_eq!(on("web*"), ["web1", "web2", "web10"]);
        assert_eq!(on("web?"), ["web1", "web2"]);
        assert_eq!(on("@web"), ["web1", "web2"]);
        assert_eq!(on("@e*"), ["db1", "web1"]);
        assert_eq!(on("db1,@us"), ["db1", "web2"]);
        assert_eq!(on(" db1 , web10 "), ["db1", "web10"]);
        assert_eq!(on("@web,web1"), ["web1", "web2"]);
        assert!(on("nope").is_empty());
    }

    #[test]
    fn bad_selectors_name_the_problem() {
        for (text, why) in [
            ("", "it has an empty term"),
            ("web1,", "it has an empty term"),
            ("a,,b", "it has an empty term"),
            ("@", "`@` needs a tag after it"),
            ("web 1", "`web 1` holds ' '"),
            ("@we\"b", "`@we\"b` holds '\"'"),
            ("web[12]", "`web[12]` holds '['"),
            ("a@b", "`a@b` holds '@'"),
        ] {
            let err = Selector::parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("`{text}` is not a valid node selector: {why}")),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn neither_selects_every_node() {
        assert_eq!(
            names(&select(&fleet(), None, None).unwrap()),
            ["db1", "web1", "web2", "web10"]
        );
    }

    #[test]
    fn flake_node_picks_one() {
        let web2 = NodeName::new("web2").unwrap();
        assert_eq!(
            names(&select(&fleet(), Some(&web2), None).unwrap()),
            ["web2"]
        );
    }

    #[test]
    fn unknown_flake_node_lists_the_known_ones() {
        let name = NodeName::new("web3").unwrap();
        let err = select(&fleet(), Some(&name), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the flake has no node `web3` (it has db1, web1, web10, web2)"
        );
        assert!(err.is_usage());
    }

    #[test]
    fn on_filters() {
        let selector = Selector::parse("@eu").unwrap();
        assert_eq!(
            names(&select(&fleet(), None, Some(&selector)).unwrap()),
            ["db1", "web1"]
        );
    }

    #[test]
    fn both_intersect() {
        let web1 = NodeName::new("web1").unwrap();
        let selector = Selector::parse("@web").unwrap();
        assert_eq!(
            names(&select(&fleet(), Some(&web1), Some(&selector)).unwrap()),
            ["web1"]
        );
        let selector = Selector::parse("@us,db*").unwrap();
        let err = select(&fleet(), Some(&web1), Some(&selector)).unwrap_err();
        assert_eq!(err.to_string(), "node web1 does not match `--on @us,db*`");
    }

    #[test]
    fn a_selector_matching_nothing_lists_nodes_and_tags() {
        let selector = Selector::parse("@prod,api*").unwrap();
        let err = select(&fleet(), None, Some(&selector)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`--on @prod,api*` matches no node (nodes: db1, web1, web10, web2; \
             tags: @db, @eu, @us, @web)"
        );
        assert!(err.hint().unwrap().contains("`@tag`"));
        let untagged = [node("a", &[])];
        let err = select(&untagged, None, Some(&selector)).unwrap_err();
        assert!(err.to_string().ends_with("(nodes: a; tags: none)"), "{err}");
    }

    #[test]
    fn an_empty_fleet_is_an_error() {
        assert!(matches!(select(&[], None, None), Err(FlakeError::NoNodes)));
    }

    /// `glob` as its definition says, by brute force.
    fn glob_by_definition(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| glob_by_definition(rest, &text[i..])),
            Some((&p, rest)) => text
                .split_first()
                .is_some_and(|(&t, text)| (p == '?' || p == t) && glob_by_definition(rest, text)),
        }
    }

    #[test]
    fn hostile_selectors_are_refused_naming_the_term() {
        for (text, says) in [
            ("web;id", "`web;id` holds ';'"),
            ("$(touch /tmp/x)", "`$(touch /tmp/x)` holds '$'"),
            ("@a\nb", "`@a\\nb` holds '\\n'"),
            ("../x", "`../x` holds '/'"),
            ("web1,", "it has an empty term"),
        ] {
            let err = Selector::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(512))]

        /// The matcher agrees with the definition of `*` and `?`.
        #[test]
        fn prop_glob_matches_by_definition(
            pattern in "[ab*?]{0,8}",
            text in "[ab]{0,10}",
        ) {
            let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
            proptest::prop_assert_eq!(glob(&pattern, &text), glob_by_definition(&p, &t));
        }

        /// Any text: a selector or an error naming it, never a panic; an
        /// accepted one reads back as itself from what it shows.
        #[test]
        fn prop_selectors_parse_or_say_why(text in crate::testing::prop::text()) {
            match Selector::parse(&text) {
                Ok(selector) => {
                    proptest::prop_assert_eq!(Selector::parse(&selector.to_string()).unwrap(), selector.clone());
                    for term in &selector.terms {
                        let (Term::Node(p) | Term::Tag(p)) = term;
                        proptest::prop_assert!(!p.is_empty());
                        proptest::prop_assert!(p.chars().all(|c| c.is_ascii_alphanumeric() || "_-.*?".contains(c)));
                    }
                    let fleet = fleet();
                    let _ = select(&fleet, None, Some(&selector));
                }
                Err(e) => {
                    let message = e.to_string();
                    proptest::prop_assert!(message.contains(&crate::error::printable(&text)));
                    proptest::prop_assert!(!message.contains(|c: char| c.is_control()));
                }
            }
        }
    }
}
