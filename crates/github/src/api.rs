//! The seam the runner drives GitHub through. [`GitHub`] is the real App
//! over octocrab; the runner's unit tests implement it in memory. Every
//! method is one idempotent step of preparing or reporting a task, in
//! typed models, so a second implementation needs no JSON.

use std::future::Future;

use core_types::follow_up::ReviewComment;
use core_types::{Secret, TaskId, TaskKind};

use crate::{CheckRunOutput, CheckRunStatus, DeliveryPage, GitHub, GitHubError, NewCheckRun, PullHead};

/// What the runner asks of GitHub.
pub trait GitHubApi: Clone + Send + Sync + 'static {
    /// The installation that owns `repo`.
    fn repo_installation(&self, repo: &str) -> impl Future<Output = Result<u64, GitHubError>> + Send;
    /// A token for one worker: this repository only, the permissions of its kind.
    fn worker_token(
        &self,
        installation: u64,
        repo: &str,
        kind: TaskKind,
    ) -> impl Future<Output = Result<Secret, GitHubError>> + Send;
    /// A pull request's head.
    fn pull_head(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
    ) -> impl Future<Output = Result<PullHead, GitHubError>> + Send;
    /// A branch's head commit.
    fn branch_head(
        &self,
        installation: u64,
        repo: &str,
        branch: &str,
    ) -> impl Future<Output = Result<String, GitHubError>> + Send;
    /// Opens the task's check run (queued or in progress), or finds the one
    /// made before (`asked_before`: an earlier attempt may have made it unheard).
    fn start_check_run(
        &self,
        installation: u64,
        repo: &str,
        run: &NewCheckRun<'_>,
        asked_before: bool,
    ) -> impl Future<Output = Result<u64, GitHubError>> + Send;
    /// Changes an open check run's output, and its status if given; one attempt.
    fn update_check_run(
        &self,
        installation: u64,
        repo: &str,
        check_run: u64,
        status: Option<CheckRunStatus>,
        output: &CheckRunOutput,
    ) -> impl Future<Output = Result<(), GitHubError>> + Send;
    /// Completes a check run.
    fn complete_check_run(
        &self,
        installation: u64,
        repo: &str,
        check_run: u64,
        conclusion: &str,
        output: &CheckRunOutput,
    ) -> impl Future<Output = Result<(), GitHubError>> + Send;
    /// Reacts to a comment.
    fn react(
        &self,
        installation: u64,
        repo: &str,
        comment_id: u64,
        content: &str,
    ) -> impl Future<Output = Result<(), GitHubError>> + Send;
    /// Revokes a worker token.
    fn revoke_token(&self, token: &Secret) -> impl Future<Output = Result<(), GitHubError>> + Send;
    /// Posts or edits the task's result comment; returns its id.
    fn upsert_comment(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
        task_id: &TaskId,
        body: &str,
    ) -> impl Future<Output = Result<u64, GitHubError>> + Send;
    /// Posts or edits the answer to a refused command, keyed by `key`
    /// (`comment-<id>`); returns its id.
    fn upsert_notice(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
        key: &str,
        body: &str,
    ) -> impl Future<Output = Result<u64, GitHubError>> + Send;
    /// A pull request's review comments (on lines of its diff), oldest first.
    fn review_comments(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
    ) -> impl Future<Output = Result<Vec<ReviewComment>, GitHubError>> + Send;
    /// Opens the pull request of a pushed branch, or finds the open one;
    /// returns its number and address.
    fn ensure_pull_request(
        &self,
        installation: u64,
        repo: &str,
        branch: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> impl Future<Output = Result<(u64, String), GitHubError>> + Send;
    /// One page of the App's webhook deliveries, newest first, from
    /// `cursor` (`None`: the newest page).
    fn deliveries_page(
        &self,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<DeliveryPage, GitHubError>> + Send;
    /// Asks GitHub to deliver one delivery again.
    fn redeliver(&self, delivery_id: u64) -> impl Future<Output = Result<(), GitHubError>> + Send;
}

impl GitHubApi for GitHub {
    async fn repo_installation(&self, repo: &str) -> Result<u64, GitHubError> {
        GitHub::repo_installation(self, repo).await
    }
    async fn worker_token(
        &self,
        installation: u64,
        repo: &str,
        kind: TaskKind,
    ) -> Result<Secret, GitHubError> {
        GitHub::worker_token(self, installation, repo, kind).await
    }
    async fn pull_head(&self, installation: u64, repo: &str, number: u64) -> Result<PullHead, GitHubError> {
        GitHub::pull_head(self, installation, repo, number).await
    }
    async fn branch_head(&self, installation: u64, repo: &str, branch: &str) -> Result<String, GitHubError> {
        GitHub::branch_head(self, installation, repo, branch).await
    }
    async fn start_check_run(
        &self,
        installation: u64,
        repo: &str,
        run: &NewCheckRun<'_>,
        asked_before: bool,
    ) -> Result<u64, GitHubError> {
        GitHub::start_check_run(self, installation, repo, run, asked_before).await
    }
    async fn update_check_run(
        &self,
        installation: u64,
        repo: &str,
        check_run: u64,
        status: Option<CheckRunStatus>,
        output: &CheckRunOutput,
    ) -> Result<(), GitHubError> {
        GitHub::update_check_run(self, installation, repo, check_run, status, output).await
    }
    async fn complete_check_run(
        &self,
        installation: u64,
        repo: &str,
        check_run: u64,
        conclusion: &str,
        output: &CheckRunOutput,
    ) -> Result<(), GitHubError> {
        GitHub::complete_check_run(self, installation, repo, check_run, conclusion, output).await
    }
    async fn react(
        &self,
        installation: u64,
        repo: &str,
        comment_id: u64,
        content: &str,
    ) -> Result<(), GitHubError> {
        GitHub::react(self, installation, repo, comment_id, content).await
    }
    async fn revoke_token(&self, token: &Secret) -> Result<(), GitHubError> {
        GitHub::revoke_token(self, token).await
    }
    async fn upsert_comment(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
        task_id: &TaskId,
        body: &str,
    ) -> Result<u64, GitHubError> {
        GitHub::upsert_comment(self, installation, repo, number, task_id, body).await
    }
    async fn upsert_notice(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
        key: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        GitHub::upsert_notice(self, installation, repo, number, key, body).await
    }
    async fn review_comments(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
    ) -> Result<Vec<ReviewComment>, GitHubError> {
        GitHub::review_comments(self, installation, repo, number).await
    }
    async fn ensure_pull_request(
        &self,
        installation: u64,
        repo: &str,
        branch: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<(u64, String), GitHubError> {
        GitHub::ensure_pull_request(self, installation, repo, branch, base, title, body).await
    }
    async fn deliveries_page(&self, cursor: Option<&str>) -> Result<DeliveryPage, GitHubError> {
        GitHub::deliveries_page(self, cursor).await
    }
    async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError> {
        GitHub::redeliver(self, delivery_id).await
    }
}
