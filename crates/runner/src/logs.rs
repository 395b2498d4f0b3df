//! Logs that outlive the container: the end of a finished worker's output,
//! kept as one file per task under the state directory
//! (`<state>/logs/<task id>.log`, mode 0600), written aside and renamed into
//! place, and pruned after a retention. Not in the journal: a log is large,
//! and losing it loses nothing the journal promises.
//!
//! The file's first line is a header, `berth-log cut=<bytes>`, saying how
//! many bytes of the output before the kept part were left out (0: the whole
//! output); the output follows as the engine gave it, stdout and stderr
//! interleaved, with every secret the daemon read redacted.
//!
//! What it deliberately does not do: decide when a log is kept (the runner's
//! `finish` does, once the outcome is recorded), or fail a task when the
//! disk is full (a log that cannot be written is dropped with a warning).

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use core_types::TaskId;

/// The directory under the state directory that holds kept logs.
pub const LOG_DIR: &str = "logs";

/// How the header line of a kept log starts; the cut byte count follows.
const HEADER: &str = "berth-log cut=";

/// Where, and how much of, a finished worker's output is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKeeper {
    /// The directory of the kept logs (`<state>/logs`).
    pub dir: PathBuf,
    /// Bytes kept per task at most; 0 keeps none.
    pub max_bytes: usize,
}

/// A kept log as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptLog {
    /// The end of the output.
    pub text: String,
    /// Bytes of the output before `text` that were left out (0: none).
    pub cut: u64,
}

impl LogKeeper {
    /// Keeps at most `max_bytes` per task under `<state_dir>/logs`.
    pub fn under(state_dir: &Path, max_bytes: usize) -> Self {
        Self { dir: state_dir.join(LOG_DIR), max_bytes }
    }

    /// Writes `text` as the task's kept log, `cut` bytes left out before it:
    /// to a temporary name first, then renamed, so a reader sees the whole
    /// file or none.
    ///
    /// # Errors
    /// When the directory or the file cannot be made or written (a full disk).
    pub fn write(&self, task: &TaskId, text: &str, cut: u64) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let path = log_path(&self.dir, task);
        let temporary = self.dir.join(format!("{task}.log.tmp"));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(format!("{HEADER}{cut}\n").as_bytes())?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temporary, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        written
    }
}

/// The kept log's file of `task` under `dir`.
pub fn log_path(dir: &Path, task: &TaskId) -> PathBuf {
    dir.join(format!("{task}.log"))
}

/// The kept log of `task` under `dir`, if there is one.
///
/// # Errors
/// When the file exists but cannot be read.
pub fn read_kept(dir: &Path, task: &TaskId) -> io::Result<Option<KeptLog>> {
    let bytes = match fs::read(log_path(dir, task)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let text = String::from_utf8_lossy(&bytes);
    let (cut, text) = match text.split_once('\n') {
        Some((first, rest)) if first.starts_with(HEADER) => {
            (first[HEADER.len()..].trim().parse().unwrap_or(0), rest.to_owned())
        }
        _ => (0, text.into_owned()),
    };
    Ok(Some(KeptLog { text, cut }))
}

/// The end of `task`'s kept log under `dir`: at most its last `max_bytes`,
/// from the start of a line, the header left out, read without the rest of
/// the file (a kept log is up to `BERTH_LOG_KEEP`, 5 MiB by default, and a
/// check run shows its last lines). `None` when none is kept.
///
/// # Errors
/// When the file exists but cannot be read.
pub fn read_kept_end(dir: &Path, task: &TaskId, max_bytes: usize) -> io::Result<Option<String>> {
    let mut file = match fs::File::open(log_path(dir, task)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let start = file.metadata()?.len().saturating_sub(max_bytes as u64);
    if start == 0 {
        // The whole file is no longer than the end wanted.
        return Ok(read_kept(dir, task)?.map(|kept| kept.text));
    }
    // From one byte before the end wanted, to tell whether it starts a line.
    file.seek(io::SeekFrom::Start(start - 1))?;
    let mut bytes = Vec::new();
    file.take(max_bytes as u64 + 1).read_to_end(&mut bytes)?;
    let starts_a_line = bytes.first() == Some(&b'\n');
    let end = String::from_utf8_lossy(bytes.get(1..).unwrap_or_default());
    let whole_lines = match end.split_once('\n') {
        // The first line is the end of one cut in two: left out, unless
        // nothing else is there (the end of a line longer than the end read).
        Some((_, rest)) if !starts_a_line && !rest.trim().is_empty() => rest,
        _ if starts_a_line => &end,
        // A character cut in two at the start is left out too.
        _ => end.trim_start_matches('\u{FFFD}'),
    };
    Ok(Some(whole_lines.to_owned()))
}

/// The last `max_bytes` of `text` (at a character boundary), and how many
/// bytes were left out before them.
pub(crate) fn cut_front(text: &str, max_bytes: usize) -> (&str, u64) {
    let mut start = text.len().saturating_sub(max_bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    (&text[start..], start as u64)
}

/// Removes the kept logs (and leftover temporary files) under `dir` last
/// written more than `retention` ago; answers how many were removed. A
/// missing directory has nothing to prune.
///
/// # Errors
/// When the directory cannot be listed.
pub fn prune(dir: &Path, retention: Duration) -> io::Result<usize> {
    let cutoff = SystemTime::now().checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.ends_with(".log") || name.ends_with(".log.tmp")) {
            continue;
        }
        let old = entry.metadata().and_then(|meta| meta.modified()).is_ok_and(|modified| modified < cutoff);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
