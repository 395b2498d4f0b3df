//! Answers to refused commands: each refusal the journal recorded with its
//! delivery ([`journal::Notice`]) is posted on the issue or pull request as
//! a comment carrying a hidden marker keyed by the refused comment, then
//! marked sent. A restart between the two posts it again, which edits the
//! one comment in place: exactly one answer per refused comment.

use std::sync::Arc;
use std::time::Duration;

use dispatcher::ContainerEngine;
use github::GitHubApi;
use journal::Notice;
use tracing::{error, info, warn};

use crate::Runner;

/// The key of a notice's marker on GitHub.
pub(crate) fn notice_key(comment_id: u64) -> String {
    format!("comment-{comment_id}")
}

impl<E: ContainerEngine, G: GitHubApi> Runner<E, G> {
    /// Posts every pending notice not being posted already.
    pub(crate) fn answer_refusals(self: &Arc<Self>) -> Result<(), journal::JournalError> {
        for notice in self.journal.pending_notices()? {
            let comment_id = notice.refusal.comment_id;
            if !self.notifying.lock().expect("notifying lock is never poisoned").insert(comment_id) {
                continue;
            }
            let runner = Arc::clone(self);
            self.tracker.spawn(async move {
                runner.answer_refusal(notice).await;
                runner.notifying.lock().expect("notifying lock is never poisoned").remove(&comment_id);
            });
        }
        Ok(())
    }

    async fn answer_refusal(&self, notice: Notice) {
        let refusal = &notice.refusal;
        let posted = async {
            let installation = match refusal.installation {
                Some(installation) => installation,
                None => self.github.repo_installation(&refusal.repo).await?,
            };
            let key = notice_key(refusal.comment_id);
            self.github
                .upsert_notice(installation, &refusal.repo, refusal.number, &key, &refusal.message())
                .await
        };
        match posted.await {
            Ok(_) => {
                if let Err(err) = self.journal.notice_sent(refusal.comment_id).await {
                    warn!(error = %err, "refusal answered but not recorded; it will be answered again in place");
                }
                info!(repo = %refusal.repo, number = refusal.number, reason = %refusal.reason, "refusal answered on GitHub");
            }
            Err(err) => {
                error!(error = %err, repo = %refusal.repo, number = refusal.number, "answering a refused command failed; will retry");
                tokio::select! {
                    () = self.shutdown.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }
}
