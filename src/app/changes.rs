//! Which changes touch a service: its manifest's `paths` say which files of
//! the repository make it up, and `quietPaths` which of those are only docs
//! or tests. `berth app changed` shows this for a range of commits,
//! `app deploy --skip-untouched` skips a revision that touches nothing of
//! the service, and a deploy that only changes quiet paths notifies nothing.
//!
//! Patterns are gitignore-like globs relative to the repository's root: `*`
//! and `?` stay inside one directory, `**` crosses them, a pattern without a
//! `/` matches a name at any depth, a leading `/` anchors one that has none,
//! a pattern that names a directory stands for everything in it, and `!`
//! takes back what an earlier pattern matched. The last pattern that matches
//! a file decides; with no pattern (or only `!` ones), every file counts.

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// Compiled `paths` or `quietPaths`.
#[derive(Clone, Debug)]
pub struct Filter {
    rules: Vec<Rule>,
    /// What a file no pattern matches is.
    default: bool,
}

#[derive(Clone, Debug)]
struct Rule {
    /// The pattern, and the pattern followed by `/**` (what a directory
    /// holds).
    matchers: [GlobMatcher; 2],
    include: bool,
}

impl Filter {
    /// Compiles `patterns`; an error names the first bad one.
    pub fn new(patterns: &[String]) -> Result<Filter, String> {
        let rules = patterns
            .iter()
            .map(|p| Rule::new(p).map_err(|e| format!("bad path pattern `{p}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let default = !rules.iter().any(|r| r.include);
        Ok(Filter { rules, default })
    }

    /// Whether `path` (relative to the repository's root, `/`-separated)
    /// is in.
    pub fn matches(&self, path: &str) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|r| r.matchers.iter().any(|m| m.is_match(path)))
            .map_or(self.default, |r| r.include)
    }
}

impl Rule {
    fn new(pattern: &str) -> Result<Rule, String> {
        let (include, body) = match pattern.strip_prefix('!') {
            Some(rest) => (false, rest),
            None => (true, pattern),
        };
        let body = body.trim_end_matches('/');
        let (anchored, body) = match body.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (body.contains('/'), body),
        };
        if body.is_empty() {
            return Err("it names no file".into());
        }
        let glob = if anchored {
            body.to_owned()
        } else {
            format!("**/{body}")
        };
        let build = |g: &str| -> Result<GlobMatcher, String> {
            Ok(GlobBuilder::new(g)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| e.kind().to_string())?
                .compile_matcher())
        };
        Ok(Rule {
            matchers: [build(&glob)?, build(&format!("{glob}/**"))?],
            include,
        })
    }
}

/// What a range of commits changes for one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub service: String,
    /// The revision compared from: `--from`, else the one the service runs
    /// (`None` when it runs nothing yet: then everything is new).
    pub from: Option<String>,
    pub to: String,
    /// Whether a deploy of `to` changes the service.
    pub touched: bool,
    /// Whether every file that touches it is in `quietPaths` (docs or
    /// tests only): a deploy notifies nothing.
    pub quiet: bool,
    /// The changed files that touch the service.
    pub files: Vec<String>,
    /// How many changed files do not.
    pub elsewhere: usize,
}

impl Changes {
    /// Sorts the files `git diff` listed between `from` and `to`.
    pub fn of(
        service: &str,
        from: Option<&str>,
        to: &str,
        changed: &[String],
        paths: &Filter,
        quiet: &Filter,
    ) -> Changes {
        let (files, elsewhere): (Vec<String>, Vec<String>) =
            changed.iter().cloned().partition(|f| paths.matches(f));
        let touched = from.is_none() || !files.is_empty();
        Changes {
            service: service.to_owned(),
            from: from.map(str::to_owned),
            to: to.to_owned(),
            touched,
            quiet: from.is_some() && touched && files.iter().all(|f| quiet.matches(f)),
            elsewhere: elsewhere.len(),
            files,
        }
    }

    /// A line for people.
    pub fn describe(&self) -> String {
        let short = crate::output::short_commit;
        let Some(from) = &self.from else {
            return format!(
                "{} runs nothing yet: {} is all new",
                self.service,
                short(&self.to)
            );
        };
        let range = format!("{}..{}", short(from), short(&self.to));
        let elsewhere = match self.elsewhere {
            0 => String::new(),
            n => format!("; {n} changed file(s) elsewhere"),
        };
        if !self.touched {
            return format!("{range} does not touch {}{elsewhere}", self.service);
        }
        let shown: Vec<&str> = self.files.iter().take(5).map(String::as_str).collect();
        let more = match self.files.len().saturating_sub(shown.len()) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        format!(
            "{range} touches {} in {} file(s){}: {}{more}{elsewhere}",
            self.service,
            self.files.len(),
            if self.quiet {
                ", docs or tests only"
            } else {
                ""
            },
            shown.join(", "),
        )
    }
}

/// The quiet paths a manifest without `quietPaths` has.
pub fn default_quiet() -> Vec<String> {
    ["*.md", "docs/", "test/", "tests/"]
        .map(String::from)
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(p: &[&str]) -> Filter {
        Filter::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn no_pattern_means_everything() {
        let f = filter(&[]);
        assert!(f.matches("README.md"));
        assert!(f.matches("a/b/c.py"));
    }

    #[test]
    fn directories_names_and_anchors() {
        let f = filter(&["apps/api", "lib/", "*.lock"]);
        assert!(f.matches("apps/api/main.py"));
        assert!(f.matches("apps/api"));
        assert!(f.matches("lib/db/x.py"));
        // No slash: a name at any depth.
        assert!(f.matches("bun.lock"));
        assert!(f.matches("apps/web/bun.lock"));
        assert!(!f.matches("apps/web/main.py"));
        assert!(!f.matches("apps/apiary/x"));
        // `lib` without a slash also matches a deeper `lib`; anchored not.
        assert!(f.matches("apps/web/lib/x"));
        let anchored = filter(&["/lib"]);
        assert!(anchored.matches("lib/x"));
        assert!(!anchored.matches("apps/web/lib/x"));
    }

    #[test]
    fn star_stays_in_its_directory() {
        let f = filter(&["src/*.rs"]);
        assert!(f.matches("src/main.rs"));
        assert!(!f.matches("src/app/mod.rs"));
        let deep = filter(&["src/**/*.rs"]);
        assert!(deep.matches("src/main.rs"));
        assert!(deep.matches("src/app/mod.rs"));
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let f = filter(&["apps/api", "!*.md", "apps/api/CHANGELOG.md"]);
        assert!(f.matches("apps/api/main.py"));
        assert!(!f.matches("apps/api/README.md"));
        assert!(f.matches("apps/api/CHANGELOG.md"));
        // Only exclusions: everything else is in.
        let f = filter(&["!docs"]);
        assert!(f.matches("src/x"));
        assert!(!f.matches("docs/index.md"));
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Filter::new(&["apps/[api".into()]).unwrap_err();
        assert!(err.contains("`apps/[api`"), "{err}");
        assert!(Filter::new(&["!".into()]).is_err());
        assert!(Filter::new(&["/".into()]).is_err());
    }

    #[test]
    fn changes_sort_files_and_spot_quiet_ones() {
        let paths = filter(&["apps/api", "lib"]);
        let quiet = Filter::new(&default_quiet()).unwrap();
        let files = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Changes::of(
            "api",
            Some("a"),
            "b",
            &files(&["apps/api/x.py", "apps/web/y.ts", "README.md"]),
            &paths,
            &quiet,
        );
        assert!(c.touched && !c.quiet);
        assert_eq!(c.files, ["apps/api/x.py"]);
        assert_eq!(c.elsewhere, 2);

        let c = Changes::of(
            "api",
            Some("a"),
            "b",
            &files(&["apps/web/y.ts"]),
            &paths,
            &quiet,
        );
        assert!(!c.touched && !c.quiet);
        assert!(
            c.describe().contains("does not touch api"),
            "{}",
            c.describe()
        );

        let c = Changes::of(
            "api",
            Some("a"),
            "b",
            &files(&["apps/api/docs/guide.md", "apps/api/tests/t.py"]),
            &paths,
            &quiet,
        );
        assert!(c.touched && c.quiet, "{c:?}");
        assert!(c.describe().contains("docs or tests only"));

        // Nothing deployed yet: touched, never quiet.
        let c = Changes::of("api", None, "b", &[], &paths, &quiet);
        assert!(c.touched && !c.quiet);
    }
}
