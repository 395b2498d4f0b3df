//! Redaction of known secrets from everything the worker prints: the agent's
//! and git's output, its own notes, and the summary in the result record.
//!
//! The secrets are the installation token (raw, and in the base64 forms an
//! HTTP `Authorization` header carries) and the values of the variables named
//! in `BERTH_SECRET_VARS`. Output is redacted line by line; a line too long to
//! hold is cut, keeping back enough bytes that a secret spanning the cut is
//! still caught. This module does no I/O.

/// What a secret becomes.
pub(crate) const REDACTED: &str = "***";

/// Values shorter than this are not treated as secrets (redacting `a` would
/// wreck every line and protect nothing).
pub(crate) const MIN_SECRET_LEN: usize = 4;

/// The longest line held before it is cut.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Replaces known secrets with [`REDACTED`].
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    // Longest first, so a secret containing another is replaced whole.
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor for these secret values (too-short and empty ones are skipped).
    pub(crate) fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|secret| secret.as_ref().as_bytes().to_vec())
            .filter(|secret| secret.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self { secrets }
    }

    /// Length of the longest secret (0 when there are none).
    pub(crate) fn longest(&self) -> usize {
        self.secrets.first().map_or(0, Vec::len)
    }

    /// `bytes` with every secret replaced.
    pub(crate) fn redact(&self, bytes: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut index = 0;
        while index < bytes.len() {
            let rest = &bytes[index..];
            match self.secrets.iter().find(|secret| rest.starts_with(secret)) {
                Some(secret) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    index += secret.len();
                }
                None => {
                    out.push(bytes[index]);
                    index += 1;
                }
            }
        }
        out
    }

    /// `text` with every secret replaced.
    pub(crate) fn redact_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.redact(text.as_bytes())).into_owned()
    }
}

/// Cuts a byte stream into redacted lines.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Takes more bytes; returns the complete lines (without `\n` or a
    /// trailing `\r`), redacted. A line longer than [`MAX_LINE`] comes out in
    /// pieces.
    pub(crate) fn push(&mut self, bytes: &[u8], redactor: &Redactor) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(redactor.redact(&line));
        }
        if self.pending.len() > MAX_LINE {
            // Redact what is held, emit all but a tail that could be the start
            // of a secret continuing in the next read, keep that tail.
            let redacted = redactor.redact(&self.pending);
            let keep = redactor.longest().saturating_sub(1).min(redacted.len());
            let cut = redacted.len() - keep;
            lines.push(redacted[..cut].to_vec());
            self.pending = redacted[cut..].to_vec();
        }
        lines
    }

    /// The last, unterminated line, if any, redacted.
    pub(crate) fn finish(&mut self, redactor: &Redactor) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.pending);
        Some(redactor.redact(&line))
    }
}

/// Standard base64 (with padding), for the HTTP basic credentials git sends.
pub(crate) fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let symbols = [n >> 18, n >> 12, n >> 6, n].map(|index| char::from(ALPHABET[(index & 63) as usize]));
        let keep = chunk.len() + 1;
        for (position, symbol) in symbols.into_iter().enumerate() {
            out.push(if position < keep { symbol } else { '=' });
        }
    }
    out
}
