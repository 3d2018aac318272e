//! What the unit tests of several modules share.

use std::path::Path;

/// Runs the real git in `dir` with a fixed identity, and returns what it
/// printed, trimmed; panics, with git's stderr, when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Property tests (proptest) of what berth reads from outside: they run a
/// bounded number of cases so that `cargo test` stays fast. Run more with
/// `PROPTEST_CASES=100000 cargo test --lib prop_`; a failure prints the
/// smallest input proptest found, which then belongs in a table test.
pub mod prop {
    use proptest::prelude::*;
    use proptest::test_runner::Config;

    /// `cases` cases, unless `PROPTEST_CASES` says otherwise. No
    /// regression files: a found case becomes a named test instead.
    pub fn config(cases: u32) -> Config {
        let mut config = Config::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = cases;
        }
        config.failure_persistence = None;
        config
    }

    /// Bytes that shells, paths, git and ssh give meaning to.
    const SPECIAL: &[u8] = b"'\"$`\\ \t\n\r!*?~=#;&|<>(){}[]-%^,.:/@+";

    /// One byte other than NUL, often one that means something to a shell.
    pub fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => proptest::sample::select(SPECIAL),
            2 => b'a'..=b'z',
            1 => 1u8..=255,
        ]
    }

    /// Up to `max` bytes, none of them NUL.
    pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(byte(), 0..=max)
    }

    /// Text as a user might type it, or an attacker: shell syntax, control
    /// characters, any unicode.
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            bytes(24).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            "[a-z0-9._@*?,#-]{0,16}",
            any::<String>(),
        ]
    }
}
