//! The agent's command line: `BERTH_AGENT_COMMAND` split into words and its
//! `{placeholders}` filled in.
//!
//! Worker images need not have a shell, so the worker splits the command
//! itself and execs the program directly. Quoting follows the shell for the
//! common cases: whitespace separates words, `'...'` is literal, `"..."`
//! honours `\"`, `\\`, `\$` and `` \` ``, and a backslash outside quotes takes
//! the next character literally. There is no expansion of variables, globs or
//! `~`, and no pipes or redirections: an unquoted `|&;<>()$` or backtick is
//! refused with a hint to use `sh -c '...'` in an image that has a shell.
//!
//! Placeholders are filled in *after* splitting, so a value with spaces (the
//! prompt, say) stays one argument and can never inject others. `{{` and `}}`
//! stand for literal braces.

use std::fmt;

/// Every placeholder the agent command may use.
pub(crate) const PLACEHOLDERS: [&str; 12] = [
    "task_id",
    "kind",
    "repo",
    "number",
    "workspace",
    "work_dir",
    "prompt_file",
    "summary_file",
    "prompt",
    "branch",
    "base_ref",
    "head_sha",
];

/// Why `BERTH_AGENT_COMMAND` cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Nothing but whitespace.
    #[error("it is empty")]
    Empty,
    /// A quote that never closes.
    #[error("a {0} quote is not closed")]
    UnclosedQuote(char),
    /// A backslash at the very end.
    #[error("it ends with a lone backslash")]
    TrailingBackslash,
    /// Shell syntax the worker does not interpret.
    #[error(
        "unquoted {0:?} needs a shell, and the worker runs the command without one (quote it, or use `sh -c '...'` in an image that has a shell)"
    )]
    ShellSyntax(char),
    /// A `{` without its `}`.
    #[error("a '{{' is not closed (write '{{{{' for a literal brace)")]
    UnclosedBrace,
    /// A `{name}` the worker does not know.
    #[error("unknown placeholder {{{0}}} (known: {known})", known = known_placeholders())]
    UnknownPlaceholder(String),
}

fn known_placeholders() -> String {
    PLACEHOLDERS.iter().map(|name| format!("{{{name}}}")).collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Placeholder(&'static str),
}

/// A parsed agent command: words made of text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentCommand {
    words: Vec<Vec<Piece>>,
}

/// The values placeholders stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PlaceholderValues {
    values: Vec<(&'static str, String)>,
}

impl PlaceholderValues {
    /// Sets `name` (one of [`PLACEHOLDERS`]) to `value`.
    pub(crate) fn set(&mut self, name: &'static str, value: impl Into<String>) -> &mut Self {
        debug_assert!(PLACEHOLDERS.contains(&name), "{name} is not a placeholder");
        let value = value.into();
        match self.values.iter_mut().find(|(key, _)| *key == name) {
            Some(slot) => slot.1 = value,
            None => self.values.push((name, value)),
        }
        self
    }

    fn get(&self, name: &str) -> &str {
        self.values.iter().find(|(key, _)| *key == name).map_or("", |(_, value)| value)
    }
}

impl AgentCommand {
    /// Splits and checks a command line; fails before anything is cloned.
    ///
    /// # Errors
    /// Bad quoting, shell syntax, or an unknown placeholder.
    pub(crate) fn parse(line: &str) -> Result<Self, CommandError> {
        let words = split(line)?;
        if words.is_empty() {
            return Err(CommandError::Empty);
        }
        let words = words.iter().map(|word| pieces(word)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { words })
    }

    /// The argv with every placeholder filled in (an unset one is empty).
    pub(crate) fn render(&self, values: &PlaceholderValues) -> Vec<String> {
        self.words
            .iter()
            .map(|word| {
                word.iter()
                    .map(|piece| match piece {
                        Piece::Text(text) => text.as_str(),
                        Piece::Placeholder(name) => values.get(name),
                    })
                    .collect()
            })
            .collect()
    }
}

impl fmt::Display for AgentCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self
            .words
            .iter()
            .map(|word| {
                word.iter()
                    .map(|piece| match piece {
                        Piece::Text(text) => text.replace('{', "{{").replace('}', "}}"),
                        Piece::Placeholder(name) => format!("{{{name}}}"),
                    })
                    .collect()
            })
            .collect();
        f.write_str(&words.join(" "))
    }
}

/// Fills the placeholders of free text (the prompt the daemon made): `{{`
/// and `}}` are literal braces, a known `{name}` is its value, and anything
/// else stays as written, so text that was never a template passes through.
pub(crate) fn render_text(text: &str, values: &PlaceholderValues) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find(['{', '}']) {
        out.push_str(&rest[..index]);
        let tail = &rest[index..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(name) =
            tail.strip_prefix('{').and_then(|after| after.split_once('}')).map(|(name, _)| name)
            && name != "prompt"
            && PLACEHOLDERS.contains(&name)
        {
            out.push_str(values.get(name));
            rest = &tail[name.len() + 2..];
            continue;
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// Shell-words splitting without expansion (see the module docs).
pub(crate) fn split(line: &str) -> Result<Vec<String>, CommandError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once any character or a quote pair was seen ('' is an empty word).
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(inner) => word.push(inner),
                        None => return Err(CommandError::UnclosedQuote('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(escaped @ ('"' | '\\' | '$' | '`')) => word.push(escaped),
                            Some('\n') => {}
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err(CommandError::UnclosedQuote('"')),
                        },
                        Some(inner) => word.push(inner),
                        None => return Err(CommandError::UnclosedQuote('"')),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(escaped) => {
                    in_word = true;
                    word.push(escaped);
                }
                None => return Err(CommandError::TrailingBackslash),
            },
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' => return Err(CommandError::ShellSyntax(c)),
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// A word's text and placeholders.
fn pieces(word: &str) -> Result<Vec<Piece>, CommandError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(inner) => name.push(inner),
                        None => return Err(CommandError::UnclosedBrace),
                    }
                }
                let known = PLACEHOLDERS
                    .iter()
                    .find(|known| **known == name)
                    .ok_or_else(|| CommandError::UnknownPlaceholder(name.clone()))?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Placeholder(known));
            }
            other => text.push(other),
        }
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}
