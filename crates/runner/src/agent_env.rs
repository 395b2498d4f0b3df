//! The agent's settings and secrets: `BERTH_WORKER_ENV_FILE` and
//! `BERTH_WORKER_SECRETS_FILE`, files of `NAME=VALUE` lines that every
//! worker gets in its environment.
//!
//! Both files are read at start (a bad one stops start-up, exit 2) and again
//! for every dispatch, so an operator rotates a key without a restart. The
//! format is Docker's `--env-file`: one `NAME=VALUE` a line, the value taken
//! literally up to the end of the line (no quotes removed, nothing expanded),
//! blank lines and lines starting with `#` skipped. Errors name the file and
//! the line, never the value. Secret values are held as [`Secret`] and never
//! printed; the worker is told their names (`BERTH_SECRET_VARS`) and redacts
//! their values from everything it prints, and the daemon redacts them again
//! from the summary it reports ([`AgentEnv::redact`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use core_types::Secret;
use core_types::env_names::{BERTH_WORKER_ENV_FILE, BERTH_WORKER_SECRETS_FILE};
use core_types::worker_env::{is_env_name, is_reserved_name};

/// Secret values shorter than this are refused: redacting them would wreck
/// ordinary text and protect nothing.
pub const MIN_SECRET_LEN: usize = 8;

/// Where the operator keeps the agent's settings and secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentEnvFiles {
    /// `BERTH_WORKER_ENV_FILE`: plain settings.
    pub env_file: Option<PathBuf>,
    /// `BERTH_WORKER_SECRETS_FILE`: secrets, redacted everywhere.
    pub secrets_file: Option<PathBuf>,
}

/// The variables every worker gets, as read just now.
#[derive(Clone, Default)]
pub struct AgentEnv {
    /// Plain settings.
    pub plain: Vec<(String, String)>,
    /// Secrets.
    pub secrets: Vec<(String, Secret)>,
}

impl std::fmt::Debug for AgentEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |pairs: Vec<&String>| pairs.into_iter().cloned().collect::<Vec<_>>();
        f.debug_struct("AgentEnv")
            .field("plain", &names(self.plain.iter().map(|(name, _)| name).collect()))
            .field("secrets", &names(self.secrets.iter().map(|(name, _)| name).collect()))
            .finish()
    }
}

/// Why a settings file cannot be used. Its text never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentEnvError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// One line is not acceptable.
    #[error("{path} line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// Its 1-based line number.
        line: usize,
        /// What is wrong, naming at most the variable.
        reason: String,
    },
}

impl AgentEnvError {
    /// The setting this error belongs to.
    pub fn setting(&self, secrets: bool) -> &'static str {
        if secrets { BERTH_WORKER_SECRETS_FILE } else { BERTH_WORKER_ENV_FILE }
    }
}

impl AgentEnvFiles {
    /// Reads both files.
    ///
    /// # Errors
    /// The first problem, with the setting it belongs to: an unreadable file,
    /// a malformed line, an invalid, duplicate or reserved name, or a secret
    /// too short to redact.
    pub fn load(&self) -> Result<AgentEnv, (&'static str, AgentEnvError)> {
        let mut seen = HashSet::new();
        let plain = match &self.env_file {
            Some(path) => read(path, false, &mut seen).map_err(|err| (err.setting(false), err))?,
            None => Vec::new(),
        };
        let secrets = match &self.secrets_file {
            Some(path) => read(path, true, &mut seen).map_err(|err| (err.setting(true), err))?,
            None => Vec::new(),
        };
        Ok(AgentEnv {
            plain,
            secrets: secrets.into_iter().map(|(name, value)| (name, Secret::new(value))).collect(),
        })
    }
}

fn read(
    path: &Path,
    secrets: bool,
    seen: &mut HashSet<String>,
) -> Result<Vec<(String, String)>, AgentEnvError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|err| AgentEnvError::Read { path: shown.clone(), reason: err.to_string() })?;
    let text = String::from_utf8(bytes).map_err(|_| AgentEnvError::Read {
        path: shown.clone(),
        reason: "it is not UTF-8 text".to_owned(),
    })?;
    parse(&text, secrets, seen).map_err(|(line, reason)| AgentEnvError::Line { path: shown, line, reason })
}

/// Parses the text of one file; `seen` carries the names of files read before.
///
/// # Errors
/// The 1-based line number and what is wrong with it (never the value).
pub fn parse(
    text: &str,
    secrets: bool,
    seen: &mut HashSet<String>,
) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut pairs = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line_number = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, value)) = trimmed.split_once('=') else {
            return Err((line_number, "not a NAME=VALUE line".to_owned()));
        };
        if !is_env_name(name) {
            let shown: String = name.chars().take(64).collect();
            return Err((
                line_number,
                format!(
                    "{shown:?} is not a variable name (letters, digits and _, not starting with a digit)"
                ),
            ));
        }
        if is_reserved_name(name) {
            return Err((
                line_number,
                format!(
                    "{name} belongs to Berth (BERTH_*, GITHUB_TOKEN, GH_TOKEN, GIT_*, HOME and PATH are set by the worker)"
                ),
            ));
        }
        if !seen.insert(name.to_owned()) {
            return Err((line_number, format!("{name} is set twice (in this file or the other one)")));
        }
        if secrets && value.len() < MIN_SECRET_LEN {
            return Err((
                line_number,
                format!(
                    "the value of {name} is shorter than {MIN_SECRET_LEN} characters, too short to redact safely"
                ),
            ));
        }
        pairs.push((name.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

impl AgentEnv {
    /// The names of the secrets, for `BERTH_SECRET_VARS`.
    pub fn secret_names(&self) -> Vec<String> {
        self.secrets.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Every variable as `NAME=VALUE`, plain settings first.
    pub fn to_env(&self) -> Vec<(String, String)> {
        self.plain
            .iter()
            .cloned()
            .chain(self.secrets.iter().map(|(name, value)| (name.clone(), value.expose().to_owned())))
            .collect()
    }

    /// `text` with every secret value replaced by `***`, longest first.
    pub fn redact(&self, text: &str) -> String {
        self.redact_owned(text.to_owned())
    }

    /// [`AgentEnv::redact`] of a `text` already owned: copied only for a
    /// secret that is in it (a worker's kept log is up to 5 MiB, and most
    /// hold none).
    pub fn redact_owned(&self, mut text: String) -> String {
        let mut values: Vec<&str> = self.secrets.iter().map(|(_, value)| value.expose()).collect();
        values.sort_by_key(|value| std::cmp::Reverse(value.len()));
        for value in values {
            if !value.is_empty() && text.contains(value) {
                text = text.replace(value, "***");
            }
        }
        text
    }
}
