//! `berth deploy --skip-superseded`: before anything is built, ask each
//! node's host which revision of the flake it runs, and leave alone the
//! nodes whose host already runs this revision or one that contains it. A
//! host whose revision cannot be placed in the local repository is not
//! deployed either, since that could roll a newer system back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::{agent_status, destination, reach, Options, Outcome, Report};
use crate::flake::{self, NodeMeta, Relation, Revision};
use crate::output::Printer;
use crate::progress::{HostProgress, Progress};

/// What to do with one node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// Deploy it, as long as the host still runs `expect` when it activates
    /// (`None`: the host has no recorded revision to hold it to).
    Deploy {
        expect: Option<Revision>,
        why: String,
    },
    /// Leave it alone: the host runs this revision or a newer one.
    Skip(String),
    /// Do not deploy it: berth cannot tell whether that would go backwards.
    Refuse(String),
}

/// What to do when the repository lacks the host's commit.
const FETCH_HINT: &str = "hint: fetch it with the full history (`git fetch origin`; in \
    GitHub Actions, `actions/checkout` with `fetch-depth: 0`)";
/// What to do when a shallow clone cannot answer.
const SHALLOW_HINT: &str = "hint: fetch the full history (`git fetch --unshallow`; in GitHub \
    Actions, `actions/checkout` with `fetch-depth: 0`)";

/// Decides for `node`, whose host runs `host` (as recorded there), when
/// this deploy is of `this`, both compared in `repository`.
async fn verdict(
    node: &str,
    this: &Revision,
    host: Option<&Revision>,
    repository: &Path,
) -> Verdict {
    let Some(host) = host else {
        return Verdict::Deploy {
            expect: None,
            why: format!(
                "the host has no revision recorded for {node}: deploying {}",
                this.short()
            ),
        };
    };
    let (h, t, repo) = (host.short(), this.short(), repository.display());
    match flake::relation(repository, this, host).await {
        Ok(Relation::Same) => Verdict::Skip(format!("{node} already runs {t}")),
        Ok(Relation::Contains) => Verdict::Skip(format!(
            "superseded: {node} runs {h}, which already contains {t}"
        )),
        Ok(Relation::Lacks) => Verdict::Deploy {
            expect: Some(host.clone()),
            why: format!("the host runs {h}, which does not contain {t}: deploying"),
        },
        Ok(Relation::Unknown) => Verdict::Refuse(format!(
            "{node} runs {h}, which is not in the repository at {repo}: berth cannot tell \
             whether it already contains {t}, and deploying could roll a newer system back \
             ({FETCH_HINT})"
        )),
        Ok(Relation::Shallow) => Verdict::Refuse(format!(
            "{node} runs {h}, and the repository at {repo} is a shallow clone whose cut \
             history cannot show whether that already contains {t}: deploying could roll a \
             newer system back ({SHALLOW_HINT})"
        )),
        Err(err) => Verdict::Refuse(format!(
            "{err}: {} (so {node} is not deployed: it runs {h}, which may already contain {t})",
            crate::error::causes(&err)
        )),
    }
}

/// The revision the agent on `node`'s host says it runs.
async fn host_revision(node: &NodeMeta, options: &Options) -> Result<Option<Revision>, String> {
    let destination = destination(&node.name, &node.settings)?;
    let reached = reach(
        &destination,
        node.name.as_ref(),
        &node.settings,
        &options.ssh,
    )
    .await?;
    let agent = options.agent.for_node(&node.settings);
    let status = async {
        agent
            .install(&reached.host)
            .await
            .map_err(|err| format!("could not copy the berth agent to the host: {err}"))?;
        agent_status(&reached.host, &agent.program, node.name.as_ref()).await
    }
    .await;
    let _ = reached.host.close().await;
    let status = status?.ok_or("the berth agent on the host gave no status")?;
    match status["revision"].as_str() {
        None => Ok(None),
        Some(text) => Revision::new(text)
            .map(Some)
            .map_err(|err| format!("the host's agent reports a revision berth cannot read: {err}")),
    }
}

/// What checking found: the nodes to deploy, each with the revision its
/// host ran (for the agent to hold the activation to), and a report for
/// each node that is not deployed.
pub struct Checked {
    pub deploy: Vec<(NodeMeta, Option<Revision>)>,
    pub reports: Vec<Report>,
}

/// Checks every node, `parallel` at once, against `this` revision in
/// `repository`.
pub async fn check_superseded(
    nodes: Vec<NodeMeta>,
    this: &Revision,
    repository: &Path,
    options: &Arc<Options>,
    parallel: usize,
    printer: Printer,
) -> Checked {
    let progress = Progress::new(printer);
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, node) in nodes.into_iter().enumerate() {
        let (limit, options) = (limit.clone(), options.clone());
        let (this, repository): (Revision, PathBuf) = (this.clone(), repository.to_owned());
        let line = progress.host(node.name.as_ref());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let started = Instant::now();
            let verdict = check_one(&node, &this, &repository, &options, printer, &line).await;
            (index, node, verdict, started.elapsed().as_secs_f64(), line)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => done.push(result),
            Err(err) => tracing::error!("a host's check died: {err}"),
        }
    }
    done.sort_by_key(|(index, ..)| *index);
    let mut checked = Checked {
        deploy: Vec::new(),
        reports: Vec::new(),
    };
    for (_, node, verdict, seconds, line) in done {
        let outcome = match verdict {
            Verdict::Deploy { expect, .. } => {
                line.finish("checked: deploying");
                checked.deploy.push((node, expect));
                continue;
            }
            Verdict::Skip(why) => Outcome::Unchanged { why },
            Verdict::Refuse(why) => Outcome::Failed { why },
        };
        let report = Report {
            host: node.settings.target_host(&node.name).to_owned(),
            node: node.name.to_string(),
            outcome,
            deployment: None,
            seconds,
            log: Vec::new(),
        };
        printer.event("host_result", &report);
        line.finish(&report.outcome.describe());
        checked.reports.push(report);
    }
    checked
}

async fn check_one(
    node: &NodeMeta,
    this: &Revision,
    repository: &Path,
    options: &Options,
    printer: Printer,
    line: &HostProgress,
) -> Verdict {
    line.phase("asking the host which revision it runs");
    let verdict = match host_revision(node, options).await {
        Ok(host) => verdict(node.name.as_ref(), this, host.as_ref(), repository).await,
        Err(why) => Verdict::Refuse(why),
    };
    let message = match &verdict {
        Verdict::Deploy { why, .. } | Verdict::Skip(why) | Verdict::Refuse(why) => why,
    };
    printer.event(
        "phase",
        &serde_json::json!({ "node": node.name.as_ref(), "phase": "supersede", "message": message }),
    );
    line.phase(message);
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::git;

    /// The messages people read, on a real repository of two commits.
    #[tokio::test]
    async fn git_verdicts_say_why() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        git(repo, &["init", "-q"]);
        let mut revs = Vec::new();
        for n in ["one", "two"] {
            git(repo, &["commit", "-q", "--allow-empty", "-m", n]);
            revs.push(Revision::new(git(repo, &["rev-parse", "HEAD"])).unwrap());
        }
        let [old, new] = &revs[..] else {
            unreachable!()
        };
        let (o, n) = (old.short(), new.short());

        assert_eq!(
            verdict("web1", old, Some(new), repo).await,
            Verdict::Skip(format!(
                "superseded: web1 runs {n}, which already contains {o}"
            ))
        );
        assert_eq!(
            verdict("web1", new, Some(new), repo).await,
            Verdict::Skip(format!("web1 already runs {n}"))
        );
        assert!(matches!(
            verdict("web1", new, Some(old), repo).await,
            Verdict::Deploy { expect: Some(e), .. } if &e == old
        ));
        assert!(matches!(
            verdict("web1", new, None, repo).await,
            Verdict::Deploy { expect: None, .. }
        ));
        let elsewhere = Revision::new("e".repeat(40)).unwrap();
        let Verdict::Refuse(why) = verdict("web1", old, Some(&elsewhere), repo).await else {
            panic!("a revision not in the repository must refuse");
        };
        assert!(why.contains("is not in the repository"), "{why}");
        assert!(why.contains("fetch-depth: 0"), "{why}");
    }
}
