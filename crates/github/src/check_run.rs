//! What Berth shows in a task's check run: the status it opens with, the
//! output (title, summary, and the last lines of the log as text), and the
//! link to the task's page.

use core_types::{TaskId, TaskKind};
use serde_json::{Value, json};

/// GitHub's limit on each of a check run's output fields is 65,535
/// characters; Berth stays under it with room for the truncation note.
pub const OUTPUT_FIELD_LIMIT: usize = 60_000;

/// How a check run opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckRunStatus {
    /// Accepted, waiting for a worker place.
    Queued,
    /// Its worker is starting or running.
    InProgress,
}

impl CheckRunStatus {
    /// GitHub's word for it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
        }
    }
}

/// A check run's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckRunOutput {
    /// One line.
    pub title: String,
    /// Markdown.
    pub summary: String,
    /// More Markdown below the summary: the log's last lines.
    pub text: Option<String>,
}

impl CheckRunOutput {
    /// GitHub's JSON for it, each field cut to GitHub's limit.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut output = json!({
            "title": truncate(&self.title, 1_000),
            "summary": truncate(&self.summary, OUTPUT_FIELD_LIMIT),
        });
        if let Some(text) = &self.text {
            output["text"] = json!(truncate_front(text, OUTPUT_FIELD_LIMIT));
        }
        output
    }
}

/// A check run to open for a task.
#[derive(Debug, Clone)]
pub struct NewCheckRun<'a> {
    /// The commit it is about.
    pub head_sha: &'a str,
    /// The task, recorded as the run's external id (how it is found again).
    pub task_id: &'a TaskId,
    /// The task's kind, which names the run.
    pub kind: TaskKind,
    /// Queued or in progress.
    pub status: CheckRunStatus,
    /// What it says.
    pub output: CheckRunOutput,
    /// The task's page, when Berth has a public address.
    pub details_url: Option<String>,
}

impl NewCheckRun<'_> {
    /// The body of `POST /repos/{repo}/check-runs`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "name": self.kind.spec().check_run_name,
            "head_sha": self.head_sha,
            "status": self.status.as_str(),
            "external_id": self.task_id.as_str(),
            "output": self.output.to_json(),
        });
        if let Some(url) = &self.details_url {
            body["details_url"] = json!(url);
        }
        body
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with a note.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n\n… (truncated)", &text[..end])
}

/// The end of `text` in at most `max` bytes: a log's newest lines matter most.
fn truncate_front(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("(earlier lines cut)\n{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_keeps_its_end_and_a_long_summary_its_start() {
        let output = CheckRunOutput {
            title: "t".to_owned(),
            summary: format!("start{}", "s".repeat(OUTPUT_FIELD_LIMIT)),
            text: Some(format!("{}é-the-end", "x".repeat(OUTPUT_FIELD_LIMIT))),
        };
        let json = output.to_json();
        let summary = json["summary"].as_str().unwrap();
        assert!(summary.starts_with("start") && summary.ends_with("(truncated)"), "{summary:.20}");
        let text = json["text"].as_str().unwrap();
        assert!(text.starts_with("(earlier lines cut)\n") && text.ends_with("é-the-end"));
        assert!(text.len() <= OUTPUT_FIELD_LIMIT + 30);
        assert!(CheckRunOutput::default().to_json().get("text").is_none());
    }

    #[test]
    fn a_new_run_carries_its_status_external_id_and_details_url() {
        let task_id = TaskId::new("review-o-r-1-abc").unwrap();
        let run = NewCheckRun {
            head_sha: "abc",
            task_id: &task_id,
            kind: TaskKind::Review,
            status: CheckRunStatus::Queued,
            output: CheckRunOutput { title: "Queued".to_owned(), ..CheckRunOutput::default() },
            details_url: Some("https://berth.example.com/tasks/review-o-r-1-abc".to_owned()),
        };
        let body = run.to_json();
        assert_eq!(body["status"], "queued");
        assert_eq!(body["external_id"], "review-o-r-1-abc");
        assert_eq!(body["details_url"], "https://berth.example.com/tasks/review-o-r-1-abc");
        assert_eq!(body["name"], TaskKind::Review.spec().check_run_name);
        let without = NewCheckRun { details_url: None, ..run };
        assert!(without.to_json().get("details_url").is_none());
    }
}
