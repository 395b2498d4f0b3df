//! Everything the worker writes: the agent's and git's lines (redacted), its
//! own notes on stderr, and the result record as the last line of stdout.
//! On an engine whose log merges the two streams (`BERTH_ONE_STREAM`), all of
//! it goes to stdout: a runtime reads the two pipes at once, so a stderr line
//! written before the record can be logged after it, and the record must be
//! the merged log's last line.
//!
//! Each line is written with one call on a locked handle, so the lines of
//! the agent's two streams never interleave mid-line. Write errors (a closed
//! pipe) are ignored: the worker still finishes its task and exits with its
//! code. This module owns no policy about *what* is printed.

use std::io::Write;
use std::sync::Arc;

use core_types::ResultRecord;

use crate::redact::Redactor;

/// Marker that makes a line look like a result record to the daemon.
const RECORD_MARKER: &str = "\"berth_result\"";

/// Which stream a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// The worker's output, with its redactor. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    redactor: Arc<Redactor>,
    /// Everything to stdout (see the module's docs).
    one_stream: bool,
}

impl Output {
    /// Output that redacts these secret values.
    pub(crate) fn new(redactor: Redactor) -> Self {
        Self { redactor: Arc::new(redactor), one_stream: false }
    }

    /// The same output, writing everything to stdout when `one_stream`.
    pub(crate) fn with_one_stream(mut self, one_stream: bool) -> Self {
        self.one_stream = one_stream;
        self
    }

    /// The redactor in force.
    pub(crate) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// A line from a child process, already redacted, to the same stream.
    /// A stdout line that could pass for a result record is prefixed with
    /// `[agent] `, so a child can never forge the worker's result.
    pub(crate) fn child_line(&self, stream: Stream, line: &[u8]) {
        let stream = if self.one_stream { Stream::Stdout } else { stream };
        match stream {
            Stream::Stdout => {
                let forged = String::from_utf8_lossy(line).contains(RECORD_MARKER);
                let mut stdout = std::io::stdout().lock();
                let prefix: &[u8] = if forged { b"[agent] " } else { b"" };
                let _ = stdout.write_all(&[prefix, line, b"\n"].concat());
                let _ = stdout.flush();
            }
            Stream::Stderr => {
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(&[line, b"\n"].concat());
            }
        }
    }

    /// One note of the worker's own on stderr: `berth-worker: <message>`.
    pub(crate) fn note(&self, message: &str) {
        let message = self.redactor.redact_str(message);
        if self.one_stream {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "berth-worker: {message}");
            let _ = stdout.flush();
            return;
        }
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "berth-worker: {message}");
    }

    /// The result record, as the last line of stdout.
    pub(crate) fn result(&self, record: &ResultRecord) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", record.to_line());
        let _ = stdout.flush();
    }
}
