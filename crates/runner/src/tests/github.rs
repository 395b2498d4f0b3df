//! GitHub in memory, for the runner's unit tests: it records each write
//! the runner makes and can be told to fail.

use std::sync::{Arc, Mutex};

use core_types::follow_up::ReviewComment;
use core_types::{Secret, TaskId, TaskKind};
use github::{
    CheckRunOutput, CheckRunStatus, Delivery, DeliveryPage, GitHubApi, GitHubError, NewCheckRun, PullHead,
};

/// What the fake GitHub has seen and holds.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Check runs made: (id, repo, head sha, task id).
    pub check_runs: Vec<(u64, String, String, TaskId)>,
    /// The status each check run was opened with, in order: (id, status).
    pub opened: Vec<(u64, CheckRunStatus)>,
    /// Edits of open check runs, in order: (id, status, output).
    pub updates: Vec<(u64, Option<CheckRunStatus>, CheckRunOutput)>,
    /// Check runs completed: (id, conclusion, title).
    pub completed: Vec<(u64, String, String)>,
    /// The output of each completion, in order.
    pub completed_outputs: Vec<CheckRunOutput>,
    /// Result comments, by task: (task id, body). An edit replaces the body.
    pub comments: Vec<(TaskId, String)>,
    /// Tokens made and revoked.
    pub tokens_made: usize,
    pub tokens_revoked: usize,
    /// Reactions: (comment id, content).
    pub reactions: Vec<(u64, String)>,
    /// Pull requests opened: (branch, base).
    pub pull_requests: Vec<(String, String)>,
    /// Deliveries asked to be sent again.
    pub redelivered: Vec<u64>,
    /// The cursor of each page of the delivery log read (`None`: the first).
    pub delivery_pages: Vec<Option<String>>,
    /// Answers to refused commands, by key: (key, issue or pull request, body).
    /// Posting a key again replaces its body.
    pub notices: Vec<(String, u64, String)>,
    /// Times a notice was posted or edited.
    pub notice_writes: usize,
}

/// Switches and canned answers.
#[derive(Debug)]
pub(crate) struct Script {
    /// Every call fails as unavailable while set.
    pub down: bool,
    /// The head repository of pull requests (`None`: a deleted fork).
    pub pull_repo: Option<String>,
    /// `open` or `closed`.
    pub pull_state: String,
    /// The delivery log, listed newest (largest id) first, a hundred a page.
    pub deliveries: Vec<Delivery>,
    /// The head branch of pull requests (`None`: `topic-<number>`).
    pub pull_branch: Option<String>,
    /// The review comments of every pull request.
    pub review_comments: Vec<ReviewComment>,
    /// The next this many redelivery requests fail as unavailable.
    pub failing_redeliveries: usize,
    /// Deliveries whose redelivery GitHub refuses (422).
    pub refused_redeliveries: Vec<u64>,
    /// A page after the first links to its own cursor again.
    pub stuck_cursor: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            down: false,
            pull_repo: Some(String::new()),
            pull_state: "open".to_owned(),
            deliveries: Vec::new(),
            pull_branch: None,
            review_comments: Vec::new(),
            failing_redeliveries: 0,
            refused_redeliveries: Vec::new(),
            stuck_cursor: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryGitHub {
    pub seen: Arc<Mutex<Seen>>,
    pub script: Arc<Mutex<Script>>,
}

impl MemoryGitHub {
    pub(crate) fn seen<T>(&self, look: impl FnOnce(&Seen) -> T) -> T {
        look(&self.seen.lock().unwrap())
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.script.lock().unwrap().down = down;
    }

    fn call(&self, what: &str) -> Result<(), GitHubError> {
        if self.script.lock().unwrap().down {
            return Err(GitHubError::Unavailable {
                what: what.to_owned(),
                attempts: 1,
                last: "503 Service Unavailable".to_owned(),
            });
        }
        Ok(())
    }
}

impl GitHubApi for MemoryGitHub {
    async fn repo_installation(&self, _repo: &str) -> Result<u64, GitHubError> {
        self.call("find the installation")?;
        Ok(7)
    }

    async fn worker_token(
        &self,
        _installation: u64,
        _repo: &str,
        _kind: TaskKind,
    ) -> Result<Secret, GitHubError> {
        self.call("make a worker token")?;
        let mut seen = self.seen.lock().unwrap();
        seen.tokens_made += 1;
        Ok(Secret::new(format!("ghs_fake_token_{:04}", seen.tokens_made)))
    }

    async fn pull_head(&self, _installation: u64, repo: &str, number: u64) -> Result<PullHead, GitHubError> {
        self.call("read the pull request")?;
        let script = self.script.lock().unwrap();
        let head_repo = script
            .pull_repo
            .as_ref()
            .map(|named| if named.is_empty() { repo.to_owned() } else { named.clone() });
        Ok(PullHead {
            sha: format!("{number:040x}"),
            branch: script.pull_branch.clone().unwrap_or_else(|| format!("topic-{number}")),
            repo: head_repo,
            state: script.pull_state.clone(),
            base: Some("main".to_owned()),
        })
    }

    async fn branch_head(
        &self,
        _installation: u64,
        _repo: &str,
        _branch: &str,
    ) -> Result<String, GitHubError> {
        self.call("read the branch")?;
        Ok("b".repeat(40))
    }

    async fn start_check_run(
        &self,
        _installation: u64,
        repo: &str,
        run: &NewCheckRun<'_>,
        _asked_before: bool,
    ) -> Result<u64, GitHubError> {
        self.call("create the check run")?;
        let mut seen = self.seen.lock().unwrap();
        if let Some((id, ..)) = seen.check_runs.iter().find(|(_, _, _, task)| task == run.task_id) {
            return Ok(*id);
        }
        let id = seen.check_runs.len() as u64 + 100;
        seen.check_runs.push((id, repo.to_owned(), run.head_sha.to_owned(), run.task_id.clone()));
        seen.opened.push((id, run.status));
        Ok(id)
    }

    async fn update_check_run(
        &self,
        _installation: u64,
        _repo: &str,
        check_run: u64,
        status: Option<CheckRunStatus>,
        output: &CheckRunOutput,
    ) -> Result<(), GitHubError> {
        self.call("update the check run")?;
        let mut seen = self.seen.lock().unwrap();
        assert!(
            !seen.completed.iter().any(|(id, ..)| *id == check_run),
            "check run {check_run} edited after it was completed"
        );
        seen.updates.push((check_run, status, output.clone()));
        Ok(())
    }

    async fn complete_check_run(
        &self,
        _installation: u64,
        _repo: &str,
        check_run: u64,
        conclusion: &str,
        output: &CheckRunOutput,
    ) -> Result<(), GitHubError> {
        self.call("complete the check run")?;
        let mut seen = self.seen.lock().unwrap();
        seen.completed.push((check_run, conclusion.to_owned(), output.title.clone()));
        seen.completed_outputs.push(output.clone());
        Ok(())
    }

    async fn react(
        &self,
        _installation: u64,
        _repo: &str,
        comment_id: u64,
        content: &str,
    ) -> Result<(), GitHubError> {
        self.call("react")?;
        self.seen.lock().unwrap().reactions.push((comment_id, content.to_owned()));
        Ok(())
    }

    async fn revoke_token(&self, _token: &Secret) -> Result<(), GitHubError> {
        self.call("revoke a token")?;
        self.seen.lock().unwrap().tokens_revoked += 1;
        Ok(())
    }

    async fn upsert_comment(
        &self,
        _installation: u64,
        _repo: &str,
        _number: u64,
        task_id: &TaskId,
        body: &str,
    ) -> Result<u64, GitHubError> {
        self.call("write the result comment")?;
        let mut seen = self.seen.lock().unwrap();
        match seen.comments.iter_mut().position(|(task, _)| task == task_id) {
            Some(at) => {
                seen.comments[at].1 = body.to_owned();
                Ok(at as u64 + 1)
            }
            None => {
                seen.comments.push((task_id.clone(), body.to_owned()));
                Ok(seen.comments.len() as u64)
            }
        }
    }

    async fn upsert_notice(
        &self,
        _installation: u64,
        _repo: &str,
        number: u64,
        key: &str,
        body: &str,
    ) -> Result<u64, GitHubError> {
        self.call("answer a refused command")?;
        let mut seen = self.seen.lock().unwrap();
        seen.notice_writes += 1;
        match seen.notices.iter_mut().position(|(known, ..)| known == key) {
            Some(at) => {
                seen.notices[at].2 = body.to_owned();
                Ok(at as u64 + 1)
            }
            None => {
                seen.notices.push((key.to_owned(), number, body.to_owned()));
                Ok(seen.notices.len() as u64)
            }
        }
    }

    async fn review_comments(
        &self,
        _installation: u64,
        _repo: &str,
        _number: u64,
    ) -> Result<Vec<ReviewComment>, GitHubError> {
        self.call("read the review comments")?;
        Ok(self.script.lock().unwrap().review_comments.clone())
    }

    async fn ensure_pull_request(
        &self,
        _installation: u64,
        _repo: &str,
        branch: &str,
        base: &str,
        _title: &str,
        _body: &str,
    ) -> Result<(u64, String), GitHubError> {
        self.call("open the pull request")?;
        let mut seen = self.seen.lock().unwrap();
        if !seen.pull_requests.iter().any(|(known, _)| known == branch) {
            seen.pull_requests.push((branch.to_owned(), base.to_owned()));
        }
        let number =
            seen.pull_requests.iter().position(|(known, _)| known == branch).unwrap_or(0) as u64 + 500;
        Ok((number, format!("https://github.invalid/pull/{number}")))
    }

    async fn deliveries_page(&self, cursor: Option<&str>) -> Result<DeliveryPage, GitHubError> {
        self.call("list deliveries")?;
        self.seen.lock().unwrap().delivery_pages.push(cursor.map(str::to_owned));
        let mut log = self.script.lock().unwrap().deliveries.clone();
        log.sort_by_key(|delivery| std::cmp::Reverse(delivery.id));
        // As GitHub's: the cursor names the first delivery of its page.
        let start = cursor
            .and_then(|cursor| cursor.parse::<u64>().ok())
            .map_or(0, |first| log.iter().position(|delivery| delivery.id <= first).unwrap_or(log.len()));
        let deliveries: Vec<Delivery> = log.iter().skip(start).take(100).cloned().collect();
        let mut next = log.get(start + 100).map(|delivery| delivery.id.to_string());
        if self.script.lock().unwrap().stuck_cursor && cursor.is_some() {
            next = cursor.map(str::to_owned);
        }
        Ok(DeliveryPage { deliveries, next })
    }

    async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError> {
        self.call("redeliver")?;
        {
            let mut script = self.script.lock().unwrap();
            if script.refused_redeliveries.contains(&delivery_id) {
                return Err(GitHubError::Rejected {
                    what: "redeliver".to_owned(),
                    status: 422,
                    message: "Validation Failed".to_owned(),
                });
            }
            if script.failing_redeliveries > 0 {
                script.failing_redeliveries -= 1;
                return Err(GitHubError::Unavailable {
                    what: "redeliver".to_owned(),
                    attempts: 1,
                    last: "503 Service Unavailable".to_owned(),
                });
            }
        }
        self.seen.lock().unwrap().redelivered.push(delivery_id);
        Ok(())
    }
}
