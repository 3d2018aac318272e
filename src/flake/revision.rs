//! Which commit a flake is, as `nix flake metadata` tells (one function for
//! `berth deploy` and `berth converge`), and how two commits relate in the
//! flake's git repository on this machine: what lets a system deployment
//! be recorded by revision, and skipped when its host runs a newer one.

use std::fmt;
use std::path::{Path, PathBuf};

use super::FlakeError;
use crate::process::{self, Cmd, CommandError, JobLog, Output, Via};

/// A full git commit id: 40 (SHA-1) or 64 (SHA-256) hex digits, kept in
/// lowercase. Only a full id names one commit for good.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Revision(String);

impl Revision {
    pub fn new(text: impl Into<String>) -> Result<Revision, FlakeError> {
        let text = text.into();
        if matches!(text.len(), 40 | 64) && text.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Revision(text.to_ascii_lowercase()))
        } else {
            Err(FlakeError::InvalidRevision { text })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for people.
    pub fn short(&self) -> &str {
        crate::output::short_commit(&self.0)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Revision {
    type Err = FlakeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Revision::new(text)
    }
}

impl serde::Serialize for Revision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// What `nix flake metadata` says a flake is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The flake as given.
    pub flake: String,
    /// The locked reference: evaluating it evaluates exactly `revision` (a
    /// flake without one, as it is now).
    pub locked: String,
    /// The commit: a git flake with a clean tree, `github:` and the like.
    pub revision: Option<Revision>,
    /// The hash of the flake's files; every flake has one.
    pub nar_hash: String,
    /// What kind of flake (`locked.type`): `git`, `path`, `github`, ….
    pub kind: String,
    /// The git repository on this machine the flake is in (a `git+file:`
    /// flake, or a directory of a git checkout), where commits can be
    /// compared.
    pub repository: Option<PathBuf>,
}

impl Source {
    /// The commit, or for a flake without one its narHash: how converge
    /// names what it deploys.
    pub fn version(&self) -> &str {
        self.revision
            .as_ref()
            .map_or(&self.nar_hash, |r| r.as_str())
    }

    /// The commit and the repository on this machine to compare it in, or
    /// why there are none.
    pub fn local_commit(&self) -> Result<(&Revision, &Path), FlakeError> {
        let no_commit = |why: String| FlakeError::NoCommit {
            flake: self.flake.clone(),
            why,
        };
        match (&self.revision, &self.repository) {
            (Some(revision), Some(repository)) => Ok((revision, repository)),
            (None, Some(repository)) => Err(no_commit(format!(
                "the git tree at {} has uncommitted changes",
                repository.display()
            ))),
            (Some(_), None) => Err(FlakeError::NotLocal {
                flake: self.flake.clone(),
            }),
            (None, None) if self.kind == "path" => Err(no_commit(
                "it is a directory outside git (or a `path:` flake), which has no commits".into(),
            )),
            (None, None) => Err(no_commit(format!("a {} flake has no commit", self.kind))),
        }
    }
}

/// `nix flake metadata --json FLAKE`. `--no-write-lock-file`, as for
/// evaluation: a deploy must not rewrite the user's lock file.
pub fn metadata_cmd(flake: &str) -> Cmd {
    Cmd::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(["flake", "metadata", "--no-write-lock-file", "--json", flake])
}

/// Reads what [`metadata_cmd`] printed. nix 2.8 gives `revision` (and
/// `locked.rev`) only for a clean git tree.
pub fn parse_metadata(flake: &str, json: &[u8]) -> Result<Source, FlakeError> {
    let unreadable = |why: String| FlakeError::Unreadable {
        command: "nix flake metadata",
        why,
    };
    let meta: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| unreadable(e.to_string()))?;
    let locked = &meta["locked"];
    let revision = meta["revision"]
        .as_str()
        .or_else(|| locked["rev"].as_str())
        .map(Revision::new)
        .transpose()?;
    let nar_hash = locked["narHash"]
        .as_str()
        .ok_or_else(|| unreadable("it has no locked.narHash".into()))?;
    let kind = locked["type"].as_str().unwrap_or("unknown");
    // `git+file:///repo?dir=sub` locks as `{type: git, url: file:///repo?dir=sub}`.
    let repository = locked["url"]
        .as_str()
        .filter(|_| kind == "git")
        .and_then(|url| url.strip_prefix("file://"))
        .map(|path| PathBuf::from(path.split('?').next().unwrap_or(path)));
    Ok(Source {
        flake: flake.to_owned(),
        locked: meta["url"].as_str().unwrap_or(flake).to_owned(),
        revision,
        nar_hash: nar_hash.to_owned(),
        kind: kind.to_owned(),
        repository,
    })
}

/// Resolves `flake` to what it is now.
pub async fn resolve(flake: &str) -> Result<Source, FlakeError> {
    let out = process::output(&metadata_cmd(flake), Via::Local, &JobLog::new())
        .await
        .and_then(Output::check)
        .map_err(|source| FlakeError::Metadata {
            flake: flake.to_owned(),
            source: Box::new(source),
        })?;
    parse_metadata(flake, &out.stdout)
}

/// How another commit relates to this one, in the flake's repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The same commit.
    Same,
    /// The other commit has this one in its history: it already contains it.
    Contains,
    /// The other commit does not contain this one (it is older, or on
    /// another branch).
    Lacks,
    /// The other commit is not in the repository: nothing can be told.
    Unknown,
    /// The repository is a shallow clone, and its cut history lacks the
    /// other commit or does not show this one in it: that may be only the
    /// cut.
    Shallow,
}

fn git(repository: &Path) -> Cmd {
    Cmd::new("git").arg("-C").arg(repository)
}

/// Whether `revision` is a commit of the repository (exit 0) or not.
fn has_commit_cmd(repository: &Path, revision: &Revision) -> Cmd {
    git(repository).args(["cat-file", "-e", &format!("{revision}^{{commit}}")])
}

/// Exit 0 when `ancestor` is `descendant` or in its history, 1 when not.
fn is_ancestor_cmd(repository: &Path, ancestor: &Revision, descendant: &Revision) -> Cmd {
    git(repository).args([
        "merge-base",
        "--is-ancestor",
        ancestor.as_str(),
        descendant.as_str(),
    ])
}

/// Prints `true` for a shallow clone.
fn is_shallow_cmd(repository: &Path) -> Cmd {
    git(repository).args(["rev-parse", "--is-shallow-repository"])
}

/// How `other` relates to `this` in `repository`.
pub async fn relation(
    repository: &Path,
    this: &Revision,
    other: &Revision,
) -> Result<Relation, FlakeError> {
    if this == other {
        return Ok(Relation::Same);
    }
    let log = JobLog::new();
    let run = |cmd: Cmd| {
        let log = &log;
        async move {
            process::output(&cmd, Via::Local, log)
                .await
                .map_err(|source| git_error(repository, source))
        }
    };
    // First, as it also fails clearly where there is no repository.
    let shallow = run(is_shallow_cmd(repository))
        .await?
        .check()
        .map_err(|source| git_error(repository, source))?
        .stdout_str()
        .trim()
        == "true";
    let unsure = if shallow {
        Relation::Shallow
    } else {
        Relation::Unknown
    };
    if !run(has_commit_cmd(repository, other))
        .await?
        .status
        .success()
    {
        return Ok(unsure);
    }
    let out = run(is_ancestor_cmd(repository, this, other)).await?;
    match out.status.code() {
        Some(0) => Ok(Relation::Contains),
        Some(1) if shallow => Ok(Relation::Shallow),
        Some(1) => Ok(Relation::Lacks),
        _ => Err(git_error(repository, out.check().unwrap_err())),
    }
}

fn git_error(repository: &Path, source: CommandError) -> FlakeError {
    FlakeError::Git {
        repository: repository.to_owned(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    //! The tests named `git_*` run the real git on throwaway repositories.

    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(256))]

        /// A revision is exactly 40 or 64 hex digits, kept in lowercase;
        /// what it shows reads back as itself.
        #[test]
        fn prop_revisions_are_full_hex_commit_ids(
            text in "[0-9a-fA-F]{38,66}|[0-9a-f]{40}|[0-9a-f]{64}|\\PC{0,70}",
        ) {
            let full = matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
            match Revision::new(text.clone()) {
                Ok(r) => {
                    proptest::prop_assert!(full);
                    proptest::prop_assert_eq!(r.as_str(), text.to_ascii_lowercase());
                    proptest::prop_assert_eq!(r.to_string().parse::<Revision>().unwrap(), r.clone());
                    proptest::prop_assert_eq!(r.short().len(), 12);
                }
                Err(e) => {
                    proptest::prop_assert!(!full);
                    proptest::prop_assert!(!e.to_string().contains(|c: char| c.is_control()));
                }
            }
        }
    }
    use crate::testing::git;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn revisions_are_full_commit_ids() {
        let r = Revision::new(A.to_uppercase()).unwrap();
        assert_eq!(r.as_str(), A);
        assert_eq!(r.short(), "0123456789ab");
        assert_eq!(serde_json::to_value(&r).unwrap(), A);
        assert!(Revision::new("a".repeat(64)).is_ok());
        for bad in [
            "",
            "0123456",
            &A[..39],
            &format!("{A}0"),
            &A.replace('0', "g"),
        ] {
            let err = Revision::new(bad).unwrap_err();
            assert!(
                err.to_string().contains("is not a full git commit id"),
                "{err}"
            );
        }
    }

    #[test]
    fn metadata_argv() {
        assert_eq!(
            metadata_cmd("git+file:///srv/fleet").argv(),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command flakes",
                "flake",
                "metadata",
                "--no-write-lock-file",
                "--json",
                "git+file:///srv/fleet"
            ]
        );
    }

    #[test]
    fn git_argv() {
        let repo = Path::new("/srv/fleet");
        let a = Revision::new(A).unwrap();
        let b = Revision::new("f".repeat(40)).unwrap();
        assert_eq!(
            has_commit_cmd(repo, &a).argv(),
            [
                "git",
                "-C",
                "/srv/fleet",
                "cat-file",
                "-e",
                &format!("{A}^{{commit}}")
            ]
        );
        assert_eq!(
            is_ancestor_cmd(repo, &a, &b).argv(),
            [
                "git",
                "-C",
                "/srv/fleet",
                "merge-base",
                "--is-ancestor",
                A,
                b.as_str()
            ]
        );
        assert_eq!(
            is_shallow_cmd(repo).argv(),
            [
                "git",
                "-C",
                "/srv/fleet",
                "rev-parse",
                "--is-shallow-repository"
            ]
        );
    }

    // What nix 2.8 printed for each kind of flake (trimmed).
    const CLEAN: &str = r#"{"locked":{"narHash":"sha256-y9R=","ref":"master","rev":"0123456789abcdef0123456789abcdef01234567","type":"git","url":"file:///srv/fleet?dir=hosts"},"revision":"0123456789abcdef0123456789abcdef01234567","url":"git+file:///srv/fleet?dir=hosts&ref=master&rev=0123456789abcdef0123456789abcdef01234567"}"#;
    const DIRTY: &str = r#"{"locked":{"narHash":"sha256-gnE=","type":"git","url":"file:///srv/fleet"},"url":"git+file:///srv/fleet"}"#;
    const PATH: &str = r#"{"locked":{"narHash":"sha256-Ipf=","path":"/srv/fleet","type":"path"},"url":"path:/srv/fleet?narHash=sha256-Ipf="}"#;
    const GITHUB: &str = r#"{"locked":{"narHash":"sha256-abc=","owner":"o","repo":"r","rev":"0123456789abcdef0123456789abcdef01234567","type":"github"},"revision":"0123456789abcdef0123456789abcdef01234567","url":"github:o/r/0123456789abcdef0123456789abcdef01234567"}"#;

    #[test]
    fn a_clean_git_tree_has_a_commit_in_a_local_repository() {
        let s = parse_metadata(".", CLEAN.as_bytes()).unwrap();
        assert_eq!(s.revision.as_ref().unwrap().as_str(), A);
        assert_eq!(s.version(), A);
        assert_eq!(s.repository.as_deref(), Some(Path::new("/srv/fleet")));
        assert!(s.locked.starts_with("git+file:///srv/fleet?dir=hosts&"));
        let (revision, repository) = s.local_commit().unwrap();
        assert_eq!(
            (revision.as_str(), repository),
            (A, Path::new("/srv/fleet"))
        );
    }

    #[test]
    fn flakes_without_a_local_commit_say_why() {
        let dirty = parse_metadata(".", DIRTY.as_bytes()).unwrap();
        assert_eq!(dirty.revision, None);
        assert_eq!(dirty.version(), "sha256-gnE=");
        assert_eq!(dirty.locked, "git+file:///srv/fleet");
        let err = dirty.local_commit().unwrap_err();
        assert!(
            err.to_string()
                .contains("the git tree at /srv/fleet has uncommitted changes"),
            "{err}"
        );
        assert!(err.hint().unwrap().contains("commit"), "{:?}", err.hint());

        let path = parse_metadata("path:/srv/fleet", PATH.as_bytes()).unwrap();
        assert_eq!(
            (path.revision.as_ref(), path.repository.as_ref()),
            (None, None)
        );
        let err = path.local_commit().unwrap_err();
        assert!(err.to_string().contains("outside git"), "{err}");

        let github = parse_metadata("github:o/r", GITHUB.as_bytes()).unwrap();
        assert_eq!(github.revision.as_ref().unwrap().as_str(), A);
        let err = github.local_commit().unwrap_err();
        assert!(matches!(err, FlakeError::NotLocal { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("checkout"), "{:?}", err.hint());

        assert!(parse_metadata(".", b"{}").is_err());
        assert!(parse_metadata(".", b"not json").is_err());
    }

    fn commit(dir: &Path, text: &str) -> Revision {
        std::fs::write(dir.join("file"), text).unwrap();
        git(dir, &["add", "file"]);
        git(dir, &["commit", "-q", "-m", text]);
        Revision::new(git(dir, &["rev-parse", "HEAD"])).unwrap()
    }

    #[tokio::test]
    async fn git_relations_in_a_full_and_a_shallow_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        let one = commit(&repo, "one");
        let two = commit(&repo, "two");
        git(&repo, &["checkout", "-q", "-b", "side", one.as_str()]);
        let side = commit(&repo, "side");
        let three = {
            git(&repo, &["checkout", "-q", "main"]);
            commit(&repo, "three")
        };
        let elsewhere = Revision::new("e".repeat(40)).unwrap();
        let rel = |this: &Revision, other: &Revision| {
            let repo = repo.clone();
            let (this, other) = (this.clone(), other.clone());
            async move { relation(&repo, &this, &other).await.unwrap() }
        };
        assert_eq!(rel(&two, &two).await, Relation::Same);
        assert_eq!(rel(&one, &three).await, Relation::Contains);
        assert_eq!(rel(&three, &one).await, Relation::Lacks);
        assert_eq!(rel(&side, &three).await, Relation::Lacks);
        assert_eq!(rel(&two, &elsewhere).await, Relation::Unknown);

        // A shallow clone of `one` that later fetched `three` shallowly:
        // `three`'s history is cut, so that it does not show `one` says
        // nothing; nor does the absence of `two`.
        git(&repo, &["tag", "first", one.as_str()]);
        let shallow = tmp.path().join("shallow");
        let url = format!("file://{}", repo.display());
        git(
            tmp.path(),
            &[
                "clone", "-q", "--depth", "1", "--branch", "first", &url, "shallow",
            ],
        );
        git(&shallow, &["fetch", "-q", "--depth", "1", "origin", "main"]);
        let rel_shallow = |this: &Revision, other: &Revision| {
            let shallow = shallow.clone();
            let (this, other) = (this.clone(), other.clone());
            async move { relation(&shallow, &this, &other).await.unwrap() }
        };
        assert_eq!(rel_shallow(&one, &three).await, Relation::Shallow);
        assert_eq!(rel_shallow(&one, &two).await, Relation::Shallow);
        assert_eq!(rel_shallow(&one, &one).await, Relation::Same);

        let err = relation(tmp.path(), &one, &two).await.unwrap_err();
        assert!(matches!(err, FlakeError::Git { .. }), "{err:?}");
    }
}
