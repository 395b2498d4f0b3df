//! Following up on Berth's own pull request (`/berth implement` on it): at
//! dispatch, the check that its head is Berth's branch `berth/issue-<n>`
//! (the comment's payload does not name the branch, so the trigger rules
//! cannot), and its review comments as the prompt's context.

use core_types::follow_up::{BRANCH_PREFIX, ReviewComment, issue_of_branch};
use domain::tasks::TaskRecord;
use github::{GitHubApi, GitHubError, PullHead};

use crate::Ending;

/// The head a follow-up continues: the pull request's head commit, its
/// branch and its base, or the refusal that ends the task when the pull
/// request is not Berth's own (or not open, or from a fork).
pub(crate) async fn head<G: GitHubApi>(
    github: &G,
    installation: u64,
    task: &TaskRecord,
) -> Result<(String, Option<String>, Option<String>), Ending> {
    let pull = github
        .pull_head(installation, &task.repo, task.number)
        .await
        .map_err(|err: GitHubError| Ending::Failed(err.to_string()))?;
    check(task, &pull).map_err(Ending::Refused)?;
    Ok((pull.sha, Some(pull.branch), pull.base))
}

/// Why a follow-up on `pull` is refused, if it is.
pub(crate) fn check(task: &TaskRecord, pull: &PullHead) -> Result<(), String> {
    let number = task.number;
    match &pull.repo {
        None => return Err(format!("pull request #{number} comes from a deleted fork")),
        Some(head) if !head.eq_ignore_ascii_case(&task.repo) => {
            return Err(format!("pull request #{number} comes from the fork {head}; forks get no task"));
        }
        Some(_) => {}
    }
    if pull.state != "open" {
        return Err(format!("pull request #{number} is closed"));
    }
    if issue_of_branch(&pull.branch).is_none() {
        return Err(format!(
            "pull request #{number} is not one Berth opened: its head branch is `{}`, not `{BRANCH_PREFIX}<n>`. \
             `/berth implement` on a pull request follows up only on Berth's own; ask for it on an issue instead",
            pull.branch.replace('`', "'")
        ));
    }
    Ok(())
}

/// A follow-up's review comments; none for any other task. A GitHub that
/// does not answer fails the task rather than running it without them.
pub(crate) async fn review_comments<G: GitHubApi>(
    github: &G,
    installation: u64,
    task: &TaskRecord,
) -> Result<Vec<ReviewComment>, Ending> {
    if !task.follow_up {
        return Ok(Vec::new());
    }
    github
        .review_comments(installation, &task.repo, task.number)
        .await
        .map_err(|err| Ending::Failed(format!("could not read the pull request's review comments: {err}")))
}
