//! Following up on Berth's own pull request: the branch an implement task
//! pushes, how to tell it from anyone else's, and the review comments a
//! follow-up gets as context.

/// The prefix of every branch an implement task pushes.
pub const BRANCH_PREFIX: &str = "berth/issue-";

/// The branch an implement task of issue `number` pushes: `berth/issue-<n>`.
pub fn implement_branch(number: u64) -> String {
    format!("{BRANCH_PREFIX}{number}")
}

/// The issue whose implement task pushed `branch`, when it is Berth's
/// (`berth/issue-<n>` exactly, `refs/heads/` allowed before it); `None` for
/// any other branch.
pub fn issue_of_branch(branch: &str) -> Option<u64> {
    let branch = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    let digits = branch.strip_prefix(BRANCH_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// One review comment on a pull request (a comment on a line of its diff),
/// as a follow-up's prompt shows it. Every field but `line` is text from
/// GitHub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewComment {
    /// Who wrote it (a login).
    pub author: String,
    /// The file it is on.
    pub path: String,
    /// The line of the file it is on, when GitHub still places it.
    pub line: Option<u64>,
    /// What it says.
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_berths_own_branch_names_an_issue() {
        assert_eq!(issue_of_branch(&implement_branch(12)), Some(12));
        assert_eq!(issue_of_branch("refs/heads/berth/issue-7"), Some(7));
        for other in [
            "feature",
            "berth/issue-",
            "berth/issue-12x",
            "berth/issue-012",
            "xberth/issue-1",
            "berth/issue-1/x",
        ] {
            assert_eq!(issue_of_branch(other), None, "{other}");
        }
    }
}
