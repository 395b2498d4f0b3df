//! Supervised child processes: the agent and every git command the worker runs.
//!
//! Each child runs in its own process group, its output is read line by line
//! (redacted) as it comes, and it is bounded by the task's deadline and by
//! cancellation: past either, the group gets SIGTERM, then SIGKILL once the
//! grace period is over. Whatever way a child ends, nothing of it is left:
//! the rest of its group is killed, and, when the worker is a child
//! subreaper ([`OrphanSweep::Enabled`]), so is every process that escaped the
//! group and was re-parented to the worker.
//!
//! This module does not decide what an ending *means* (that is `lib.rs`).

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, getpid};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::output::{Output, Stream};
use crate::redact::LineSplitter;

/// How many of the last output lines are kept for a summary.
pub(crate) const TAIL_LINES: usize = 40;
/// Longest line kept in the tail, in characters.
const TAIL_LINE_CHARS: usize = 500;
/// How long killed members of the group may take to be gone.
const KILL_SETTLE: Duration = Duration::from_secs(2);
/// How often a stopping group is checked for live members.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long output still held open by a stray process is read after the child is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds of the orphan sweep (each kills, reaps, and looks again).
const SWEEP_ROUNDS: usize = 100;

/// Whether processes re-parented to the worker are killed after each child.
/// Enable it only in a process that made itself a child subreaper and runs
/// nothing else (the `berth-worker` binary); in a shared process it would
/// kill other children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanSweep {
    /// Kill and reap every child of this process that is not being supervised.
    Enabled,
    /// Leave other children alone.
    Disabled,
}

/// The bounds every supervised child runs under.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// The task's hard deadline.
    pub(crate) deadline: Instant,
    /// Between SIGTERM and SIGKILL.
    pub(crate) grace: Duration,
    /// Cancelled when the worker gets SIGTERM or SIGINT.
    pub(crate) cancel: CancellationToken,
    /// Whether escaped processes are swept.
    pub(crate) sweep: OrphanSweep,
}

/// How a supervised child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It exited by itself (or was killed by someone else).
    Exited(ExitStatus),
    /// The deadline passed; it was stopped.
    DeadlinePassed,
    /// The worker was cancelled; it was stopped.
    Cancelled,
}

/// Where a child's stdout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StdoutTo {
    /// To the worker's stdout, line by line, redacted.
    Stream,
    /// Into [`Finished::stdout`], raw (for git plumbing output).
    Capture,
}

/// A child that ended, and what it left.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) ending: Ending,
    /// Captured stdout ([`StdoutTo::Capture`] only).
    pub(crate) stdout: Vec<u8>,
    /// The last lines of its output (both streams, redacted).
    pub(crate) tail: Vec<String>,
    /// Whether anything of its group was still alive when the grace ended.
    pub(crate) killed_after_grace: bool,
    /// Processes that outlived it (left in its group or escaped) and were killed.
    pub(crate) leftovers_killed: usize,
    /// Processes of its group, or (with the sweep) children of the worker,
    /// still alive at the end: 0 unless something could not be killed.
    pub(crate) survivors: usize,
}

impl Finished {
    /// The tail as one string, for error messages.
    pub(crate) fn tail_text(&self) -> String {
        self.tail.join("\n")
    }
}

#[derive(Debug, Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: &[u8]) {
        let line: String = String::from_utf8_lossy(line).chars().take(TAIL_LINE_CHARS).collect();
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }
}

/// Runs `command` to its end under `limits` (see the module docs).
///
/// # Errors
/// Only when the child cannot be started or waited for.
pub(crate) async fn supervise(
    command: &mut Command,
    stdout_to: StdoutTo,
    limits: &Limits,
    output: &Output,
) -> io::Result<Finished> {
    command.process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn()?;
    let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let tail = Arc::new(Mutex::new(Tail::default()));
    let stdout_pump =
        tokio::spawn(pump(child.stdout.take(), Stream::Stdout, stdout_to, output.clone(), tail.clone()));
    let stderr_pump = tokio::spawn(pump(
        child.stderr.take(),
        Stream::Stderr,
        StdoutTo::Stream,
        output.clone(),
        tail.clone(),
    ));

    let ending = tokio::select! {
        status = child.wait() => Ending::Exited(status?),
        () = tokio::time::sleep_until(limits.deadline) => Ending::DeadlinePassed,
        () = limits.cancel.cancelled() => Ending::Cancelled,
    };

    let mut killed_after_grace = false;
    let mut leftovers = BTreeSet::new();
    if let Some(group) = group {
        if matches!(ending, Ending::DeadlinePassed | Ending::Cancelled) {
            // Stopping: SIGTERM to the whole group, then the grace period.
            let _ = killpg(group, Signal::SIGTERM);
            let grace_end = Instant::now() + limits.grace;
            let _ = tokio::time::timeout_at(grace_end, child.wait()).await;
            while Instant::now() < grace_end && !live_members(group).is_empty() {
                tokio::time::sleep(GROUP_POLL).await;
            }
            let still_alive = live_members(group);
            killed_after_grace = !still_alive.is_empty() || child.try_wait()?.is_none();
        }
        // Whatever is left of the group goes now: nothing outlives its child.
        leftovers.extend(live_members(group).into_iter().filter(|pid| Some(*pid) != Some(group)));
        let _ = killpg(group, Signal::SIGKILL);
        // SIGKILL is sent at once but acted on when each process next runs:
        // until then it still shows as alive. Wait (bounded) for the group
        // to be gone, so "nothing is left" is a fact and not a race.
        let settled_by = Instant::now() + KILL_SETTLE;
        while Instant::now() < settled_by && !live_members(group).is_empty() {
            tokio::time::sleep(GROUP_POLL).await;
        }
    }
    child.wait().await?;
    if limits.sweep == OrphanSweep::Enabled {
        let swept = tokio::task::spawn_blocking(sweep_orphans).await.unwrap_or_default();
        leftovers.extend(swept);
    }

    let survivors = survivors(group, limits.sweep);

    let stdout = drain(stdout_pump).await;
    drain(stderr_pump).await;
    let tail = tail.lock().map(|tail| tail.0.iter().cloned().collect()).unwrap_or_default();
    Ok(Finished { ending, stdout, tail, killed_after_grace, leftovers_killed: leftovers.len(), survivors })
}

/// Waits for a pump to hit end of file; gives up on output held open by a
/// process the worker could not kill (sweep disabled).
async fn drain(pump: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = pump.abort_handle();
    match tokio::time::timeout(DRAIN_TIMEOUT, pump).await {
        Ok(result) => result.unwrap_or_default(),
        Err(_) => {
            abort.abort();
            Vec::new()
        }
    }
}

async fn pump(
    reader: Option<impl AsyncRead + Unpin>,
    stream: Stream,
    to: StdoutTo,
    output: Output,
    tail: Arc<Mutex<Tail>>,
) -> Vec<u8> {
    let Some(mut reader) = reader else { return Vec::new() };
    let mut captured = Vec::new();
    let mut splitter = LineSplitter::default();
    let mut buffer = vec![0_u8; 8192];
    let emit = |line: &[u8]| {
        output.child_line(stream, line);
        if let Ok(mut tail) = tail.lock() {
            tail.push(line);
        }
    };
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        match to {
            StdoutTo::Capture => captured.extend_from_slice(&buffer[..read]),
            StdoutTo::Stream => {
                splitter.push(&buffer[..read], output.redactor()).iter().for_each(|line| emit(line))
            }
        }
    }
    if let Some(line) = splitter.finish(output.redactor()) {
        emit(&line);
    }
    captured
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) state: char,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp ...`; the command
/// name may itself hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub(crate) fn parse_stat(stat: &str) -> Option<ProcStat> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgrp })
}

/// Every process of this machine (or container) as `(pid, stat)`.
fn processes() -> Vec<(Pid, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((Pid::from_raw(pid), parse_stat(&stat)?))
        })
        .collect()
}

/// Members of `group` that are alive (zombies are dead, just not reaped).
fn live_members(group: Pid) -> Vec<Pid> {
    processes()
        .into_iter()
        .filter(|(_, stat)| stat.pgrp == group.as_raw() && stat.state != 'Z' && stat.state != 'X')
        .map(|(pid, _)| pid)
        .collect()
}

/// Live processes left of `group` and, with the sweep, live children of this process.
fn survivors(group: Option<Pid>, sweep: OrphanSweep) -> usize {
    let me = getpid().as_raw();
    processes()
        .into_iter()
        .filter(|(_, stat)| stat.state != 'Z' && stat.state != 'X')
        .filter(|(_, stat)| {
            group.is_some_and(|group| stat.pgrp == group.as_raw())
                || (sweep == OrphanSweep::Enabled && stat.ppid == me)
        })
        .count()
}

/// Kills and reaps every child of this process, again and again until none
/// is left (a killed child's own children are re-parented here next).
/// Returns the pids of live processes it killed.
pub(crate) fn sweep_orphans() -> BTreeSet<Pid> {
    let me = getpid().as_raw();
    let mut killed = BTreeSet::new();
    for _ in 0..SWEEP_ROUNDS {
        let children: Vec<(Pid, ProcStat)> =
            processes().into_iter().filter(|(_, stat)| stat.ppid == me).collect();
        if children.is_empty() {
            break;
        }
        for (pid, stat) in &children {
            if stat.state != 'Z' && kill(*pid, Signal::SIGKILL).is_ok() {
                killed.insert(*pid);
            }
        }
        for (pid, _) in &children {
            let _ = waitpid(*pid, Some(WaitPidFlag::WNOHANG));
        }
        std::thread::sleep(GROUP_POLL / 2);
    }
    killed
}
