//! Releases of an app: its git repository (`repo.git`, a bare mirror of
//! the remote), the exact revision asked for, and `releases/<sha>/` built
//! from it (checkout, install, build) while the old release serves.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{character, printable};
use crate::process::{self, Cmd, CommandError, JobLog, Via};

/// What to deploy, as asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Wanted {
    /// A commit, by its full or abbreviated (7+) hex name.
    Rev(String),
    /// A branch of the remote: its tip now.
    Ref(String),
    Tag(String),
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::Rev(r) => write!(f, "revision {r}"),
            Wanted::Ref(r) => write!(f, "branch {r}"),
            Wanted::Tag(t) => write!(f, "tag {t}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("`{}` is not a revision: give a commit's hex name, 7 to 64 characters", printable(.0))]
    BadRevision(String),
    #[error("`{}` is not a branch or tag name: {why} ({NAME_RULE})", printable(.name))]
    BadName { name: String, why: String },
    #[error("{wanted} is not in {repository}")]
    NotFound { wanted: Wanted, repository: String },
    #[error("revision {revision} is not on branch {branch} of {repository}")]
    NotOnBranch {
        revision: String,
        branch: String,
        repository: String,
    },
    #[error("the service has no repository to fetch from")]
    NoRepository,
    #[error("the {step} step failed in {}", .dir.display())]
    Step {
        step: &'static str,
        dir: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ReleaseError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ReleaseError::NotOnBranch { branch, .. } => Some(format!(
                "deploy a commit of {branch} (merge it first), or pass --force to deploy it anyway"
            )),
            ReleaseError::NotFound { .. } => {
                Some("push it first, and check the repository the service deploys from".into())
            }
            _ => None,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let what = what.into();
    move |source| ReleaseError::Io { what, source }
}

/// What a branch or tag name may be, for error messages (a subset of
/// `git check-ref-format`, and never an option).
pub const NAME_RULE: &str = "a branch or tag name is not empty, does not start with `-` or \
     `/`, has no part that starts with `.` or ends with `.lock`, does not end with `/` or `.`, \
     and holds no `..`, `//`, `@{`, whitespace, control characters or any of `~^:?*[\\`";

/// Checks a revision's or a name's shape before git sees it.
pub fn check(wanted: &Wanted) -> Result<(), ReleaseError> {
    match wanted {
        Wanted::Rev(r) => {
            let ok = (7..=64).contains(&r.len()) && r.chars().all(|c| c.is_ascii_hexdigit());
            if ok {
                Ok(())
            } else {
                Err(ReleaseError::BadRevision(r.clone()))
            }
        }
        Wanted::Ref(n) | Wanted::Tag(n) => match why_not_a_name(n) {
            None => Ok(()),
            Some(why) => Err(ReleaseError::BadName {
                name: n.clone(),
                why,
            }),
        },
    }
}

/// Why `n` is not a branch or tag name, or `None` if it is one.
fn why_not_a_name(n: &str) -> Option<String> {
    if n.is_empty() {
        return Some("it is empty".into());
    }
    if n.starts_with('-') {
        return Some("it starts with `-`, which git would read as an option".into());
    }
    if let Some(c) = n
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
    {
        return Some(format!("it holds {}", character(c)));
    }
    if let Some(bad) = ["..", "//", "@{"].into_iter().find(|bad| n.contains(bad)) {
        return Some(format!("it holds `{bad}`"));
    }
    if n.starts_with('/') || n.ends_with('/') || n.ends_with('.') {
        return Some("it starts with `/` or ends with `/` or `.`".into());
    }
    if n.split('/')
        .any(|part| part.starts_with('.') || part.ends_with(".lock"))
    {
        return Some("a part of it starts with `.` or ends with `.lock`".into());
    }
    None
}

/// `--rev`, checked as clap reads it.
pub fn parse_rev(text: &str) -> Result<String, ReleaseError> {
    check(&Wanted::Rev(text.to_owned())).map(|()| text.to_owned())
}

/// `--ref` or `--tag`, checked as clap reads it.
pub fn parse_name(text: &str) -> Result<String, ReleaseError> {
    check(&Wanted::Ref(text.to_owned())).map(|()| text.to_owned())
}

/// A service's bare repository.
pub struct Repo<'a> {
    pub path: PathBuf,
    pub url: String,
    pub log: &'a JobLog,
}

impl Repo<'_> {
    fn git(&self) -> Cmd {
        // safe.directory: root (a recovery, the module's first release) may
        // work on the service user's repository.
        Cmd::new("git")
            .arg("-c")
            .arg(format!("safe.directory={}", self.path.display()))
            .arg("--git-dir")
            .arg(&self.path)
            .env("GIT_TERMINAL_PROMPT", "0")
    }

    async fn run(&self, cmd: &Cmd) -> Result<process::Output, CommandError> {
        process::output(cmd, Via::Local, self.log).await?.check()
    }

    /// Makes the bare repository if missing, pointed at `url`.
    pub async fn ensure(&self) -> Result<(), ReleaseError> {
        if !self.path.join("HEAD").exists() {
            self.run(
                &Cmd::new("git")
                    .args(["init", "--quiet", "--bare"])
                    .arg(&self.path),
            )
            .await?;
            self.run(
                &self
                    .git()
                    .args(["remote", "add", "--", "origin", &self.url]),
            )
            .await?;
        } else {
            self.run(
                &self
                    .git()
                    .args(["remote", "set-url", "--", "origin", &self.url]),
            )
            .await?;
        }
        Ok(())
    }

    /// Fetches every branch and tag of the remote.
    pub async fn fetch(&self) -> Result<(), ReleaseError> {
        self.run(&self.git().args([
            "fetch",
            "--quiet",
            "--prune",
            "--force",
            "origin",
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
        ]))
        .await?;
        Ok(())
    }

    async fn rev_parse(&self, name: &str) -> Result<Option<String>, ReleaseError> {
        let out = process::output(
            &self.git().args([
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &format!("{name}^{{commit}}"),
            ]),
            Via::Local,
            self.log,
        )
        .await?;
        Ok(out
            .status
            .success()
            .then(|| out.stdout_str().trim().to_owned()))
    }

    /// The full commit name of `wanted`, after [`Repo::fetch`]. A commit
    /// that no branch or tag holds is fetched by name.
    pub async fn resolve(&self, wanted: &Wanted) -> Result<String, ReleaseError> {
        check(wanted)?;
        let name = match wanted {
            Wanted::Rev(r) => r.clone(),
            Wanted::Ref(b) => format!("refs/remotes/origin/{b}"),
            Wanted::Tag(t) => format!("refs/tags/{t}"),
        };
        if let Some(sha) = self.rev_parse(&name).await? {
            return Ok(sha);
        }
        if let Wanted::Rev(r) = wanted {
            // Servers let a full commit name be fetched even off branches.
            if r.len() >= 40 {
                let fetched = process::output(
                    &self.git().args(["fetch", "--quiet", "origin", r]),
                    Via::Local,
                    self.log,
                )
                .await?;
                if fetched.status.success() {
                    if let Some(sha) = self.rev_parse(r).await? {
                        return Ok(sha);
                    }
                }
            }
        }
        Err(ReleaseError::NotFound {
            wanted: wanted.clone(),
            repository: self.url.clone(),
        })
    }

    /// Whether `sha` is on `branch` of the remote (its tip or an ancestor).
    pub async fn on_branch(&self, sha: &str, branch: &str) -> Result<bool, ReleaseError> {
        check(&Wanted::Ref(branch.to_owned()))?;
        self.is_ancestor(sha, &format!("refs/remotes/origin/{branch}"))
            .await
    }

    /// Whether commit `ancestor` is `descendant` or in its history.
    pub async fn is_ancestor(
        &self,
        ancestor: &str,
        descendant: &str,
    ) -> Result<bool, ReleaseError> {
        let out = process::output(
            &self
                .git()
                .args(["merge-base", "--is-ancestor", ancestor, descendant]),
            Via::Local,
            self.log,
        )
        .await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(out.check().err().map_or_else(
                || ReleaseError::BadName {
                    name: descendant.to_owned(),
                    why: "git could not compare it".into(),
                },
                ReleaseError::Command,
            )),
        }
    }

    /// The files whose contents differ between commits `from` and `to`
    /// (a rename counts as both of its names).
    pub async fn changed_files(&self, from: &str, to: &str) -> Result<Vec<String>, ReleaseError> {
        let out = self
            .run(&self.git().args([
                "diff",
                "--name-only",
                "-z",
                "--no-renames",
                "--no-ext-diff",
                "--end-of-options",
                from,
                to,
            ]))
            .await?;
        Ok(out
            .stdout
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect())
    }

    /// Writes the tree of `sha` into the empty directory `dest` (no `.git`:
    /// a release is files, not a clone).
    pub async fn checkout(&self, sha: &str, dest: &Path) -> Result<(), ReleaseError> {
        let index = dest.join(".berth-index");
        let with_index = |cmd: Cmd| cmd.env("GIT_INDEX_FILE", &index);
        self.run(&with_index(self.git().args(["read-tree", sha])))
            .await?;
        self.run(&with_index(self.git().arg("--work-tree").arg(dest).args([
            "checkout-index",
            "--all",
            "--force",
        ])))
        .await?;
        std::fs::remove_file(&index).map_err(io(format!("remove {}", index.display())))
    }
}

/// The file in each release that names its revision (apps may read it to
/// report what they run).
pub const REVISION_FILE: &str = ".berth-revision";
/// Written last: a release directory without it is unfinished.
const BUILT_FILE: &str = ".berth-built";

/// Whether `dir` holds a finished release.
pub fn is_built(dir: &Path) -> bool {
    dir.join(BUILT_FILE).is_file()
}

/// Marks `dir` as a finished release.
pub fn mark_built(dir: &Path) -> Result<(), ReleaseError> {
    let path = dir.join(BUILT_FILE);
    std::fs::write(&path, crate::state::now().to_string())
        .map_err(io(format!("write {}", path.display())))
}

/// `sh -c COMMAND` in `dir`, for a step of the service's own.
pub fn step(command: &str, dir: &Path, env: &[(String, String)]) -> Cmd {
    let mut cmd = Cmd::new("sh").args(["-c", command]).cwd(dir);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    cmd
}

/// Makes `link` point at `target` atomically: a new symlink renamed over
/// the old one, so the unit never sees no `current`.
pub fn swap_symlink(link: &Path, target: &Path) -> Result<(), ReleaseError> {
    let tmp = link.with_file_name(format!(
        ".{}.new-{}",
        link.file_name()
            .map_or("link".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io(format!(
        "make the symlink {} -> {}",
        tmp.display(),
        target.display()
    )))?;
    std::fs::rename(&tmp, link).map_err(io(format!("replace {}", link.display())))?;
    if let Some(parent) = link.parent() {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// The revision `current` points at, if it points into `releases/`.
pub fn current_revision(current: &Path) -> Option<String> {
    let target = std::fs::read_link(current).ok()?;
    let name = target.file_name()?.to_str()?.to_owned();
    check(&Wanted::Rev(name.clone())).ok().map(|()| name)
}

/// Finished releases, newest first (by when they were built).
pub fn list(releases: &Path) -> Vec<(String, i64)> {
    let Ok(entries) = std::fs::read_dir(releases) else {
        return Vec::new();
    };
    let mut found: Vec<(String, i64)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let built = std::fs::read_to_string(e.path().join(BUILT_FILE)).ok()?;
            Some((name, built.trim().parse().unwrap_or(0)))
        })
        .collect();
    found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    found
}

/// Removes releases beyond the `keep` newest, never one in `protect`, and
/// unfinished ones. Returns the names removed.
pub fn prune(releases: &Path, keep: usize, protect: &[&str]) -> Vec<String> {
    let mut removed = Vec::new();
    let built = list(releases);
    let keep_names: Vec<&str> = built.iter().take(keep).map(|(n, _)| n.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(releases) else {
        return removed;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep_names.contains(&name.as_str()) || protect.contains(&name.as_str()) {
            continue;
        }
        if remove_tree(&entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

/// Removes a directory tree, making read-only directories (installed
/// dependencies often are) writable first.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(dir);
            std::fs::remove_dir_all(dir)
        }
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        if meta.is_dir() {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.filter_map(Result::ok) {
                    make_writable(&e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::git;

    fn commit(dir: &Path, file: &str, text: &str) -> String {
        std::fs::write(dir.join(file), text).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", text]);
        git(dir, &["rev-parse", "HEAD"])
    }

    #[test]
    fn names_are_checked_before_git_sees_them() {
        assert!(check(&Wanted::Rev("abc1234".into())).is_ok());
        for bad in ["abc", "--upload-pack=x", "g123456", &"a".repeat(65)] {
            assert!(check(&Wanted::Rev(bad.into())).is_err(), "{bad}");
        }
        assert!(check(&Wanted::Ref("release/1.2".into())).is_ok());
        for bad in ["-x", "a..b", "a b", "", "x^{}", "a:b"] {
            assert!(check(&Wanted::Ref(bad.into())).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_name_says_why_and_what_is_allowed() {
        let cases = [
            (
                "-x",
                "it starts with `-`, which git would read as an option",
            ),
            ("$(touch /tmp/x)", "it holds ' '"),
            ("a\nb", "it holds '\\n'"),
            ("../etc", "it holds `..`"),
            ("a//b", "it holds `//`"),
            ("main@{1}", "it holds `@{`"),
            ("main/", "it starts with `/` or ends with `/` or `.`"),
            (
                "x/.hidden",
                "a part of it starts with `.` or ends with `.lock`",
            ),
            (
                "main.lock",
                "a part of it starts with `.` or ends with `.lock`",
            ),
        ];
        for (name, why) in cases {
            let err = parse_name(name).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "`{}` is not a branch or tag name: {why} ({NAME_RULE})",
                    name.replace('\n', "\\n")
                )
            );
        }
        assert_eq!(
            parse_rev("$(id)").unwrap_err().to_string(),
            "`$(id)` is not a revision: give a commit's hex name, 7 to 64 characters"
        );
        assert_eq!(parse_name("feature/x-1").unwrap(), "feature/x-1");
        assert_eq!(parse_rev("ABC1234").unwrap(), "ABC1234");
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(256))]

        /// Every name berth accepts is one git accepts too (a ref under
        /// `refs/remotes/origin/`), and never reads as an option.
        #[test]
        fn prop_accepted_names_are_refs_git_accepts(name in crate::testing::prop::text()) {
            if parse_name(&name).is_ok() {
                proptest::prop_assert!(!name.starts_with('-'));
                let out = std::process::Command::new("git")
                    .args(["check-ref-format", &format!("refs/remotes/origin/{name}")])
                    .output()
                    .unwrap();
                proptest::prop_assert!(out.status.success(), "git refuses {:?}", name);
            }
        }

        /// A revision is accepted exactly when it is 7 to 64 hex digits.
        #[test]
        fn prop_revisions_are_7_to_64_hex_digits(rev in "[0-9a-fA-F]{0,70}|\\PC{0,70}") {
            let hex = (7..=64).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit());
            proptest::prop_assert_eq!(parse_rev(&rev).is_ok(), hex);
        }
    }

    #[tokio::test]
    async fn fetches_resolves_checks_the_branch_and_checks_out() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let first = commit(&work, "app.txt", "one");
        let second = commit(&work, "app.txt", "two");
        git(&work, &["tag", "v2"]);
        git(&work, &["checkout", "-q", "-b", "feature"]);
        let off_main = commit(&work, "app.txt", "three");
        git(&work, &["checkout", "-q", "main"]);

        let log = JobLog::new();
        let repo = Repo {
            path: tmp.path().join("svc/repo.git"),
            url: work.display().to_string(),
            log: &log,
        };
        repo.ensure().await.unwrap();
        repo.fetch().await.unwrap();
        // Again: the repository exists now.
        repo.ensure().await.unwrap();

        assert_eq!(
            repo.resolve(&Wanted::Rev(first[..8].into())).await.unwrap(),
            first
        );
        assert_eq!(
            repo.resolve(&Wanted::Ref("main".into())).await.unwrap(),
            second
        );
        assert_eq!(
            repo.resolve(&Wanted::Tag("v2".into())).await.unwrap(),
            second
        );
        let missing = repo.resolve(&Wanted::Rev("0123456789abcdef".into())).await;
        assert!(
            matches!(missing, Err(ReleaseError::NotFound { .. })),
            "{missing:?}"
        );
        assert!(repo.on_branch(&first, "main").await.unwrap());
        assert!(!repo.on_branch(&off_main, "main").await.unwrap());

        let dest = tmp.path().join("svc/releases").join(&first);
        std::fs::create_dir_all(&dest).unwrap();
        repo.checkout(&first, &dest).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("app.txt")).unwrap(),
            "one"
        );
        assert!(!dest.join(".git").exists() && !dest.join(".berth-index").exists());
    }

    #[test]
    fn swaps_current_and_prunes_old_releases() {
        let tmp = tempfile::tempdir().unwrap();
        let releases = tmp.path().join("releases");
        let names: Vec<String> = (0..5).map(|i| format!("{i}{}", "a".repeat(39))).collect();
        for (i, name) in names.iter().enumerate() {
            let dir = releases.join(name);
            std::fs::create_dir_all(dir.join("node_modules")).unwrap();
            std::fs::write(dir.join(BUILT_FILE), i.to_string()).unwrap();
        }
        std::fs::create_dir_all(releases.join("unfinished")).unwrap();
        let current = tmp.path().join("current");
        swap_symlink(&current, &releases.join(&names[0])).unwrap();
        swap_symlink(&current, &releases.join(&names[1])).unwrap();
        assert_eq!(
            current_revision(&current).as_deref(),
            Some(names[1].as_str())
        );

        // Keep 2 newest (4, 3), and protect the current one (1).
        let removed = prune(&releases, 2, &[&names[1]]);
        assert_eq!(
            removed,
            [names[0].clone(), names[2].clone(), "unfinished".into()]
        );
        let left: Vec<String> = list(&releases).into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, [names[4].clone(), names[3].clone(), names[1].clone()]);
    }
}
