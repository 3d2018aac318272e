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
/// with each `'` written as `'\''`. The empty word becomes `''`.
pub fn quote(word: &OsStr) -> OsString {
    let bytes = word.as_bytes();
    if !bytes.is_empty() && bytes.iter().copied().all(is_plain) {
        return word.to_owned();
    }
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

/// Joins words into one shell command line, each escaped by [`quote`].
pub fn quote_line<I, S>(words: I) -> OsString
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut line = Vec::new();
    for (i, word) in words.into_iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(quote(word.as_ref()).as_bytes());
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
