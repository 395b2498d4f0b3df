//! The work directory and the repository in it: cloning at the right commit
//! before the agent runs, committing and pushing its changes after.
//!
//! Layout under the work directory: `repo/` (the clone, the agent's working
//! directory), `prompt.md` (the trigger's text) and `summary.md` (where the
//! agent writes its summary). The two files live outside the clone so they
//! are never committed.
//!
//! A review fetches the pull request's head commit (and its base branch, when
//! given, so the agent can diff against the merge base) with full history and
//! checks it out detached. An implement task clones the base branch shallowly
//! (depth 1 is all a new branch needs) and creates `berth/issue-<n>` on it. A
//! follow-up on Berth's own pull request clones that `berth/issue-<n>` branch
//! instead, commits on top of it and pushes fast-forward only: when the branch
//! moved while the agent ran, the push is refused and nothing is overwritten.

use std::path::{Path, PathBuf};

use core_types::{TaskKind, WorkerOptions, WorkerTask, env_names};

use crate::error::{Halt, WorkerError};
use crate::git::Git;
use crate::output::Output;
use crate::process::Limits;

/// Where a task's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) work_dir: PathBuf,
    pub(crate) repo: PathBuf,
    pub(crate) prompt_file: PathBuf,
    pub(crate) summary_file: PathBuf,
}

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkout {
    /// The commit checked out.
    pub(crate) head: String,
    /// An implement task's new branch.
    pub(crate) branch: Option<String>,
    /// The base branch, when known.
    pub(crate) base_ref: Option<String>,
    /// A follow-up: `branch` is Berth's existing branch, pushed without force.
    pub(crate) follow_up: bool,
}

/// An implement task's pushed result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) branch: String,
    pub(crate) commit: String,
}

/// The branch an implement task pushes.
pub(crate) fn implement_branch(number: u64) -> String {
    core_types::follow_up::implement_branch(number)
}

impl Layout {
    pub(crate) fn new(work_dir: &Path) -> Self {
        Self {
            work_dir: work_dir.to_owned(),
            repo: work_dir.join("repo"),
            prompt_file: work_dir.join("prompt.md"),
            summary_file: work_dir.join("summary.md"),
        }
    }

    /// Creates the work directory, writes the prompt, and clears what a
    /// previous run in the same directory may have left.
    pub(crate) fn create(&self, prompt: &str) -> Result<(), WorkerError> {
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| WorkerError::WorkDir { path, source }
        };
        std::fs::create_dir_all(&self.work_dir).map_err(failed(&self.work_dir))?;
        if self.repo.exists() {
            std::fs::remove_dir_all(&self.repo).map_err(failed(&self.repo))?;
        }
        if self.summary_file.exists() {
            std::fs::remove_file(&self.summary_file).map_err(failed(&self.summary_file))?;
        }
        std::fs::write(&self.prompt_file, prompt).map_err(failed(&self.prompt_file))
    }

    /// Removes the clone, for a fresh start after a failed one.
    fn clear_repo(&self) -> Result<(), WorkerError> {
        if self.repo.exists() {
            std::fs::remove_dir_all(&self.repo)
                .map_err(|source| WorkerError::WorkDir { path: self.repo.clone(), source })?;
        }
        Ok(())
    }
}

/// Refuses a ref that git could read as an option or a refspec.
pub(crate) fn check_ref(variable: &'static str, value: &str) -> Result<(), WorkerError> {
    let reason = if value.starts_with('-') {
        Some("it starts with '-'")
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it holds whitespace or control characters")
    } else if value.contains([':', '?', '*', '[', '\\', '^', '~'])
        || value.contains("..")
        || value.contains("@{")
    {
        Some("it holds characters git does not allow in a ref name")
    } else if value.ends_with('/') || value.ends_with(".lock") || value.starts_with('/') {
        Some("it is not a valid ref name")
    } else {
        None
    };
    match reason {
        Some(reason) => {
            Err(WorkerError::InvalidVariable { variable, reason: format!("{value:?}: {reason}") })
        }
        None => Ok(()),
    }
}

/// `refs/heads/x` or `x` as a branch's short name.
fn short_branch(reference: &str) -> &str {
    reference.strip_prefix("refs/heads/").unwrap_or(reference)
}

/// Clones the repository at the task's commit into `layout.repo`. With a
/// mirror (the clone cache, mounted read-only), its objects are borrowed and
/// only what it lacks is fetched; when that fails for any reason but the
/// deadline or a cancel, the clone starts over without it, and the log says why.
pub(crate) async fn prepare(
    task: &WorkerTask,
    options: &WorkerOptions,
    git: &Git,
    layout: &Layout,
    limits: &Limits,
    output: &Output,
    mirror: Option<&Path>,
) -> Result<Checkout, Halt> {
    if let Some(mirror) = mirror {
        match crate::cache::usable_mirror(mirror) {
            Err(why) => output.note(&format!("the clone cache cannot be used: {why}; cloning without it")),
            Ok(()) => {
                output.note(&format!("borrowing objects from the clone cache at {}", mirror.display()));
                match prepare_kind(task, options, git, layout, limits, output, Some(mirror)).await {
                    Ok(checkout) => return Ok(checkout),
                    Err(Halt::Failed(err)) => {
                        output.note(&format!(
                            "the clone cache could not serve this task ({}); cloning without it",
                            err.chain()
                        ));
                        layout.clear_repo()?;
                    }
                    Err(halt) => return Err(halt),
                }
            }
        }
    }
    prepare_kind(task, options, git, layout, limits, output, None).await
}

async fn prepare_kind(
    task: &WorkerTask,
    options: &WorkerOptions,
    git: &Git,
    layout: &Layout,
    limits: &Limits,
    output: &Output,
    mirror: Option<&Path>,
) -> Result<Checkout, Halt> {
    if let Some(mirror) = mirror {
        // Every object a branch of the mirror names must read: a damaged
        // pack (cut short, say) fails here rather than half-way through a clone.
        let mirror_dir = mirror.to_string_lossy().into_owned();
        git.run(
            &layout.work_dir,
            &["--git-dir", &mirror_dir, "rev-list", "--max-count=1", "--all"],
            "reading the mirror",
            limits,
            output,
        )
        .await?;
    }
    match task.kind {
        TaskKind::Review => {
            prepare_review(task, options.base_ref.as_deref(), git, layout, limits, output, mirror).await
        }
        // A follow-up clones its branch at depth 1: a mirror would save little.
        TaskKind::Implement if options.follow_up => {
            prepare_follow_up(task, git, layout, limits, output).await
        }
        TaskKind::Implement => prepare_implement(task, git, layout, limits, output, mirror).await,
    }
}

/// Points the new clone's object store at the mirror's: git reads objects
/// from both and writes only its own.
fn borrow_objects(layout: &Layout, mirror: &Path) -> Result<(), WorkerError> {
    let info = layout.repo.join(".git/objects/info");
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| WorkerError::WorkDir { path, source }
    };
    std::fs::create_dir_all(&info).map_err(failed(&info))?;
    let alternates = info.join("alternates");
    std::fs::write(&alternates, format!("{}\n", mirror.join("objects").display()))
        .map_err(failed(&alternates))
}

async fn prepare_review(
    task: &WorkerTask,
    base_ref: Option<&str>,
    git: &Git,
    layout: &Layout,
    limits: &Limits,
    output: &Output,
    mirror: Option<&Path>,
) -> Result<Checkout, Halt> {
    let repo_path = layout.repo.to_string_lossy().into_owned();
    git.run(&layout.work_dir, &["init", "--quiet", "--", &repo_path], "git init", limits, output).await?;
    let repo = layout.repo.as_path();
    if let Some(mirror) = mirror {
        borrow_objects(layout, mirror)?;
        if let Some(sha) = &task.head_sha {
            let mirror_dir = mirror.to_string_lossy().into_owned();
            let commit = format!("{sha}^{{commit}}");
            let has = git
                .run(
                    repo,
                    &["--git-dir", &mirror_dir, "cat-file", "-e", &commit],
                    "looking in the mirror",
                    limits,
                    output,
                )
                .await;
            match has {
                Ok(_) => output.note(&format!("the clone cache has {sha}")),
                Err(Halt::Failed(_)) => {
                    output.note(&format!("the clone cache lacks {sha}; fetching what it lacks from origin"));
                }
                Err(halt) => return Err(halt),
            }
        }
    }
    git.run(repo, &["remote", "add", "origin", &task.clone_url], "git remote add", limits, output).await?;
    let fetch = |what: &str| -> Vec<String> {
        ["fetch", "--quiet", "--no-tags", "--", "origin", what].map(str::to_owned).to_vec()
    };
    let run = |args: Vec<String>, step: &'static str| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        git.run(repo, &args, step, limits, output).await
    };
    let target = match (&task.head_sha, &task.head_ref) {
        (Some(sha), head_ref) => match run(fetch(sha), "fetching the head commit").await {
            Ok(_) => sha.clone(),
            Err(Halt::Failed(err)) => {
                let Some(head_ref) = head_ref else { return Err(Halt::Failed(err)) };
                // Not every server serves a commit by id; the branch holds it.
                output.note(&format!(
                    "fetching {sha} by id failed ({}); fetching {head_ref} instead",
                    err.chain()
                ));
                run(fetch(head_ref), "fetching the head branch").await?;
                let commit = format!("{sha}^{{commit}}");
                if run(["cat-file", "-e", &commit].map(str::to_owned).to_vec(), "finding the head commit")
                    .await
                    .is_err()
                {
                    return Err(Halt::Failed(WorkerError::InvalidVariable {
                        variable: env_names::BERTH_HEAD_SHA,
                        reason: format!("commit {sha} is not on {head_ref} at {}", task.clone_url),
                    }));
                }
                sha.clone()
            }
            Err(halt) => return Err(halt),
        },
        (None, Some(head_ref)) => {
            run(fetch(head_ref), "fetching the head branch").await?;
            "FETCH_HEAD".to_owned()
        }
        (None, None) => {
            return Err(Halt::Failed(WorkerError::InvalidVariable {
                variable: env_names::BERTH_HEAD_SHA,
                reason: format!(
                    "a review needs {} or {}",
                    env_names::BERTH_HEAD_SHA,
                    env_names::BERTH_HEAD_REF
                ),
            }));
        }
    };
    if let Some(base) = base_ref {
        let name = short_branch(base);
        let source = if base.starts_with("refs/") { base.to_owned() } else { format!("refs/heads/{base}") };
        run(fetch(&format!("+{source}:refs/remotes/origin/{name}")), "fetching the base branch").await?;
    }
    run(
        ["checkout", "--quiet", "--detach", &target].map(str::to_owned).to_vec(),
        "checking out the head commit",
    )
    .await?;
    let head = run(["rev-parse", "HEAD"].map(str::to_owned).to_vec(), "reading the head commit").await?;
    Ok(Checkout {
        head,
        branch: None,
        base_ref: base_ref.map(|base| short_branch(base).to_owned()),
        follow_up: false,
    })
}

async fn prepare_implement(
    task: &WorkerTask,
    git: &Git,
    layout: &Layout,
    limits: &Limits,
    output: &Output,
    mirror: Option<&Path>,
) -> Result<Checkout, Halt> {
    let repo_path = layout.repo.to_string_lossy().into_owned();
    match (mirror, &task.head_ref) {
        // Borrowing: init, point at the mirror, fetch the base branch (all
        // local but what the mirror lacks) and check it out as a clone
        // would, with full history since it costs nothing. A `git clone
        // --reference` would also check every object it borrows (a second or
        // more on a large repository).
        (Some(mirror), Some(base)) => {
            let name = short_branch(base);
            git.run(&layout.work_dir, &["init", "--quiet", "--", &repo_path], "git init", limits, output)
                .await?;
            borrow_objects(layout, mirror)?;
            let repo = layout.repo.as_path();
            git.run(repo, &["remote", "add", "origin", &task.clone_url], "git remote add", limits, output)
                .await?;
            let refspec = format!("+refs/heads/{name}:refs/remotes/origin/{name}");
            git.run(
                repo,
                &["fetch", "--quiet", "--no-tags", "--", "origin", &refspec],
                "fetching the base branch",
                limits,
                output,
            )
            .await?;
            let upstream = format!("origin/{name}");
            git.run(
                repo,
                &["checkout", "--quiet", "-b", name, "--track", &upstream],
                "checking out the base branch",
                limits,
                output,
            )
            .await?;
        }
        (mirror, _) => {
            let mirror_dir = mirror.map(|mirror| mirror.to_string_lossy().into_owned());
            let mut clone = vec!["clone", "--quiet", "--no-tags", "--single-branch"];
            match &mirror_dir {
                // The whole history is borrowed, so none needs cutting off.
                Some(mirror_dir) => clone.extend(["--reference", mirror_dir.as_str()]),
                None => clone.push("--depth=1"),
            }
            if let Some(base) = &task.head_ref {
                clone.extend(["--branch", short_branch(base)]);
            }
            clone.extend(["--", &task.clone_url, &repo_path]);
            git.run(&layout.work_dir, &clone, "cloning the base branch", limits, output).await?;
        }
    }
    let repo = layout.repo.as_path();
    let base = git
        .run(repo, &["rev-parse", "--abbrev-ref", "HEAD"], "reading the base branch", limits, output)
        .await?;
    let branch = implement_branch(task.number);
    git.run(repo, &["checkout", "--quiet", "-b", &branch], "creating the task branch", limits, output)
        .await?;
    let head = git.run(repo, &["rev-parse", "HEAD"], "reading the base commit", limits, output).await?;
    Ok(Checkout { head, branch: Some(branch), base_ref: Some(base), follow_up: false })
}

/// A follow-up: clones Berth's branch `berth/issue-<n>` of the pull request
/// (`BERTH_HEAD_REF`) and stays on it, so the agent's commit goes on top.
async fn prepare_follow_up(
    task: &WorkerTask,
    git: &Git,
    layout: &Layout,
    limits: &Limits,
    output: &Output,
) -> Result<Checkout, Halt> {
    let branch = task
        .head_ref
        .as_deref()
        .map(short_branch)
        .filter(|branch| core_types::follow_up::issue_of_branch(branch).is_some())
        .ok_or_else(|| WorkerError::InvalidVariable {
            variable: env_names::BERTH_HEAD_REF,
            reason: format!(
                "{:?}: a follow-up continues only Berth's own branch {}<n>",
                task.head_ref.as_deref().unwrap_or(""),
                core_types::follow_up::BRANCH_PREFIX
            ),
        })?
        .to_owned();
    let repo_path = layout.repo.to_string_lossy().into_owned();
    let clone = [
        "clone",
        "--quiet",
        "--no-tags",
        "--single-branch",
        "--depth=1",
        "--branch",
        &branch,
        "--",
        &task.clone_url,
        &repo_path,
    ];
    git.run(&layout.work_dir, &clone, "cloning the pull request's branch", limits, output).await?;
    let repo = layout.repo.as_path();
    let head = git.run(repo, &["rev-parse", "HEAD"], "reading the branch's head", limits, output).await?;
    if let Some(sha) = task.head_sha.as_deref().filter(|sha| !head.starts_with(*sha)) {
        output.note(&format!("{branch} moved from {sha} to {head} since dispatch; continuing from {head}"));
    }
    Ok(Checkout { head, branch: Some(branch), base_ref: None, follow_up: true })
}

/// Commits what the agent left and pushes the task branch. `Ok(None)` when
/// there is nothing to push (no changes, no new commits).
pub(crate) async fn publish(
    task: &WorkerTask,
    checkout: &Checkout,
    git: &Git,
    layout: &Layout,
    limits: &Limits,
    output: &Output,
) -> Result<Option<Published>, Halt> {
    let repo = layout.repo.as_path();
    let branch = checkout.branch.clone().unwrap_or_else(|| implement_branch(task.number));
    let status = git
        .run(
            repo,
            &["status", "--porcelain", "--untracked-files=all"],
            "reading the agent's changes",
            limits,
            output,
        )
        .await?;
    if !status.is_empty() {
        git.run(repo, &["add", "--all"], "staging the agent's changes", limits, output).await?;
        let message = commit_message(task);
        git.run(repo, &["commit", "--quiet", "--no-verify", "-m", &message], "committing", limits, output)
            .await?;
    }
    let commit = git.run(repo, &["rev-parse", "HEAD"], "reading the new commit", limits, output).await?;
    if commit == checkout.head {
        return Ok(None);
    }
    output.note(&format!("pushing {branch} at {commit}"));
    // To the clone URL, not `origin`: the agent may have repointed its remote.
    let refspec = format!("HEAD:refs/heads/{branch}");
    if checkout.follow_up {
        // Never forced: the pull request's branch may hold commits of people
        // too, and a branch that moved while the agent ran is left as it is.
        let pushed = git
            .run(
                repo,
                &["push", "--quiet", "--no-verify", "--", &task.clone_url, &refspec],
                "pushing",
                limits,
                output,
            )
            .await;
        return match pushed {
            Ok(_) => Ok(Some(Published { branch, commit })),
            Err(Halt::Failed(err)) => {
                let moved = branch_moved(task, checkout, &branch, git, layout, limits, output).await;
                Err(Halt::Failed(moved.unwrap_or(err)))
            }
            Err(halt) => Err(halt),
        };
    }
    // Forced: the branch is Berth's own, and a new run replaces the last one.
    git.run(
        repo,
        &["push", "--quiet", "--no-verify", "--force", "--", &task.clone_url, &refspec],
        "pushing",
        limits,
        output,
    )
    .await?;
    Ok(Some(Published { branch, commit }))
}

/// After a refused follow-up push: [`WorkerError::BranchMoved`] when the
/// branch is no longer where the task cloned it, else `None` (the push
/// failed for another reason, which the caller reports).
async fn branch_moved(
    task: &WorkerTask,
    checkout: &Checkout,
    branch: &str,
    git: &Git,
    layout: &Layout,
    limits: &Limits,
    output: &Output,
) -> Option<WorkerError> {
    let reference = format!("refs/heads/{branch}");
    let listed = git
        .run(
            &layout.repo,
            &["ls-remote", "--", &task.clone_url, &reference],
            "reading the branch's head",
            limits,
            output,
        )
        .await
        .ok()?;
    let now = listed.split_whitespace().next().unwrap_or("(deleted)").to_owned();
    (now != checkout.head).then(|| WorkerError::BranchMoved {
        branch: branch.to_owned(),
        cloned: checkout.head.clone(),
        now,
    })
}

/// The message of an implement task's commit.
pub(crate) fn commit_message(task: &WorkerTask) -> String {
    format!(
        "berth: implement #{number}\n\nChanges made by the agent for {repo}#{number} (berth task {task_id}).\n",
        number = task.number,
        repo = task.repo,
        task_id = task.task_id,
    )
}
