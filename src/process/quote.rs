//! Escaping of words for a POSIX shell, the only way berth builds a command
//! line for a remote host.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Bytes that never need quoting in a POSIX shell, anywhere in a word.
fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&byte)
}

/// Escapes one word so that a POSIX shell reads it back byte for byte as one
/// argument: plain words stay as they are, anything else is single-quoted
/// with each `'` written as `'\''`. The empty word becomes `''`, and so
/// does a word starting with `=`, which zsh (a login shell sshd may run)
/// would expand to a command's path.
pub fn quote(word: &OsStr) -> OsString {
    let bytes = word.as_bytes();
    if !bytes.is_empty() && bytes[0] != b'=' && bytes.iter().copied().all(is_plain) {
        return word.to_owned();
    }
    single_quote(bytes)
}

/// Shell words that begin or end a compound command where a command name
/// is expected (POSIX's, and bash's and zsh's own).
const RESERVED: &[&str] = &[
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "case",
    "esac",
    "for",
    "select",
    "while",
    "until",
    "do",
    "done",
    "in",
    "function",
    "time",
    "coproc",
    "repeat",
    "foreach",
    "end",
    "nocorrect",
];

/// Escapes the word a shell reads as the command name: as [`quote`], and
/// also quoted when it is plain text that the shell would read as
/// something else there, a variable assignment (`A=b`) or a reserved word
/// (`if`). A quoted word is neither.
pub fn quote_command(word: &OsStr) -> OsString {
    let bytes = word.as_bytes();
    let reserved = RESERVED.iter().any(|r| r.as_bytes() == bytes);
    if bytes.contains(&b'=') || reserved {
        return single_quote(bytes);
    }
    quote(word)
}

fn single_quote(bytes: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &byte in bytes {
        if byte == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(byte);
        }
    }
    out.push(b'\'');
    OsString::from_vec(out)
}

/// Joins words into one shell command line that runs the first word with
/// the others as its arguments: the first escaped by [`quote_command`],
/// the others by [`quote`].
pub fn quote_line<I, S>(words: I) -> OsString
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut line = Vec::new();
    for (i, word) in words.into_iter().enumerate() {
        let quoted = if i == 0 {
            quote_command(word.as_ref())
        } else {
            line.push(b' ');
            quote(word.as_ref())
        };
        line.extend_from_slice(quoted.as_bytes());
    }
    OsString::from_vec(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Words that break naive quoting.
    pub(crate) const HOSTILE: &[&str] = &[
        "",
        " ",
        "a b",
        "'",
        "''",
        "\"",
        "it's",
        "$(touch /tmp/berth-pwned)",
        "`id`",
        "${HOME}",
        "$HOME",
        "a\nb",
        "\n",
        "\t",
        "-rf",
        "--",
        "-",
        "*",
        "?",
        "~",
        "~root",
        "\\",
        "\\'",
        "!",
        "!!",
        ";",
        "&&",
        "|",
        "<>",
        "#comment",
        "a=b",
        "ünïcödé ✓",
        "'\"'\"'",
    ];

    #[test]
    fn plain_words_are_unchanged() {
        for word in [
            "ls",
            "/nix/store/abc-x",
            "a=b",
            "-p",
            "--to",
            "user@host:22",
            "50%",
        ] {
            assert_eq!(quote(OsStr::new(word)), OsStr::new(word));
        }
    }

    #[test]
    fn exact_escapes() {
        let cases = [
            ("", "''"),
            ("a b", "'a b'"),
            ("it's", "'it'\\''s'"),
            ("$(x)", "'$(x)'"),
            ("a\nb", "'a\nb'"),
            ("~", "'~'"),
        ];
        for (word, want) in cases {
            assert_eq!(quote(OsStr::new(word)), OsStr::new(want), "word {word:?}");
        }
    }

    #[test]
    fn non_utf8_bytes_survive() {
        let word = OsStr::from_bytes(b"\xff\xfe'x");
        assert_eq!(quote(word).as_bytes(), b"'\xff\xfe'\\''x'");
    }

    #[test]
    fn command_words_that_plain_text_would_misread_are_quoted() {
        let cases = [
            ("printf", "printf"),
            ("/bin/echo", "/bin/echo"),
            ("A=b", "'A=b'"),
            ("/x/a=b", "'/x/a=b'"),
            ("if", "'if'"),
            ("done", "'done'"),
            ("!", "'!'"),
            ("{", "'{'"),
            ("=ls", "'=ls'"),
        ];
        for (word, want) in cases {
            assert_eq!(
                quote_command(OsStr::new(word)),
                OsStr::new(want),
                "{word:?}"
            );
        }
        // Only the first word of a line is a command name.
        assert_eq!(quote_line(["A=b", "A=b", "if"]), "'A=b' A=b if");
        // zsh expands a leading `=` anywhere.
        assert_eq!(quote(OsStr::new("=ls")), "'=ls'");
    }

    /// What `shell` reads `words` back as, when they are the list of a
    /// `for` loop (so no word is a command name).
    fn read_back(shell: &str, words: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut script = b"for a in x ".to_vec();
        for word in words {
            script.push(b' ');
            script.extend_from_slice(quote(OsStr::from_bytes(word)).as_bytes());
        }
        script.extend_from_slice(b"; do printf '%s\\0' \"$a\"; done");
        let out = Command::new(shell)
            .arg("-c")
            .arg(OsStr::from_bytes(&script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: Vec<Vec<u8>> = out.stdout.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
        assert_eq!(got.first().map(Vec::as_slice), Some(&b"x"[..]));
        assert_eq!(got.pop(), Some(Vec::new()));
        got.remove(0);
        got
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(256))]

        /// Any word (of bytes other than NUL, which no argv holds) comes
        /// back byte for byte from dash and from bash.
        #[test]
        fn prop_shells_read_any_word_back(
            words in proptest::collection::vec(crate::testing::prop::bytes(16), 0..6),
        ) {
            for shell in ["sh", "bash"] {
                proptest::prop_assert_eq!(&read_back(shell, &words), &words, "{}", shell);
            }
        }

        /// A word left unquoted holds only bytes that mean nothing to a
        /// shell; everything else is one single-quoted string.
        #[test]
        fn prop_a_word_is_plain_or_single_quoted(word in crate::testing::prop::bytes(24)) {
            let quoted = quote(OsStr::from_bytes(&word)).into_vec();
            if quoted == word {
                proptest::prop_assert!(!word.is_empty() && word[0] != b'=');
                proptest::prop_assert!(word.iter().copied().all(is_plain));
            } else {
                // One single-quoted string, whose only `'` are in `'\''`.
                proptest::prop_assert!(quoted.len() >= 2);
                proptest::prop_assert!(quoted.starts_with(b"'") && quoted.ends_with(b"'"));
                let inner = &quoted[1..quoted.len() - 1];
                let mut back = Vec::new();
                let mut i = 0;
                while i < inner.len() {
                    if inner[i] == b'\'' {
                        proptest::prop_assert_eq!(inner.get(i..i + 4), Some(&b"'\\''"[..]));
                        back.push(b'\'');
                        i += 4;
                    } else {
                        back.push(inner[i]);
                        i += 1;
                    }
                }
                proptest::prop_assert_eq!(back, word);
            }
        }
    }

    /// The real test: `sh` parses the quoted line back into the same argv.
    #[test]
    fn sh_reads_hostile_words_back_byte_for_byte() {
        let line = quote_line(HOSTILE.iter().map(OsStr::new));
        let mut script = OsString::from("for a in ");
        script.push(&line);
        script.push("; do printf '%s\\0' \"$a\"; done");
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        let want: Vec<&[u8]> = HOSTILE
            .iter()
            .map(|w| w.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(got, want);
        assert!(!std::path::Path::new("/tmp/berth-pwned").exists());
    }
}
