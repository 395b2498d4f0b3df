//! Running git: its environment (credentials, author, no prompts, no hooks)
//! and one supervised command at a time.
//!
//! The installation token never appears in a command line or a URL. For an
//! HTTP(S) clone URL it travels as an `Authorization` header set through
//! git's `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`
//! environment and scoped to the clone URL (`http.<url>.extraHeader`), so
//! git sends it to that repository only and never writes it to
//! `.git/config`. `git://` and `file://` URLs get no credentials.

use std::path::Path;
use std::process::Stdio;

use core_types::Secret;
use tokio::process::Command;

use crate::error::{Halt, WorkerError};
use crate::output::Output;
use crate::process::{Ending, Limits, StdoutTo, supervise};
use crate::redact::base64;

/// The user name GitHub expects with an installation token over HTTPS.
const TOKEN_USER: &str = "x-access-token";

/// Who commits an implement task's changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Author {
    pub(crate) name: String,
    pub(crate) email: String,
}

/// How git is run for one task.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    /// `GIT_CONFIG_*` entries giving credentials (the agent gets these too).
    auth: Vec<(String, String)>,
    /// Entries only the worker's own git gets (no hooks, no signing prompts).
    own: Vec<(String, String)>,
    /// Plain variables: author, committer, no terminal prompt.
    vars: Vec<(String, String)>,
    /// `GIT_CONFIG_COUNT` already in the worker's environment (kept, not replaced).
    inherited_count: usize,
}

/// The secret forms of a token that output may carry: the token itself and
/// the base64 of the basic credentials built from it.
pub(crate) fn token_secrets(token: &Secret) -> Vec<String> {
    let raw = token.expose();
    vec![raw.to_owned(), base64(format!("{TOKEN_USER}:{raw}").as_bytes()), base64(raw.as_bytes())]
}

/// Whether git would talk HTTP to this URL (and so can carry the header).
fn is_http(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

impl Git {
    /// Git for cloning `clone_url`, authenticated with `token` over HTTP(S).
    pub(crate) fn new(
        clone_url: &str,
        token: Option<&Secret>,
        author: &Author,
        inherited_count: usize,
    ) -> Self {
        let mut auth = Vec::new();
        if let Some(token) = token.filter(|_| is_http(clone_url)) {
            let credentials = base64(format!("{TOKEN_USER}:{}", token.expose()).as_bytes());
            auth.push((
                format!("http.{clone_url}.extraHeader"),
                format!("Authorization: Basic {credentials}"),
            ));
        }
        let own = [
            // Hooks are the agent's business; the worker's commit and push run none.
            ("core.hooksPath", "/dev/null"),
            ("commit.gpgSign", "false"),
            ("advice.detachedHead", "false"),
            ("init.defaultBranch", "main"),
            ("gc.auto", "0"),
            ("maintenance.auto", "false"),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .to_vec();
        let vars = [
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_AUTHOR_NAME", author.name.as_str()),
            ("GIT_AUTHOR_EMAIL", author.email.as_str()),
            ("GIT_COMMITTER_NAME", author.name.as_str()),
            ("GIT_COMMITTER_EMAIL", author.email.as_str()),
        ]
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .to_vec();
        Self { auth, own, vars, inherited_count }
    }

    /// The environment the worker's own git commands get.
    pub(crate) fn own_env(&self) -> Vec<(String, String)> {
        self.env_with(self.auth.iter().chain(&self.own))
    }

    /// The environment the agent gets for its git: credentials, author, no prompts.
    pub(crate) fn agent_env(&self) -> Vec<(String, String)> {
        self.env_with(self.auth.iter())
    }

    fn env_with<'a>(&self, entries: impl Iterator<Item = &'a (String, String)>) -> Vec<(String, String)> {
        let mut env = self.vars.clone();
        let mut count = self.inherited_count;
        for (key, value) in entries {
            env.push((format!("GIT_CONFIG_KEY_{count}"), key.clone()));
            env.push((format!("GIT_CONFIG_VALUE_{count}"), value.clone()));
            count += 1;
        }
        if count > self.inherited_count {
            env.push(("GIT_CONFIG_COUNT".to_owned(), count.to_string()));
        }
        env
    }

    /// Runs `git <args>` in `dir` under `limits`; its stdout, trimmed, on success.
    pub(crate) async fn run(
        &self,
        dir: &Path,
        args: &[&str],
        step: &'static str,
        limits: &Limits,
        output: &Output,
    ) -> Result<String, Halt> {
        let mut command = Command::new("git");
        command.args(args).current_dir(dir).envs(self.own_env()).stdin(Stdio::null());
        let finished = supervise(&mut command, StdoutTo::Capture, limits, output)
            .await
            .map_err(WorkerError::GitSpawn)?;
        match finished.ending {
            Ending::Exited(status) if status.success() => {
                Ok(String::from_utf8_lossy(&finished.stdout).trim().to_owned())
            }
            Ending::Exited(status) => {
                let detail = finished.tail_text();
                let detail = if detail.trim().is_empty() { "git printed nothing".to_owned() } else { detail };
                let status = status
                    .code()
                    .map_or_else(|| status.to_string(), |code| format!("git exited with {code}"));
                Err(Halt::Failed(WorkerError::Git { step, status, detail }))
            }
            Ending::DeadlinePassed => Err(Halt::DeadlinePassed { during: step }),
            Ending::Cancelled => Err(Halt::Cancelled),
        }
    }
}
