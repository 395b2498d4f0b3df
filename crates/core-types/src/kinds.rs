//! Everything outside the worker that differs by task kind, in one table.
//! A new kind is a new [`TaskKind`] variant, a row here, and the worker's
//! handling of it; the daemon's trigger parsing, worker token, check run,
//! report words and links all read the row.

use crate::TaskKind;

/// What a task works on, which decides where it may be asked for and how
/// its subject is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A pull request (`/pull/N`); the command is refused on an issue.
    PullRequest,
    /// An issue (`/issues/N`); on a pull request the command is refused,
    /// unless its kind follows up on Berth's own pull request
    /// ([`KindSpec::follows_up_on_pull_request`]).
    Issue,
}

impl Subject {
    /// In words, for refusals: "a pull request", "an issue".
    pub fn with_article(self) -> &'static str {
        match self {
            Subject::PullRequest => "a pull request",
            Subject::Issue => "an issue",
        }
    }

    /// The path segment of its page on GitHub's web UI.
    pub fn web_segment(self) -> &'static str {
        match self {
            Subject::PullRequest => "pull",
            Subject::Issue => "issues",
        }
    }

    /// The path segment of its REST resource.
    pub fn api_segment(self) -> &'static str {
        match self {
            Subject::PullRequest => "pulls",
            Subject::Issue => "issues",
        }
    }
}

/// One kind's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    /// The kind.
    pub kind: TaskKind,
    /// The word after the command prefix (`/berth review`).
    pub command: &'static str,
    /// What it works on.
    pub subject: Subject,
    /// The worker token's permissions: (GitHub permission, access).
    pub permissions: &'static [(&'static str, &'static str)],
    /// The check run's name.
    pub check_run_name: &'static str,
    /// The report's title when the task succeeded.
    pub done_title: &'static str,
    /// Whether the worker pushes a branch that becomes a pull request.
    pub opens_pull_request: bool,
    /// Whether the command, asked on a pull request instead of its subject,
    /// follows up on Berth's own pull request: the task continues that pull
    /// request's branch `berth/issue-<n>` (checked at dispatch, since the
    /// comment's payload does not name the branch) and pushes to it without
    /// forcing.
    pub follows_up_on_pull_request: bool,
}

/// Every kind's row, in [`TaskKind::ALL`]'s order.
pub const KINDS: [KindSpec; 2] = [
    KindSpec {
        kind: TaskKind::Review,
        command: "review",
        subject: Subject::PullRequest,
        permissions: &[("contents", "read"), ("pull_requests", "write"), ("metadata", "read")],
        check_run_name: "berth/review",
        done_title: "Review done",
        opens_pull_request: false,
        follows_up_on_pull_request: false,
    },
    KindSpec {
        kind: TaskKind::Implement,
        command: "implement",
        subject: Subject::Issue,
        permissions: &[
            ("contents", "write"),
            ("pull_requests", "write"),
            ("issues", "read"),
            ("metadata", "read"),
        ],
        check_run_name: "berth/implement",
        done_title: "Implementation done",
        opens_pull_request: true,
        follows_up_on_pull_request: true,
    },
];

impl TaskKind {
    /// This kind's row of [`KINDS`].
    pub fn spec(self) -> &'static KindSpec {
        match self {
            TaskKind::Review => &KINDS[0],
            TaskKind::Implement => &KINDS[1],
        }
    }

    /// The kind whose command word is `word` (any case).
    pub fn from_command(word: &str) -> Option<Self> {
        KINDS.iter().find(|spec| spec.command.eq_ignore_ascii_case(word)).map(|spec| spec.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_row_and_a_distinct_command() {
        for kind in TaskKind::ALL {
            assert_eq!(kind.spec().kind, kind);
            assert_eq!(TaskKind::from_command(kind.spec().command), Some(kind));
            assert_eq!(kind.spec().check_run_name, format!("berth/{kind}"));
            assert!(kind.spec().permissions.contains(&("metadata", "read")));
        }
        let mut words: Vec<_> = KINDS.iter().map(|spec| spec.command).collect();
        words.dedup();
        assert_eq!(words.len(), KINDS.len());
        assert!(KINDS.iter().all(|spec| !["cancel", "stop"].contains(&spec.command)));
        // A follow-up continues a branch the kind itself pushed.
        assert!(KINDS.iter().all(|spec| !spec.follows_up_on_pull_request || spec.opens_pull_request));
    }
}
