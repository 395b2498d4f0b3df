//! The journal: one embedded redb file under the state directory that
//! records deliveries (for dedupe across redeliveries and restarts), tasks
//! and their outcomes.
//!
//! A 202 means the delivery is in the journal: [`Journal::accept`] returns
//! only after it is durably on disk. Writes go through one writer thread
//! that takes whatever has queued up together (group commit), so many
//! concurrent deliveries share one sync without any of them being answered
//! before it is on disk. Reads open their own read transactions and never
//! wait for the writer.
//!
//! A delivery that only adds records (ignored, or queuing new tasks) takes
//! the append path of ADR 24 (`intake`): decided against in-memory indexes
//! and redb's committed state, appended to the intake log and synced with
//! its batch (one `fdatasync`), then folded into redb in the background by
//! the fold thread, in large transactions, after which its log segment is
//! deleted. Readers see the records not yet folded through `intake::Pending`.
//! Every other write (a cancel, a retry, a task's change) folds what is
//! pending into its own redb transaction first, so it sees every record.
//!
//! Only a missing file is a fresh start: a new journal is made beside it and
//! renamed into place once initialised, so an empty or damaged
//! `journal.redb` is always an error, never silently replaced.
//!
//! A storage error (a full disk) latches redb: every later operation fails
//! until the file is opened again. The writer then closes the database, says
//! so in [`Journal::write_failure`] (and `/readyz` answers 503), and opens it
//! again on the next write, or every [`PROBE_EVERY`] with a small probe
//! write, until one commits; then the journal is writable again by itself.

mod intake;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use core_types::TaskId;
use core_types::env_names::BERTH_STATE_DIR;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info, warn};

use domain::request::CancelRequest;
use domain::request::{Refusal, RetryRequest, RetryTarget, TaskRequest};
use domain::tasks::{Outcome, TaskRecord};
use domain::triggers::Decision;
use intake::{Closed, IntakeLog, IntakeRecord, Logged, Pending};

/// Delivery id → [`DeliveryRecord`] (JSON).
const DELIVERIES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("deliveries");
/// Task id → [`TaskRecord`] (JSON).
const TASKS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("tasks");
/// Dedupe key of a queued or running task → its task id.
const ACTIVE: TableDefinition<'static, &str, &str> = TableDefinition::new("active");
/// Finished tasks whose report has not reached GitHub yet → "".
const UNREPORTED: TableDefinition<'static, &str, &str> = TableDefinition::new("unreported");
/// Deliveries Berth asked GitHub to redeliver → when it asked.
const REDELIVERIES: TableDefinition<'static, &str, u64> = TableDefinition::new("redeliveries");
/// Counters (`seq`: the order tasks were accepted in).
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

/// The records' schema, kept in `meta` under [`SCHEMA_KEY`]: 1 (no key) had
/// a task's outcome as loose strings; 2 has it typed inside the finished
/// state (`TaskState::Finished { outcome }`). Opening migrates older ones.
pub const SCHEMA: u64 = 2;

/// Where the schema is kept.
const SCHEMA_KEY: &str = "schema";
/// Issue comment id → [`CommentRecord`] (JSON), for comments that made a task.
const COMMENTS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("comments");
/// Comment id of a trusted sender's refused command → its [`Notice`] (JSON),
/// until the answer is on GitHub ([`Journal::notice_sent`]).
const NOTICES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("notices");

/// How many writes one commit may carry at most.
const MAX_GROUP: usize = 512;

/// Records one step of [`Journal::prune`] looks at, at most: a step is one
/// write transaction, and the writer applies nothing else while it runs.
const PRUNE_STEP: usize = 1024;

/// Where `meta` keeps the last intake record folded into redb.
const FOLDED_KEY: &str = "folded";

/// The fold thread folds the intake log into redb this often while records
/// wait, and at once when [`FOLD_AT`] records wait.
const FOLD_EVERY: Duration = Duration::from_secs(1);

/// A fold is synced at most this long after the last synced one; only a
/// synced fold lets the intake log's segments be deleted.
const SYNC_FOLD_EVERY: Duration = Duration::from_secs(5);

/// How long the intake log stays idle before its spare segments but one
/// are deleted (at once while the journal cannot write): storms come in
/// waves, and a wave that starts on spares writes no inode on its batches'
/// syncs.
const SPARES_KEPT_IDLE: Duration = Duration::from_secs(60);

/// Records waiting that wake the fold thread before [`FOLD_EVERY`].
const FOLD_AT: usize = 8192;

/// How many folded records the fold thread lets go of from `Pending` per
/// hold of its lock (the writer waits for the lock between batches).
const RELEASE_STEP: usize = 256;

/// How often a journal that cannot write tries again when no write comes.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Room the state directory's file system must have before a journal whose
/// writes failed counts as writable again. A small write can still succeed
/// in space freed inside the file while the disk is full; without this,
/// `/readyz` would flap while the next large record fails.
pub const MIN_FREE_TO_RECOVER: u64 = 4 << 20;

/// How long a reopen waits for readers to let go of the old database.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

/// The journal's file in the state directory.
const FILE_NAME: &str = "journal.redb";

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// What the journal knows of one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// When it was first received.
    pub received_unix: u64,
    /// Its `X-GitHub-Event`.
    pub event: String,
    /// The answer it got the first time.
    pub outcome: Accepted,
}

/// The task a comment made, so a second delivery of it makes none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CommentRecord {
    /// The task it made.
    task: TaskId,
    /// When.
    received_unix: u64,
}

/// A refused command whose answer is not on GitHub yet: recorded in the
/// same transaction as its delivery, so the 202 means it will be posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What was refused, and why.
    pub refusal: Refusal,
    /// When the delivery that asked was received.
    pub received_unix: u64,
}

/// What [`Journal::prune`] forgets: records from before these times
/// (seconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Deliveries, the comments that made tasks, answers to refused
    /// commands never posted, received before this; and notes of
    /// redeliveries asked for before this.
    pub deliveries: u64,
    /// Tasks that finished before this and whose report reached GitHub.
    /// Not meant to be later than `deliveries`: a task takes the record of
    /// the comment that made it along, and with it that comment's dedupe
    /// under a new delivery id.
    pub tasks: u64,
}

/// What [`Journal::prune`] forgot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Deliveries.
    pub deliveries: usize,
    /// Finished and reported tasks.
    pub tasks: usize,
    /// Answers to refused commands that GitHub never took, given up.
    pub notices: usize,
    /// Notes of deliveries Berth asked GitHub to send again.
    pub redeliveries: usize,
}

impl Pruned {
    /// Whether nothing was forgotten.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn add(&mut self, step: Pruned) {
        self.deliveries += step.deliveries;
        self.tasks += step.tasks;
        self.notices += step.notices;
        self.redeliveries += step.redeliveries;
    }
}

/// Where the next step of a prune starts: a table, and the first key in
/// it not looked at yet. Tables are taken in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PruneAt {
    Tasks(String),
    Deliveries(String),
    Comments(u64),
    Notices(u64),
    Redeliveries(String),
    Done,
}

impl PruneAt {
    /// Where a prune starts.
    const START: PruneAt = PruneAt::Tasks(String::new());
}

/// How a delivery was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Accepted {
    /// A new task was queued.
    Queued {
        /// The new task.
        task: TaskId,
    },
    /// Seen before (the same delivery, or a task already queued or running).
    Duplicate {
        /// The task it duplicates, if any.
        task: Option<TaskId>,
        /// Why it is a duplicate.
        reason: String,
    },
    /// Nothing to do, and why.
    Ignored {
        /// Why.
        reason: String,
    },
    /// Cancellation of these queued or running tasks was requested.
    CancelRequested {
        /// The tasks to cancel.
        tasks: Vec<TaskId>,
        /// Why.
        reason: String,
        /// A task queued in the same delivery (a push that supersedes a review).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queued: Option<TaskId>,
    },
}

/// The journal failed; the request that needed it gets a 503 and nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file is not a journal: damaged, or not a redb file at all.
    #[error(
        "journal {path} cannot be opened: it is damaged (corrupt, or not a journal); berth will not start on it as if it were new. Restore it from a backup, or move it aside to start with an empty journal (its queued tasks and deliveries are then forgotten)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb found.
        #[source]
        source: redb::DatabaseError,
    },
    /// The file exists but holds nothing.
    #[error(
        "journal {path} cannot be opened: it is empty (0 bytes) where a journal should be; berth will not start on it as if it were new. Restore it from a backup, or move it aside to start with an empty journal (its queued tasks and deliveries are then forgotten)"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Another process holds the journal's lock.
    #[error(
        "journal {path} cannot be opened: another process holds it (a second berth on the same {}?); only one daemon may use a state directory",
        BERTH_STATE_DIR
    )]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The file or its directory may not be written.
    #[error(
        "journal {path} cannot be opened for writing: check that {} is on a read-write file system and writable by the daemon's user",
        BERTH_STATE_DIR
    )]
    NotWritable {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The records are of a newer schema than this build knows.
    #[error(
        "journal {path} cannot be opened: its records are of schema {version}, written by a newer berth (this one reads up to {SCHEMA}); run that version or newer"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The schema it holds.
        version: u64,
    },
    /// A record could not be carried to the current schema.
    #[error(
        "journal {path} cannot be migrated from schema {from}: record {key}: {reason}; nothing was changed"
    )]
    Migration {
        /// The file.
        path: PathBuf,
        /// The schema it holds.
        from: u64,
        /// The record.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The file is of a redb format this build does not read.
    #[error(
        "journal {path} cannot be opened: it is in redb file format {version}, which this berth does not read; run the berth version that wrote it"
    )]
    OtherFormat {
        /// The file.
        path: PathBuf,
        /// The format found.
        version: u8,
    },
    /// The file could not be opened for another reason (an I/O error).
    #[error("journal {path} cannot be opened")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// The state directory could not be created, or a new journal made in it.
    #[error("state directory {path} cannot be used")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A read or write failed.
    #[error("journal {operation} failed")]
    Storage {
        /// What was being done.
        operation: &'static str,
        /// Why.
        #[source]
        source: redb::Error,
    },
    /// A stored record does not parse.
    #[error("journal record {key} is damaged")]
    Damaged {
        /// Its key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The journal was closed after a storage error and is not open again yet.
    #[error("journal is closed after a storage error until it can write again: {reason}")]
    Closed {
        /// The storage error.
        reason: String,
    },
    /// The writer thread is gone (the daemon is shutting down).
    #[error("journal writer has stopped")]
    WriterGone,
    /// The intake log could not be read at start.
    #[error("journal intake log {path} cannot be read")]
    IntakeRead {
        /// Its folder.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Appending to the intake log or syncing it failed.
    #[error("journal intake log write failed")]
    IntakeWrite {
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Another write in the same group commit failed, so this one was not stored.
    #[error("journal commit failed: {reason}")]
    CommitFailed {
        /// The failure of the group.
        reason: String,
    },
}

impl JournalError {
    /// Whether this is redb's storage failing (an I/O error, or the latch
    /// one leaves), after which the database must be opened again.
    fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            JournalError::Storage {
                source: redb::Error::Io(_)
                    | redb::Error::PreviousIo
                    | redb::Error::DatabaseClosed
                    | redb::Error::Backend(_),
                ..
            }
        )
    }
}

/// `err` and its sources on one line, for the log and for callers.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn storage_of<E: Into<redb::Error>>(operation: &'static str) -> impl Fn(E) -> JournalError {
    move |source| JournalError::Storage { operation, source: source.into() }
}

/// One write the writer thread applies.
enum WriteOp {
    /// A delivery on the append path (ADR 24), made ready on the caller's thread.
    Append {
        delivery: String,
        event: String,
        received_unix: u64,
        intake: Intake,
        reply: oneshot::Sender<Result<Accepted, JournalError>>,
    },
    Accept {
        delivery: String,
        event: String,
        decision: Box<Decision>,
        reply: oneshot::Sender<Result<Accepted, JournalError>>,
    },
    UpdateTask {
        task_id: TaskId,
        update: TaskUpdate,
        reply: oneshot::Sender<Result<Option<TaskRecord>, JournalError>>,
    },
    FinishTask {
        task_id: TaskId,
        outcome: Box<Outcome>,
        reply: oneshot::Sender<Result<Finished, JournalError>>,
    },
    Prune {
        cutoffs: Cutoffs,
        at: PruneAt,
        limit: usize,
        reply: oneshot::Sender<Result<(Pruned, PruneAt), JournalError>>,
    },
    Adopt {
        record: Box<TaskRecord>,
        reply: oneshot::Sender<Result<TaskRecord, JournalError>>,
    },
    MarkRedelivery {
        guid: String,
        reply: oneshot::Sender<Result<bool, JournalError>>,
    },
    NoticeSent {
        comment_id: u64,
        reply: oneshot::Sender<Result<bool, JournalError>>,
    },
}

/// What [`Journal::finish_task`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The outcome is recorded; the record after it.
    Recorded(TaskRecord),
    /// The task had already ended; its record, with the first outcome.
    Already(TaskRecord),
    /// No such task.
    Unknown,
}

/// A change to a task record, applied in the writer's transaction.
pub type TaskUpdate = Box<dyn FnOnce(&mut TaskRecord) + Send>;

/// The journal: cheap to clone, shared by the webhook handler, the scheduler
/// and the status API.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    writer: mpsc::Sender<WriteOp>,
}

/// What the handles and the writer thread share.
struct Shared {
    path: PathBuf,
    /// The open database; `None` while it is closed after a storage error.
    db: RwLock<Option<Arc<Database>>>,
    /// The storage error that stopped writes, while they fail.
    failure: Mutex<Option<String>>,
    /// Notified when writes succeed again after failing.
    recovered: Notify,
    /// Writes sent to the writer thread and not yet answered.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Intake records on disk in the log and not yet folded into redb.
    pending: RwLock<Pending>,
    /// Closed intake log segments, deleted once folded.
    closed: Mutex<Vec<Closed>>,
}

impl Shared {
    fn pending(&self) -> std::sync::RwLockReadGuard<'_, Pending> {
        self.pending.read().expect("journal pending lock is never poisoned")
    }

    fn pending_mut(&self) -> std::sync::RwLockWriteGuard<'_, Pending> {
        self.pending.write().expect("journal pending lock is never poisoned")
    }
}

/// One write counted in flight for as long as it is awaited (or until the
/// waiter is dropped).
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn count(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.shared.path).finish_non_exhaustive()
    }
}

/// Opens the journal at `path`, which exists, telling why it cannot be.
fn open_existing(path: &Path) -> Result<Database, JournalError> {
    let path_buf = || path.to_owned();
    // redb would initialise an empty file as a new database.
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() == 0 => return Err(JournalError::Empty { path: path_buf() }),
        _ => {}
    }
    Database::open(path).map_err(|source| {
        use redb::{DatabaseError, StorageError};
        match source {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                JournalError::InUse { path: path_buf() }
            }
            DatabaseError::UpgradeRequired(version) => {
                JournalError::OtherFormat { path: path_buf(), version }
            }
            DatabaseError::Storage(StorageError::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                JournalError::NotWritable { path: path_buf(), source: err }
            }
            source @ (DatabaseError::Storage(StorageError::Corrupted(_))
            | DatabaseError::Storage(StorageError::Io(_))) => {
                let corrupt = match &source {
                    DatabaseError::Storage(StorageError::Io(err)) => {
                        matches!(
                            err.kind(),
                            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                        )
                    }
                    _ => true,
                };
                if corrupt {
                    JournalError::Corrupt { path: path_buf(), source }
                } else {
                    JournalError::Open { path: path_buf(), source }
                }
            }
            source => JournalError::Open { path: path_buf(), source },
        }
    })
}

/// Makes a new journal at `path`: initialised beside it, then renamed into
/// place, so a crash half way leaves no file (a fresh start again), never an
/// empty or half-made one.
fn create_fresh(state_dir: &Path, path: &Path) -> Result<(), JournalError> {
    let dir_error = |source| JournalError::StateDir { path: state_dir.to_owned(), source };
    let not_writable = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            JournalError::NotWritable { path: path.to_owned(), source }
        }
        _ => dir_error(source),
    };
    let fresh = state_dir.join(format!("{FILE_NAME}.new"));
    match std::fs::remove_file(&fresh) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(not_writable(err)),
    }
    {
        let db = Database::create(&fresh).map_err(|source| match source {
            redb::DatabaseError::Storage(redb::StorageError::Io(err)) => not_writable(err),
            source => JournalError::Open { path: fresh.clone(), source },
        })?;
        create_tables(&db)?;
        set_schema(&db, SCHEMA)?;
    }
    std::fs::rename(&fresh, path).map_err(not_writable)?;
    // The rename itself is durable only once the directory is.
    std::fs::File::open(state_dir).and_then(|dir| dir.sync_all()).map_err(dir_error)
}

/// Creates every table, so readers never find one missing.
fn create_tables(db: &Database) -> Result<(), JournalError> {
    let txn = db.begin_write().map_err(storage_of("open"))?;
    txn.open_table(DELIVERIES).map_err(storage_of("open"))?;
    txn.open_table(TASKS).map_err(storage_of("open"))?;
    txn.open_table(ACTIVE).map_err(storage_of("open"))?;
    txn.open_table(META).map_err(storage_of("open"))?;
    txn.open_table(UNREPORTED).map_err(storage_of("open"))?;
    txn.open_table(REDELIVERIES).map_err(storage_of("open"))?;
    txn.open_table(COMMENTS).map_err(storage_of("open"))?;
    txn.open_table(NOTICES).map_err(storage_of("open"))?;
    txn.commit().map_err(storage_of("open"))
}

fn set_schema(db: &Database, version: u64) -> Result<(), JournalError> {
    let txn = db.begin_write().map_err(storage_of("open"))?;
    txn.open_table(META)
        .map_err(storage_of("open"))?
        .insert(SCHEMA_KEY, version)
        .map_err(storage_of("open"))?;
    txn.commit().map_err(storage_of("open"))
}

/// Brings the records to [`SCHEMA`], in one transaction: a failure
/// changes nothing, and a journal of a newer schema is refused.
fn migrate(db: &Database, path: &Path) -> Result<(), JournalError> {
    let version = {
        let txn = db.begin_read().map_err(storage_of("open"))?;
        let meta = txn.open_table(META).map_err(storage_of("open"))?;
        meta.get(SCHEMA_KEY).map_err(storage_of("open"))?.map_or(1, |value| value.value())
    };
    match version {
        SCHEMA => return Ok(()),
        1 => {}
        newer => return Err(JournalError::NewerSchema { path: path.to_owned(), version: newer }),
    }
    let txn = db.begin_write().map_err(storage_of("open"))?;
    let mut migrated = 0_usize;
    {
        let mut tasks = txn.open_table(TASKS).map_err(storage_of("open"))?;
        let mut rewritten = Vec::new();
        for entry in tasks.iter().map_err(storage_of("open"))? {
            let (key, value) = entry.map_err(storage_of("open"))?;
            let key = key.value().to_owned();
            let failed = |reason: String| JournalError::Migration {
                path: path.to_owned(),
                from: 1,
                key: key.clone(),
                reason,
            };
            let old: serde_json::Value =
                serde_json::from_slice(value.value()).map_err(|err| failed(err.to_string()))?;
            let new = task_v1_to_v2(old).map_err(&failed)?;
            // What is written must read back as a record of this schema.
            serde_json::from_value::<TaskRecord>(new.clone()).map_err(|err| failed(err.to_string()))?;
            rewritten.push((key.clone(), encode(&new)));
        }
        for (key, value) in rewritten {
            tasks.insert(key.as_str(), value.as_slice()).map_err(storage_of("open"))?;
            migrated += 1;
        }
        txn.open_table(META)
            .map_err(storage_of("open"))?
            .insert(SCHEMA_KEY, SCHEMA)
            .map_err(storage_of("open"))?;
    }
    txn.commit().map_err(storage_of("open"))?;
    info!(path = %path.display(), from = version, to = SCHEMA, tasks = migrated, "journal migrated");
    Ok(())
}

/// One task record of schema 1 in schema 2's shape: the loose outcome
/// fields go into the finished state, the pull request becomes typed.
fn task_v1_to_v2(mut value: serde_json::Value) -> Result<serde_json::Value, String> {
    use domain::tasks::{Conclusion, PullRequestRef};
    let record = value.as_object_mut().ok_or("not an object")?;
    let mut take = |field: &str| record.remove(field).filter(|value| !value.is_null());
    let conclusion = take("conclusion");
    let title = take("title");
    let summary = take("summary");
    let finished_unix = take("finished_unix");
    let exit_code = take("exit_code");
    let pull_request = take("pull_request");
    if record.get("state").and_then(serde_json::Value::as_str) != Some("finished") {
        return Ok(value);
    }
    let text = |value: Option<serde_json::Value>| value.and_then(|value| value.as_str().map(str::to_owned));
    let conclusion = match text(conclusion) {
        Some(word) => Conclusion::parse(&word).ok_or(format!("unknown conclusion {word:?}"))?,
        None => return Err("finished without a conclusion".to_owned()),
    };
    let pull_request = text(pull_request)
        .map(|text| PullRequestRef::from_v1(&text).ok_or(format!("unreadable pull request {text:?}")))
        .transpose()?;
    let outcome = Outcome {
        conclusion,
        title: text(title).unwrap_or_default(),
        summary: text(summary).unwrap_or_default(),
        finished_unix: finished_unix.and_then(|value| value.as_u64()).unwrap_or(0),
        exit_code: exit_code.and_then(|value| value.as_i64()),
        pull_request,
    };
    record.insert("state".to_owned(), serde_json::json!({ "finished": { "outcome": outcome } }));
    Ok(value)
}

/// Creates the tables a journal of an older berth lacks; writes nothing
/// when all are there (so a full disk does not stop a restart).
fn ensure_tables(db: &Database) -> Result<(), JournalError> {
    let txn = db.begin_read().map_err(storage_of("open"))?;
    let missing = txn.open_table(DELIVERIES).is_err()
        || txn.open_table(TASKS).is_err()
        || txn.open_table(ACTIVE).is_err()
        || txn.open_table(META).is_err()
        || txn.open_table(UNREPORTED).is_err()
        || txn.open_table(REDELIVERIES).is_err()
        || txn.open_table(COMMENTS).is_err()
        || txn.open_table(NOTICES).is_err();
    drop(txn);
    if missing { create_tables(db) } else { Ok(()) }
}

impl Journal {
    /// Opens `journal.redb` in `state_dir` and starts its writer; a new
    /// journal is made only when there is no such file.
    ///
    /// # Errors
    /// An empty, damaged or unreadable file is an error, never a silent
    /// fresh start; so are a file another process holds and a state
    /// directory that cannot be written.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| JournalError::StateDir { path: state_dir.to_owned(), source })?;
        let path = state_dir.join(FILE_NAME);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                info!(path = %path.display(), "no journal yet; starting a new one");
                create_fresh(state_dir, &path)?;
            }
            Err(source) => return Err(JournalError::StateDir { path: state_dir.to_owned(), source }),
        }
        let db = open_existing(&path)?;
        ensure_tables(&db)?;
        migrate(&db, &path)?;
        // The intake log is read only once redb's lock is held: no other
        // daemon appends to it now.
        let intake_dir = state_dir.join(intake::DIR_NAME);
        let replayed = IntakeLog::replay(&intake_dir)
            .map_err(|source| JournalError::IntakeRead { path: intake_dir.clone(), source })?;
        let (folded, seq) = {
            let txn = db.begin_read().map_err(storage_of("open"))?;
            let meta = txn.open_table(META).map_err(storage_of("open"))?;
            let get = |key| -> Result<u64, JournalError> {
                Ok(meta.get(key).map_err(storage_of("open"))?.map_or(0, |value| value.value()))
            };
            (get(FOLDED_KEY)?, get("seq")?)
        };
        // The in-memory indexes, rebuilt from the records not yet folded;
        // the fold thread folds them in at once.
        let mut pending = Pending::default();
        let mut last_lsn = folded;
        let mut last_seq = seq;
        for record in replayed.records {
            last_lsn = last_lsn.max(record.lsn);
            last_seq = record.tasks.iter().map(|task| task.seq).fold(last_seq, u64::max);
            if record.lsn > folded {
                pending.insert(Arc::new(Logged::new(record)));
            }
        }
        if pending.len() > 0 {
            info!(records = pending.len(), "journal intake log read; folding it in");
        }
        let shared = Arc::new(Shared {
            path,
            db: RwLock::new(Some(Arc::new(db))),
            failure: Mutex::new(None),
            recovered: Notify::new(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            pending: RwLock::new(pending),
            closed: Mutex::new(replayed.segments),
        });
        let thread_error = |source| JournalError::StateDir { path: state_dir.to_owned(), source };
        let (fold_wake, fold_woken) = mpsc::sync_channel(1);
        let fold_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("berth-journal-fold".to_owned())
            .spawn(move || fold_loop(&fold_shared, &fold_woken))
            .map_err(thread_error)?;
        // Fold what the log held before the first delivery waits for it.
        let _ = fold_wake.try_send(());
        let (writer, ops) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let log = IntakeLog::new(&intake_dir);
        std::thread::Builder::new()
            .name("berth-journal".to_owned())
            .spawn(move || {
                Writer::new(writer_shared, log, last_lsn + 1, last_seq, fold_wake).run(&ops);
            })
            .map_err(thread_error)?;
        Ok(Self { shared, writer })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Why writes fail now (the OS error of the last failed write), or `None`
    /// while the journal can write.
    pub fn write_failure(&self) -> Option<String> {
        self.shared.failure.lock().expect("journal failure lock is never poisoned").clone()
    }

    /// Resolves once writes succeed again after they failed (a disk that was
    /// full has room again), for whoever wants to catch up then.
    pub async fn recovered(&self) {
        self.shared.recovered.notified().await;
    }

    fn db(&self) -> Result<Arc<Database>, JournalError> {
        let db = self.shared.db.read().expect("journal database lock is never poisoned").clone();
        db.ok_or_else(|| JournalError::Closed {
            reason: self.write_failure().unwrap_or_else(|| "it is being opened again".to_owned()),
        })
    }

    async fn write<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> WriteOp,
    ) -> Result<T, JournalError> {
        let (reply, answer) = oneshot::channel();
        let _counted = InFlight::count(&self.shared.in_flight);
        self.writer.send(op(reply)).map_err(|_| JournalError::WriterGone)?;
        answer.await.map_err(|_| JournalError::WriterGone)?
    }

    /// Writes waiting for the writer thread now. Tests that run tokio's
    /// clock ahead let it move only while this is zero, since the writer is
    /// a real thread that paused time does not wait for.
    pub fn writes_in_flight(&self) -> usize {
        self.shared.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records a delivery and what it decided, durably, and says how it was taken.
    ///
    /// # Errors
    /// Storage failures; nothing is recorded then.
    pub async fn accept(
        &self,
        delivery: &str,
        event: &str,
        decision: Decision,
    ) -> Result<Accepted, JournalError> {
        // A decision that only reads the dedupe indexes and adds records
        // takes the append path (ADR 24); one that reads or changes tasks
        // already stored goes to redb, after the intake log is folded into
        // its transaction (a refusal writes a notice of its own: rare, and
        // nothing to gain). What can be made before the writer decides is
        // made here, on the caller's thread, so the one writer thread only
        // decides and copies.
        let received_unix = now_unix();
        let intake = match decision {
            Decision::Ignore(reason) => Intake::Ignore(reason),
            Decision::Queue(request) => Intake::Queue(vec![Prepared::new(request, delivery, received_unix)]),
            Decision::QueueEach(requests) => Intake::Queue(
                requests.into_iter().map(|request| Prepared::new(request, delivery, received_unix)).collect(),
            ),
            decision @ (Decision::Refuse(_)
            | Decision::Retry(_)
            | Decision::Cancel(_)
            | Decision::Supersede { .. }) => {
                return self
                    .write(|reply| WriteOp::Accept {
                        delivery: delivery.to_owned(),
                        event: event.to_owned(),
                        decision: Box::new(decision),
                        reply,
                    })
                    .await;
            }
        };
        self.write(|reply| WriteOp::Append {
            delivery: delivery.to_owned(),
            event: event.to_owned(),
            received_unix,
            intake,
            reply,
        })
        .await
    }

    /// Changes a task record; a finished task leaves the active set.
    /// Returns the record after the change, or `None` when there is no such task.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn update_task(
        &self,
        task_id: &TaskId,
        update: TaskUpdate,
    ) -> Result<Option<TaskRecord>, JournalError> {
        self.write(|reply| WriteOp::UpdateTask { task_id: task_id.clone(), update, reply }).await
    }

    /// Ends a task with `outcome`, once: the domain's rule
    /// ([`TaskRecord::finish`]) applied in the writer's transaction, so two
    /// paths that end the same task at once (a sweep racing a monitor) find
    /// out which one won.
    ///
    /// # Errors
    /// Storage failures; nothing is recorded then.
    pub async fn finish_task(&self, task_id: &TaskId, outcome: Outcome) -> Result<Finished, JournalError> {
        self.write(|reply| WriteOp::FinishTask {
            task_id: task_id.clone(),
            outcome: Box::new(outcome),
            reply,
        })
        .await
    }

    /// Forgets what is past its retention ([`Cutoffs`]): old deliveries,
    /// the comments that made tasks and unsent answers with them, and old
    /// tasks that are finished and reported, with every index naming them.
    /// A task not finished, or whose report has not reached GitHub, is kept
    /// however old. Done in steps of one transaction each, none looking at
    /// more than [`PRUNE_STEP`] records, so the writer takes other writes
    /// between them.
    ///
    /// # Errors
    /// Storage failures or a damaged record; the steps before it stand.
    pub async fn prune(&self, cutoffs: Cutoffs) -> Result<Pruned, JournalError> {
        self.prune_in_steps_of(PRUNE_STEP, cutoffs).await
    }

    /// [`Journal::prune`] in steps of at most `limit` records looked at.
    async fn prune_in_steps_of(&self, limit: usize, cutoffs: Cutoffs) -> Result<Pruned, JournalError> {
        // A step that may look at nothing would never move on.
        let limit = limit.max(1);
        let mut total = Pruned::default();
        let mut at = PruneAt::START;
        loop {
            let (pruned, next) = self.write(|reply| WriteOp::Prune { cutoffs, at, limit, reply }).await?;
            total.add(pruned);
            if next == PruneAt::Done {
                return Ok(total);
            }
            at = next;
        }
    }

    /// Records a task found only on a container's labels (the journal never
    /// knew it, or lost it), unless it is already known; returns the record kept.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn adopt(&self, record: TaskRecord) -> Result<TaskRecord, JournalError> {
        self.write(|reply| WriteOp::Adopt { record: Box::new(record), reply }).await
    }

    /// Notes that a redelivery of `guid` was asked for; false when it already was.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn mark_redelivery(&self, guid: &str) -> Result<bool, JournalError> {
        self.write(|reply| WriteOp::MarkRedelivery { guid: guid.to_owned(), reply }).await
    }

    /// Whether a redelivery of `guid` was noted as asked for.
    ///
    /// # Errors
    /// Storage failures.
    pub fn redelivery_asked(&self, guid: &str) -> Result<bool, JournalError> {
        let txn = self.db()?.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(REDELIVERIES).map_err(storage_of("read"))?;
        Ok(table.get(guid).map_err(storage_of("read"))?.is_some())
    }

    /// Notes that the answer to the refused command `comment_id` is on
    /// GitHub; false when no notice for it was pending.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn notice_sent(&self, comment_id: u64) -> Result<bool, JournalError> {
        self.write(|reply| WriteOp::NoticeSent { comment_id, reply }).await
    }

    /// Refused commands whose answer is not on GitHub yet, oldest first.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn pending_notices(&self) -> Result<Vec<Notice>, JournalError> {
        // The log first, then redb, as for tasks: a notice in both is redb's.
        let unfolded = self.shared.pending().notices();
        let txn = self.db()?.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(NOTICES).map_err(storage_of("read"))?;
        let mut notices = Vec::new();
        for entry in table.iter().map_err(storage_of("read"))? {
            let (key, value) = entry.map_err(storage_of("read"))?;
            notices.push(decode::<Notice>(&format!("notice {}", key.value()), value.value())?);
        }
        for (refusal, received_unix) in unfolded {
            if !notices.iter().any(|notice| notice.refusal.comment_id == refusal.comment_id) {
                notices.push(Notice { refusal, received_unix });
            }
        }
        notices.sort_by_key(|notice| (notice.received_unix, notice.refusal.comment_id));
        Ok(notices)
    }

    /// One task.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn task(&self, task_id: &TaskId) -> Result<Option<TaskRecord>, JournalError> {
        // The log first, then redb: a record leaves the log only after redb
        // has it, and redb's copy, when there is one, is the newer.
        let pending = self.shared.pending().task(task_id.as_str());
        let txn = self.db()?.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(TASKS).map_err(storage_of("read"))?;
        let value = table.get(task_id.as_str()).map_err(storage_of("read"))?;
        Ok(value.map(|value| decode(task_id.as_str(), value.value())).transpose()?.or(pending))
    }

    /// Every task, in the order accepted.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>, JournalError> {
        let pending = self.shared.pending().tasks();
        let txn = self.db()?.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(TASKS).map_err(storage_of("read"))?;
        let mut tasks = Vec::new();
        for entry in table.iter().map_err(storage_of("read"))? {
            let (key, value) = entry.map_err(storage_of("read"))?;
            tasks.push(decode::<TaskRecord>(key.value(), value.value())?);
        }
        let stored: std::collections::HashSet<TaskId> =
            tasks.iter().map(|task| task.task_id.clone()).collect();
        tasks.extend(pending.into_iter().filter(|task| !stored.contains(&task.task_id)));
        tasks.sort_by_key(|task| task.seq);
        Ok(tasks)
    }

    /// Tasks that are queued or running, in the order accepted.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn active_tasks(&self) -> Result<Vec<TaskRecord>, JournalError> {
        self.tasks_listed_in(ACTIVE, true)
    }

    /// Finished tasks whose report has not reached GitHub, in the order accepted.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn unreported_tasks(&self) -> Result<Vec<TaskRecord>, JournalError> {
        self.tasks_listed_in(UNREPORTED, false)
    }

    fn tasks_listed_in(
        &self,
        index: TableDefinition<'static, &str, &str>,
        id_in_value: bool,
    ) -> Result<Vec<TaskRecord>, JournalError> {
        // Tasks in the log are all queued, so active, unless redb has them
        // already (then redb's index says whether they still are).
        let pending = if id_in_value { self.shared.pending().tasks() } else { Vec::new() };
        let txn = self.db()?.begin_read().map_err(storage_of("read"))?;
        let listed = txn.open_table(index).map_err(storage_of("read"))?;
        let tasks = txn.open_table(TASKS).map_err(storage_of("read"))?;
        let mut records = Vec::new();
        for task in pending {
            if tasks.get(task.task_id.as_str()).map_err(storage_of("read"))?.is_none() {
                records.push(task);
            }
        }
        for entry in listed.iter().map_err(storage_of("read"))? {
            let (key, value) = entry.map_err(storage_of("read"))?;
            let task_id = if id_in_value { value.value().to_owned() } else { key.value().to_owned() };
            if let Some(bytes) = tasks.get(task_id.as_str()).map_err(storage_of("read"))? {
                records.push(decode::<TaskRecord>(&task_id, bytes.value())?);
            }
        }
        records.sort_by_key(|task| task.seq);
        records.dedup_by_key(|task| task.seq);
        Ok(records)
    }

    /// One delivery.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn delivery(&self, delivery: &str) -> Result<Option<DeliveryRecord>, JournalError> {
        let pending = self.shared.pending().delivery(delivery);
        let txn = self.db()?.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(DELIVERIES).map_err(storage_of("read"))?;
        let value = table.get(delivery).map_err(storage_of("read"))?;
        Ok(value.map(|value| decode(delivery, value.value())).transpose()?.or(pending))
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, JournalError> {
    serde_json::from_slice(bytes).map_err(|source| JournalError::Damaged { key: key.to_owned(), source })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("journal records always serialize")
}

/// The writer thread: owns the write side of the database, opens it again
/// after a storage error, and keeps [`Shared::failure`] up to date.
struct Writer {
    shared: Arc<Shared>,
    /// The writer's handle on the open database; `None` while closed.
    db: Option<Arc<Database>>,
    /// The intake log appended to.
    log: IntakeLog,
    /// The next intake record's place in the log.
    next_lsn: u64,
    /// The last `seq` given to a task.
    seq: u64,
    /// Wakes the fold thread early; dropping it stops the thread.
    fold_wake: mpsc::SyncSender<()>,
    /// The frames of the batch being appended (kept for the next batch).
    frames: Vec<u8>,
}

impl Writer {
    fn new(
        shared: Arc<Shared>,
        log: IntakeLog,
        next_lsn: u64,
        seq: u64,
        fold_wake: mpsc::SyncSender<()>,
    ) -> Self {
        let db = shared.db.read().expect("journal database lock is never poisoned").clone();
        Self { shared, db, log, next_lsn, seq, fold_wake, frames: Vec::new() }
    }

    /// Takes one op (or, while writes fail, waits at most [`PROBE_EVERY`]
    /// for one), then whatever else is already waiting, and applies them in
    /// one transaction; an empty batch while writes fail is a probe.
    fn run(mut self, ops: &mpsc::Receiver<WriteOp>) {
        loop {
            let failing = self.failing();
            let first = if failing {
                match ops.recv_timeout(PROBE_EVERY) {
                    Ok(op) => Some(op),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match ops.recv() {
                    Ok(op) => Some(op),
                    Err(_) => return,
                }
            };
            let mut batch: Vec<WriteOp> = first.into_iter().collect();
            while batch.len() < MAX_GROUP {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            debug!(writes = batch.len(), "journal group commit");
            // Deliveries that only add records go to the intake log, in one
            // synced append; the rest (and a probe) to redb, after them.
            let (appends, batch): (Vec<WriteOp>, Vec<WriteOp>) =
                batch.into_iter().partition(|op| matches!(op, WriteOp::Append { .. }));
            if !appends.is_empty() {
                self.append(appends, failing);
                if batch.is_empty() {
                    continue;
                }
            }
            let failing = self.failing();
            if failing && batch.is_empty() {
                // Reads need no room: open the database again for them at
                // once, even while the disk is still full.
                if self.db.is_none()
                    && let Err(err) = self.database()
                {
                    debug!(error = %chain(&err), "the journal cannot be opened again yet");
                }
                if self.short_of_room() {
                    continue;
                }
            }
            let db = match self.database() {
                Ok(db) => db,
                Err(err) => {
                    let reason = format!("cannot open it again: {}", chain(&err));
                    self.cannot_write(reason.clone());
                    fail_all(batch, &reason);
                    continue;
                }
            };
            // The journal's state is settled before any caller is answered,
            // so a 503 is never followed by a /readyz that still says 200.
            // The intake log is folded into the same transaction first, so
            // the batch sees every record.
            let pending = self.shared.pending().snapshot();
            let mut committed = None;
            apply_batch(&db, batch, &pending, |result| match result {
                Ok(folded) => {
                    committed = Some(*folded);
                    self.settle(&Ok(()), failing);
                }
                Err(err) => self.settle_error(err),
            });
            if let Some(folded) = committed {
                self.shared.pending_mut().remove_upto(folded.upto);
                self.seq = self.seq.max(folded.seq);
            }
        }
    }

    /// The append path: decides each delivery against the log's records
    /// and redb's, appends the new records in one write and one
    /// `fdatasync`, and only then makes them visible and answers.
    fn append(&mut self, batch: Vec<WriteOp>, failing: bool) {
        let db = match self.database() {
            Ok(db) => db,
            Err(err) => {
                let reason = format!("cannot open it again: {}", chain(&err));
                self.cannot_write(reason.clone());
                fail_all(batch, &reason);
                return;
            }
        };
        let mut staged = Staged { next_lsn: self.next_lsn, seq: self.seq, ..Staged::default() };
        let mut answers = Vec::with_capacity(batch.len());
        let mut ops = batch.into_iter();
        let decided = (|| -> Result<(), JournalError> {
            // The log's records first, then redb: a record leaves the log
            // only once redb has it, so nothing is in neither.
            let pending = self.shared.pending();
            let txn = db.begin_read().map_err(storage_of("read"))?;
            let stored = Stored::open(&txn)?;
            for op in ops.by_ref() {
                match op {
                    WriteOp::Append { delivery, event, received_unix, intake, reply } => {
                        let accepted =
                            staged.accept(&stored, &pending, delivery, event, intake, received_unix);
                        match accepted {
                            Ok(accepted) => answers.push((reply, accepted)),
                            Err(err) => {
                                drop(reply.send(Err(JournalError::CommitFailed { reason: chain(&err) })));
                                return Err(err);
                            }
                        }
                    }
                    other => fail_op(other, "only deliveries take the append path"),
                }
            }
            Ok(())
        })();
        if let Err(err) = decided {
            // As in a redb transaction: one failure fails the whole batch.
            let reason = chain(&err);
            fail_all(ops.collect(), &reason);
            for (reply, _) in answers {
                drop(reply.send(Err(JournalError::CommitFailed { reason: reason.clone() })));
            }
            self.settle(&Err(err), failing);
            return;
        }
        let written = match (staged.records.first(), staged.records.last()) {
            (Some(first), Some(last)) => {
                let (first, last) = (first.record(), last.record());
                // One buffer for every batch: it grows to the largest batch once.
                let mut frames = std::mem::take(&mut self.frames);
                frames.clear();
                for logged in &staged.records {
                    intake::frame(logged, &mut frames);
                }
                let written = self
                    .log
                    .append(&frames, first.lsn, last.lsn)
                    .map_err(|source| JournalError::IntakeWrite { source });
                self.frames = frames;
                written
            }
            _ => Ok(()),
        };
        if let Err(err) = written {
            let reason = chain(&err);
            self.settle(&Err(err), failing);
            for (reply, _) in answers {
                drop(reply.send(Err(JournalError::CommitFailed { reason: reason.clone() })));
            }
            return;
        }
        // On disk: visible to readers and the next batch, then answered.
        self.next_lsn = staged.next_lsn;
        self.seq = staged.seq;
        let waiting = {
            let mut pending = self.shared.pending_mut();
            for logged in staged.records {
                pending.insert(Arc::new(logged));
            }
            pending.len()
        };
        self.settle(&Ok(()), failing);
        for (reply, accepted) in answers {
            drop(reply.send(Ok(accepted)));
        }
        if let Some(closed) = self.log.rotate_if_full() {
            self.shared.closed.lock().expect("journal segment lock is never poisoned").push(closed);
        }
        if waiting >= FOLD_AT {
            let _ = self.fold_wake.try_send(());
        }
    }

    /// Notes how a batch went: a storage failure closes the database (redb
    /// stays latched after one until the file is opened again) and marks
    /// the journal as unable to write; a success after failures marks it
    /// writable again, once the file system has room.
    fn settle(&mut self, result: &Result<(), JournalError>, failing: bool) {
        match result {
            Err(err) => self.settle_error(err),
            Ok(()) => self.settle_ok(failing),
        }
    }

    fn settle_ok(&self, failing: bool) {
        if failing && !self.short_of_room() {
            *self.shared.failure.lock().expect("journal failure lock is never poisoned") = None;
            info!("the journal can write again");
            self.shared.recovered.notify_one();
        }
    }

    fn settle_error(&mut self, err: &JournalError) {
        match err {
            err if err.is_storage_failure() => {
                *self.shared.db.write().expect("journal database lock is never poisoned") = None;
                self.db = None;
                self.cannot_write(chain(err));
            }
            err @ JournalError::IntakeWrite { .. } => self.cannot_write(chain(err)),
            err => {
                warn!(error = %chain(err), "journal commit failed; its writes are answered with errors");
            }
        }
    }

    /// Whether the state directory's file system has less room than
    /// [`MIN_FREE_TO_RECOVER`]; says so as the reason writes fail.
    fn short_of_room(&self) -> bool {
        let dir = self.shared.path.parent().unwrap_or(Path::new("."));
        let Ok(stats) = nix::sys::statvfs::statvfs(dir) else { return false };
        let free = stats.blocks_available().saturating_mul(stats.fragment_size());
        if free >= MIN_FREE_TO_RECOVER {
            return false;
        }
        self.cannot_write(format!(
            "only {} KiB free on the file system of {}; waiting for {} MiB",
            free >> 10,
            dir.display(),
            MIN_FREE_TO_RECOVER >> 20
        ));
        true
    }

    fn failing(&self) -> bool {
        self.shared.failure.lock().expect("journal failure lock is never poisoned").is_some()
    }

    /// The open database, opening it again if a storage error closed it.
    fn database(&mut self) -> Result<Arc<Database>, JournalError> {
        if let Some(db) = &self.db {
            return Ok(Arc::clone(db));
        }
        // Readers may still hold the old handle (and with it the file's
        // lock) for a moment after it was closed.
        let started = Instant::now();
        let db = loop {
            match open_existing(&self.shared.path) {
                Err(JournalError::InUse { .. }) if started.elapsed() < REOPEN_WAIT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        // Folds that were not synced went with the old handle, and their
        // records left `Pending`: the log still holds every one of them.
        let folded = {
            let txn = db.begin_read().map_err(storage_of("read"))?;
            let meta = txn.open_table(META).map_err(storage_of("read"))?;
            meta.get(FOLDED_KEY).map_err(storage_of("read"))?.map_or(0, |value| value.value())
        };
        let dir = self.shared.path.with_file_name(intake::DIR_NAME);
        let records = IntakeLog::records(&dir)
            .map_err(|source| JournalError::IntakeRead { path: dir.clone(), source })?;
        let restored = {
            let mut pending = self.shared.pending_mut();
            let before = pending.len();
            for record in records.into_iter().filter(|record| record.lsn > folded) {
                pending.insert(Arc::new(Logged::new(record)));
            }
            pending.len() - before
        };
        let db = Arc::new(db);
        *self.shared.db.write().expect("journal database lock is never poisoned") = Some(Arc::clone(&db));
        self.db = Some(Arc::clone(&db));
        info!(
            path = %self.shared.path.display(),
            restored,
            "journal opened again after a storage error; records of folds it had not synced are read back from the intake log"
        );
        Ok(db)
    }

    /// Notes that writes fail, and why; logged once per outage.
    fn cannot_write(&self, reason: String) {
        let first = {
            let mut failure = self.shared.failure.lock().expect("journal failure lock is never poisoned");
            let first = failure.is_none();
            *failure = Some(reason.clone());
            first
        };
        if first {
            error!(
                error = %reason,
                path = %self.shared.path.display(),
                "the journal cannot write; deliveries get 503 and /readyz answers 503 until it can"
            );
        } else {
            debug!(error = %reason, "the journal still cannot write");
        }
    }
}

/// Answers every op of a batch that could not be applied.
fn fail_all(batch: Vec<WriteOp>, reason: &str) {
    for op in batch {
        fail_op(op, reason);
    }
}

fn fail_op(op: WriteOp, reason: &str) {
    let error = || JournalError::CommitFailed { reason: reason.to_owned() };
    match op {
        WriteOp::Append { reply, .. } | WriteOp::Accept { reply, .. } => drop(reply.send(Err(error()))),
        WriteOp::UpdateTask { reply, .. } => drop(reply.send(Err(error()))),
        WriteOp::FinishTask { reply, .. } => drop(reply.send(Err(error()))),
        WriteOp::Prune { reply, .. } => drop(reply.send(Err(error()))),
        WriteOp::Adopt { reply, .. } => drop(reply.send(Err(error()))),
        WriteOp::MarkRedelivery { reply, .. } => drop(reply.send(Err(error()))),
        WriteOp::NoticeSent { reply, .. } => drop(reply.send(Err(error()))),
    }
}

enum Reply {
    Accept(oneshot::Sender<Result<Accepted, JournalError>>, Accepted),
    UpdateTask(oneshot::Sender<Result<Option<TaskRecord>, JournalError>>, Option<TaskRecord>),
    FinishTask(oneshot::Sender<Result<Finished, JournalError>>, Finished),
    Prune(oneshot::Sender<Result<(Pruned, PruneAt), JournalError>>, (Pruned, PruneAt)),
    Adopt(oneshot::Sender<Result<TaskRecord, JournalError>>, TaskRecord),
    MarkRedelivery(oneshot::Sender<Result<bool, JournalError>>, bool),
    NoticeSent(oneshot::Sender<Result<bool, JournalError>>, bool),
}

/// Applies a batch in one transaction and answers each op once it is
/// committed, or each with the error when anything failed. An empty batch
/// is a probe: one small write, to learn whether the journal can write.
fn apply_batch(
    db: &Database,
    batch: Vec<WriteOp>,
    pending: &[Arc<Logged>],
    settle: impl FnOnce(&Result<Folded, JournalError>),
) {
    let mut replies = Vec::with_capacity(batch.len());
    let probe = batch.is_empty();
    let mut ops = batch.into_iter();
    let result = (|| -> Result<Folded, JournalError> {
        let txn = db.begin_write().map_err(storage_of("write"))?;
        let upto = fold_in(&txn, pending)?;
        if probe {
            let mut meta = txn.open_table(META).map_err(storage_of("write"))?;
            meta.insert("probe", now_unix()).map_err(storage_of("write"))?;
        }
        for op in ops.by_ref() {
            replies.push(match op {
                // `Writer::run` sends every one to `Writer::append`.
                op @ WriteOp::Append { .. } => {
                    fail_op(op, "a delivery on the append path reached a redb transaction");
                    continue;
                }
                WriteOp::Accept { delivery, event, decision, reply } => {
                    Reply::Accept(reply, accept_in(&txn, &delivery, &event, *decision)?)
                }
                WriteOp::UpdateTask { task_id, update, reply } => {
                    Reply::UpdateTask(reply, update_in(&txn, &task_id, update)?)
                }
                WriteOp::FinishTask { task_id, outcome, reply } => {
                    Reply::FinishTask(reply, finish_in(&txn, &task_id, *outcome)?)
                }
                WriteOp::Prune { cutoffs, at, limit, reply } => {
                    Reply::Prune(reply, prune_in(&txn, cutoffs, at, limit)?)
                }
                WriteOp::Adopt { record, reply } => Reply::Adopt(reply, adopt_in(&txn, *record)?),
                WriteOp::MarkRedelivery { guid, reply } => {
                    let mut asked = txn.open_table(REDELIVERIES).map_err(storage_of("write"))?;
                    let fresh = asked.get(guid.as_str()).map_err(storage_of("write"))?.is_none();
                    if fresh {
                        asked.insert(guid.as_str(), now_unix()).map_err(storage_of("write"))?;
                    }
                    Reply::MarkRedelivery(reply, fresh)
                }
                WriteOp::NoticeSent { comment_id, reply } => {
                    let mut notices = txn.open_table(NOTICES).map_err(storage_of("write"))?;
                    let pending = notices.remove(comment_id).map_err(storage_of("write"))?.is_some();
                    Reply::NoticeSent(reply, pending)
                }
            });
        }
        let seq = txn
            .open_table(META)
            .map_err(storage_of("write"))?
            .get("seq")
            .map_err(storage_of("write"))?
            .map_or(0, |value| value.value());
        txn.commit().map_err(storage_of("commit"))?;
        Ok(Folded { upto, seq })
    })();
    settle(&result);
    let failure = result.as_ref().err().map(|err| chain(err));
    let answer = |reason: &Option<String>| reason.clone().map(|reason| JournalError::CommitFailed { reason });
    for reply in replies {
        match reply {
            Reply::Accept(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::UpdateTask(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::FinishTask(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::Prune(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::Adopt(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::MarkRedelivery(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::NoticeSent(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
        }
    }
    // Ops after the failing one (and the failing one) are dropped: their callers see the writer's error.
    fail_all(ops.collect(), failure.as_deref().unwrap_or_default());
}

fn accept_in(
    txn: &WriteTransaction,
    delivery: &str,
    event: &str,
    decision: Decision,
) -> Result<Accepted, JournalError> {
    let mut deliveries = txn.open_table(DELIVERIES).map_err(storage_of("write"))?;
    if let Some(existing) = deliveries.get(delivery).map_err(storage_of("write"))? {
        let existing: DeliveryRecord = decode(delivery, existing.value())?;
        return Ok(received_again(delivery, existing.outcome));
    }
    let accepted = match decision {
        Decision::Ignore(reason) => Accepted::Ignored { reason },
        Decision::Refuse(refusal) => {
            let reason = refusal.reason.clone();
            notice_in(txn, refusal)?;
            Accepted::Ignored { reason }
        }
        Decision::Queue(request) => queue_in(txn, delivery, request)?,
        Decision::QueueEach(requests) => queue_each(requests, |request| queue_in(txn, delivery, request))?,
        Decision::Retry(retry) => match retried(txn, &retry)? {
            Ok(request) => queue_in(txn, delivery, request)?,
            Err(reason) => {
                if let (Some(comment_id), RetryTarget::Latest { number }) = (retry.comment_id, &retry.target)
                {
                    let refusal = Refusal {
                        repo: retry.repo.clone(),
                        number: *number,
                        sender: retry.sender.clone(),
                        installation: retry.installation,
                        comment_id,
                        reason: reason.clone(),
                    };
                    notice_in(txn, refusal)?;
                }
                Accepted::Ignored { reason }
            }
        },
        Decision::Cancel(cancel) => {
            let tasks = cancel_in(txn, &cancel)?;
            if tasks.is_empty() {
                Accepted::Ignored {
                    reason: format!("{}: no queued or running task to cancel", cancel.reason),
                }
            } else {
                Accepted::CancelRequested { tasks, reason: cancel.reason.clone(), queued: None }
            }
        }
        Decision::Supersede { cancel, queue } => {
            let tasks = cancel_in(txn, &cancel)?;
            let queued = match queue {
                Some(request) => match queue_in(txn, delivery, request)? {
                    Accepted::Queued { task } => Some(task),
                    _ => None,
                },
                None => None,
            };
            match (tasks.is_empty(), queued) {
                (true, Some(task)) => Accepted::Queued { task },
                (true, None) => {
                    Accepted::Ignored { reason: format!("{}: no review to supersede", cancel.reason) }
                }
                (false, queued) => Accepted::CancelRequested { tasks, reason: cancel.reason.clone(), queued },
            }
        }
    };
    let record =
        DeliveryRecord { received_unix: now_unix(), event: event.to_owned(), outcome: accepted.clone() };
    deliveries.insert(delivery, encode(&record).as_slice()).map_err(storage_of("write"))?;
    Ok(accepted)
}

/// The answer to a delivery received before, whose first answer was `first`.
fn received_again(delivery: &str, first: Accepted) -> Accepted {
    let task = match first {
        Accepted::Queued { task } => Some(task),
        Accepted::Duplicate { task, .. } => task,
        Accepted::CancelRequested { queued, .. } => queued,
        Accepted::Ignored { .. } => None,
    };
    Accepted::Duplicate { task, reason: format!("delivery {delivery} was already received") }
}

/// The answer to a request whose comment already made `task`.
fn comment_made(comment: u64, task: TaskId) -> Accepted {
    Accepted::Duplicate { reason: format!("comment {comment} already made task {task}"), task: Some(task) }
}

/// The answer to a request for `asked` whose dedupe key `task` holds.
fn already_active(asked: &TaskRecord, task: &str) -> Accepted {
    Accepted::Duplicate {
        task: TaskId::new(task).ok(),
        reason: format!(
            "a {} task for {}#{} is already queued or running",
            asked.kind, asked.repo, asked.number
        ),
    }
}

/// The answer on GitHub to a person's command for `asked` that `accepted`
/// found a duplicate of `task`; `None` when nobody's comment asked.
fn duplicate_refusal(asked: &TaskRecord, accepted: &Accepted, task: &str) -> Option<Refusal> {
    let Accepted::Duplicate { reason, .. } = accepted else { return None };
    Refusal::of_task(asked, format!("{reason} (task `{task}`)"))
}

/// Queues each request with `queue`; the answer names the first task
/// queued (else the first duplicate); the others are in the journal all the same.
fn queue_each<T>(
    requests: Vec<T>,
    mut queue: impl FnMut(T) -> Result<Accepted, JournalError>,
) -> Result<Accepted, JournalError> {
    let mut first = None;
    for request in requests {
        let accepted = queue(request)?;
        match (&first, &accepted) {
            (None, _) | (Some(Accepted::Duplicate { .. }), Accepted::Queued { .. }) => {
                first = Some(accepted);
            }
            _ => {}
        }
    }
    Ok(first.unwrap_or_else(|| Accepted::Ignored { reason: "no pull request to queue".to_owned() }))
}

/// redb's committed dedupe indexes, as the append path reads them.
struct Stored {
    deliveries: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    comments: redb::ReadOnlyTable<u64, &'static [u8]>,
    active: redb::ReadOnlyTable<&'static str, &'static str>,
}

impl Stored {
    fn open(txn: &redb::ReadTransaction) -> Result<Self, JournalError> {
        Ok(Self {
            deliveries: txn.open_table(DELIVERIES).map_err(storage_of("read"))?,
            comments: txn.open_table(COMMENTS).map_err(storage_of("read"))?,
            active: txn.open_table(ACTIVE).map_err(storage_of("read"))?,
        })
    }
}

/// What a delivery on the append path asks for, made ready by
/// [`Journal::accept`] on the caller's thread.
enum Intake {
    Ignore(String),
    /// New tasks, in order (a `Decision::Queue` is one of them).
    Queue(Vec<Prepared>),
}

/// A task a delivery asks for, made on the caller's thread: its record, with
/// no `seq` yet, and that record's JSON. The writer gives the `seq` and
/// copies the JSON around it; it neither builds nor encodes the record.
struct Prepared {
    record: TaskRecord,
    json: Vec<u8>,
    /// Where the `0` of `"seq":0` is in `json`; `None` when it is not where
    /// it is looked for (then the writer encodes the record itself).
    seq_at: Option<usize>,
}

impl Prepared {
    fn new(request: TaskRequest, delivery: &str, received_unix: u64) -> Self {
        let record = TaskRecord::queued(request, delivery, 0, received_unix);
        let json = encode(&record);
        let seq_at = seq_position(&json, record.task_id.as_str());
        Self { record, json, seq_at }
    }

    /// The record with its `seq`, and its JSON.
    fn with_seq(self, seq: u64) -> (TaskRecord, Vec<u8>) {
        let Self { mut record, json, seq_at } = self;
        record.seq = seq;
        let json = match seq_at {
            Some(at) => {
                let mut out = Vec::with_capacity(json.len() + 20);
                out.extend_from_slice(&json[..at]);
                serde_json::to_writer(&mut out, &seq).expect("a number always serializes");
                out.extend_from_slice(&json[at + 1..]);
                out
            }
            None => encode(&record),
        };
        (record, json)
    }
}

/// Where the value of `seq` is in a [`TaskRecord`]'s JSON with `seq` 0:
/// right after its first field, the task id (whose characters need no
/// escaping). `None` if it is not there.
fn seq_position(json: &[u8], task_id: &str) -> Option<usize> {
    const HEAD: &[u8] = b"{\"task_id\":\"";
    const SEQ: &[u8] = b"\",\"seq\":";
    let after_id = HEAD.len() + task_id.len();
    let at = after_id + SEQ.len();
    let found = json.starts_with(HEAD)
        && json.get(HEAD.len()..after_id) == Some(task_id.as_bytes())
        && json.get(after_id..at) == Some(SEQ)
        && json.get(at..at + 2) == Some(b"0,");
    found.then_some(at)
}

/// One append batch as it is decided: its records, and what they add to
/// the indexes for the deliveries after them in the same batch.
#[derive(Default)]
struct Staged {
    records: Vec<Logged>,
    deliveries: HashMap<String, Accepted>,
    comments: HashMap<u64, TaskId>,
    active: HashMap<String, TaskId>,
    /// The answers to people's duplicate commands in the delivery being decided.
    notices: Vec<Refusal>,
    next_lsn: u64,
    seq: u64,
}

impl Staged {
    /// [`accept_in`] for a delivery on the append path, against this
    /// batch, the log's records and redb, in that order.
    fn accept(
        &mut self,
        stored: &Stored,
        pending: &Pending,
        delivery: String,
        event: String,
        intake: Intake,
        received_unix: u64,
    ) -> Result<Accepted, JournalError> {
        let first = match self.deliveries.get(&delivery).or_else(|| pending.delivery_outcome(&delivery)) {
            Some(first) => Some(first.clone()),
            None => match stored.deliveries.get(delivery.as_str()).map_err(storage_of("read"))? {
                Some(value) => Some(decode::<DeliveryRecord>(&delivery, value.value())?.outcome),
                None => None,
            },
        };
        if let Some(first) = first {
            return Ok(received_again(&delivery, first));
        }
        let mut tasks = Vec::new();
        let mut task_json = Vec::new();
        let accepted = match intake {
            Intake::Ignore(reason) => Accepted::Ignored { reason },
            Intake::Queue(prepared) => {
                queue_each(prepared, |task| self.queue(stored, pending, task, &mut tasks, &mut task_json))?
            }
        };
        self.deliveries.insert(delivery.clone(), accepted.clone());
        let record = IntakeRecord {
            lsn: self.next_lsn,
            delivery,
            event,
            received_unix,
            outcome: accepted.clone(),
            tasks,
            notices: std::mem::take(&mut self.notices),
        };
        self.next_lsn += 1;
        self.records.push(Logged::encoded(record, task_json));
        Ok(accepted)
    }

    /// [`queue_in`] on the append path; a task queued goes to `tasks`, and
    /// its JSON to `task_json`.
    fn queue(
        &mut self,
        stored: &Stored,
        pending: &Pending,
        task: Prepared,
        tasks: &mut Vec<TaskRecord>,
        task_json: &mut Vec<Vec<u8>>,
    ) -> Result<Accepted, JournalError> {
        let asked = &task.record;
        if let Some(comment) = asked.comment_id {
            let made = match self.comments.get(&comment).or_else(|| pending.comment_task(comment)) {
                Some(task) => Some(task.clone()),
                None => match stored.comments.get(comment).map_err(storage_of("read"))? {
                    Some(value) => {
                        Some(decode::<CommentRecord>(&format!("comment {comment}"), value.value())?.task)
                    }
                    None => None,
                },
            };
            if let Some(task) = made {
                return Ok(comment_made(comment, task));
            }
        }
        let key = asked.dedupe_key.as_str();
        let existing = match self.active.get(key).or_else(|| pending.active_task(key)) {
            Some(task) => Some(task.as_str().to_owned()),
            None => stored.active.get(key).map_err(storage_of("read"))?.map(|task| task.value().to_owned()),
        };
        if let Some(existing) = existing {
            let accepted = already_active(asked, &existing);
            self.notices.extend(duplicate_refusal(asked, &accepted, &existing));
            return Ok(accepted);
        }
        self.seq += 1;
        let (record, json) = task.with_seq(self.seq);
        self.active.insert(record.dedupe_key.clone(), record.task_id.clone());
        if let Some(comment) = record.comment_id {
            self.comments.insert(comment, record.task_id.clone());
        }
        let accepted = Accepted::Queued { task: record.task_id.clone() };
        tasks.push(record);
        task_json.push(json);
        Ok(accepted)
    }
}

/// What a transaction that folded the intake log left in `meta`.
#[derive(Debug, Clone, Copy)]
struct Folded {
    /// The last intake record redb holds.
    upto: u64,
    /// The last `seq` given to a task.
    seq: u64,
}

/// Writes the intake records not yet in redb (those after `meta.folded`)
/// into its tables, as [`accept_in`] would have; returns the last folded.
fn fold_in(txn: &WriteTransaction, records: &[Arc<Logged>]) -> Result<u64, JournalError> {
    let mut meta = txn.open_table(META).map_err(storage_of("write"))?;
    let folded = meta.get(FOLDED_KEY).map_err(storage_of("write"))?.map_or(0, |value| value.value());
    let fresh: Vec<&Logged> =
        records.iter().map(AsRef::as_ref).filter(|logged| logged.record().lsn > folded).collect();
    let Some(last) = fresh.last() else { return Ok(folded) };
    let upto = last.record().lsn;
    let mut seq = meta.get("seq").map_err(storage_of("write"))?.map_or(0, |value| value.value());
    // Each table's rows go in in key order: the keys (delivery ids, task
    // ids) are random, and inserting them sorted walks each B-tree leaf
    // once instead of once per row. The sort is stable, so of two rows with
    // one key (a dedupe key taken again after its task ended) the later wins.
    let mut delivery_rows: Vec<&IntakeRecord> = fresh.iter().map(|logged| logged.record()).collect();
    delivery_rows.sort_by(|a, b| a.delivery.cmp(&b.delivery));
    // The tasks' JSON was made when they were logged; it is copied, not made again.
    let mut task_rows: Vec<(&TaskRecord, &[u8])> = fresh.iter().flat_map(|logged| logged.tasks()).collect();
    for (task, _) in &task_rows {
        seq = seq.max(task.seq);
    }
    {
        let mut deliveries = txn.open_table(DELIVERIES).map_err(storage_of("write"))?;
        for record in delivery_rows {
            deliveries
                .insert(record.delivery.as_str(), encode(&record.delivery_record()).as_slice())
                .map_err(storage_of("write"))?;
        }
    }
    task_rows.sort_by(|(a, _), (b, _)| a.task_id.as_str().cmp(b.task_id.as_str()));
    {
        let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
        for (task, json) in &task_rows {
            tasks.insert(task.task_id.as_str(), *json).map_err(storage_of("write"))?;
        }
    }
    task_rows.sort_by(|(a, _), (b, _)| a.dedupe_key.cmp(&b.dedupe_key));
    {
        let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
        for (task, _) in &task_rows {
            active.insert(task.dedupe_key.as_str(), task.task_id.as_str()).map_err(storage_of("write"))?;
        }
    }
    task_rows.retain(|(task, _)| task.comment_id.is_some());
    task_rows.sort_by_key(|(task, _)| task.comment_id);
    {
        let mut comments = txn.open_table(COMMENTS).map_err(storage_of("write"))?;
        for (task, _) in &task_rows {
            let Some(comment) = task.comment_id else { continue };
            let made = CommentRecord { task: task.task_id.clone(), received_unix: task.accepted_unix };
            comments.insert(comment, encode(&made).as_slice()).map_err(storage_of("write"))?;
        }
    }
    for logged in &fresh {
        for refusal in &logged.record().notices {
            notice_in(txn, refusal.clone())?;
        }
    }
    meta.insert("seq", seq).map_err(storage_of("write"))?;
    meta.insert(FOLDED_KEY, upto).map_err(storage_of("write"))?;
    Ok(upto)
}

/// The fold thread: every [`FOLD_EVERY`], or when the writer wakes it,
/// folds the records waiting in the intake log into redb in one
/// transaction and lets go of them. Most folds are not synced
/// (`Durability::None`): redb keeps them in the page cache, where the next
/// folds rewrite the same pages for free, and after a crash it comes back
/// at its last synced commit, whose `meta.folded` is older, so the records
/// after it are read from the log and folded again. At most every
/// [`SYNC_FOLD_EVERY`] a fold is synced, and only then are the segments
/// that hold only folded records deleted. Stops when the writer does.
fn fold_loop(shared: &Shared, woken: &mpsc::Receiver<()>) {
    // The first fold (of what a restart read back) is synced at once.
    let mut synced_at: Option<Instant> = None;
    // Whether a fold since the last synced one was not synced.
    let mut unsynced = false;
    // Since when the log has been idle, and whether its spares were trimmed since.
    let mut idle_since: Option<Instant> = None;
    let mut trimmed = false;
    loop {
        match woken.recv_timeout(FOLD_EVERY) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let sync_due = synced_at.is_none_or(|at| at.elapsed() >= SYNC_FOLD_EVERY);
        let fold = fold_once(shared, sync_due, unsynced);
        if matches!(fold, Ok(Fold::Idle)) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            // While the journal cannot write (a full disk, most likely), the
            // spares' room is given back at once.
            let failing = shared.failure.lock().expect("journal failure lock is never poisoned").is_some();
            if !trimmed && (failing || since.elapsed() >= SPARES_KEPT_IDLE) {
                trimmed = true;
                if let Err(err) = intake::trim_spares(&shared.path.with_file_name(intake::DIR_NAME)) {
                    warn!(error = %err, "the intake log's spare segments cannot be deleted");
                }
            }
        } else {
            idle_since = None;
            trimmed = false;
        }
        match fold {
            Ok(Fold::Synced) => {
                synced_at = Some(Instant::now());
                unsynced = false;
            }
            Ok(Fold::NotSynced) => unsynced = true,
            Ok(Fold::Nothing | Fold::Idle) => {}
            // The records stay in the log and in memory; the next round, or
            // the writer's next redb transaction, folds them.
            Err(err) => warn!(error = %chain(&err), "journal fold failed; the intake log keeps its records"),
        }
    }
}

/// What one round of the fold thread did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    /// A synced commit: everything folded so far is on disk.
    Synced,
    /// A commit redb has not synced yet.
    NotSynced,
    /// No commit.
    Nothing,
    /// No commit, nothing waiting and no segment let go: the log is idle.
    Idle,
}

/// One round: folds the waiting records, synced when `sync_due` (or when
/// nothing waits but an earlier fold is `unsynced`), then deletes the
/// segments whose records are all folded and on disk.
fn fold_once(shared: &Shared, sync_due: bool, unsynced: bool) -> Result<Fold, JournalError> {
    let records = shared.pending().snapshot();
    let Some(db) = shared.db.read().expect("journal database lock is never poisoned").clone() else {
        return Ok(Fold::Nothing);
    };
    let (folded, fold) = if records.is_empty() && !(unsynced && sync_due) {
        if unsynced {
            // What redb says it folded is not on disk yet: no segment goes.
            return Ok(Fold::Nothing);
        }
        // Every fold was synced (the writer's own commits always are).
        let txn = db.begin_read().map_err(storage_of("read"))?;
        let meta = txn.open_table(META).map_err(storage_of("read"))?;
        (meta.get(FOLDED_KEY).map_err(storage_of("read"))?.map_or(0, |value| value.value()), Fold::Nothing)
    } else {
        debug!(records = records.len(), synced = sync_due, "journal fold: folding the intake log into redb");
        let mut txn = db.begin_write().map_err(storage_of("write"))?;
        if !sync_due {
            txn.set_durability(Durability::None)
                .map_err(|err| JournalError::CommitFailed { reason: err.to_string() })?;
        }
        let upto = fold_in(&txn, &records)?;
        txn.commit().map_err(storage_of("commit"))?;
        // In steps, so the writer (which decides each batch against
        // `Pending`) waits at most one step for the lock, not the whole
        // second's records.
        while shared.pending_mut().remove_some_upto(upto, RELEASE_STEP) {}
        debug!(upto, "journal fold: folded");
        if !sync_due {
            return Ok(Fold::NotSynced);
        }
        (upto, Fold::Synced)
    };
    let done: Vec<Closed> = {
        let mut closed = shared.closed.lock().expect("journal segment lock is never poisoned");
        let (done, kept) = closed.drain(..).partition(|segment| segment.last_lsn <= folded);
        *closed = kept;
        done
    };
    let idle = fold == Fold::Nothing && records.is_empty() && done.is_empty();
    for segment in done {
        if let Err(err) = intake::retire(&segment)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(segment = %segment.path.display(), error = %err, "a folded intake log segment cannot be deleted");
        }
    }
    Ok(if idle { Fold::Idle } else { fold })
}

fn queue_in(txn: &WriteTransaction, delivery: &str, request: TaskRequest) -> Result<Accepted, JournalError> {
    // The delivery id is not signed: a captured delivery sent again under a
    // new id is the same comment, and one comment makes one task.
    // Its `seq` is given once it is known to be new.
    let mut record = TaskRecord::queued(request, delivery, 0, now_unix());
    let mut comments = txn.open_table(COMMENTS).map_err(storage_of("write"))?;
    if let Some(comment) = record.comment_id
        && let Some(existing) = comments.get(comment).map_err(storage_of("write"))?
    {
        let existing: CommentRecord = decode(&format!("comment {comment}"), existing.value())?;
        return Ok(comment_made(comment, existing.task));
    }
    let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
    if let Some(existing) = active.get(record.dedupe_key.as_str()).map_err(storage_of("write"))? {
        let accepted = already_active(&record, existing.value());
        // A person's command gets the answer on GitHub too.
        if let Some(refusal) = duplicate_refusal(&record, &accepted, existing.value()) {
            notice_in(txn, refusal)?;
        }
        return Ok(accepted);
    }
    let mut meta = txn.open_table(META).map_err(storage_of("write"))?;
    let seq = meta.get("seq").map_err(storage_of("write"))?.map_or(0, |value| value.value()) + 1;
    meta.insert("seq", seq).map_err(storage_of("write"))?;
    record.seq = seq;
    let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    tasks.insert(record.task_id.as_str(), encode(&record).as_slice()).map_err(storage_of("write"))?;
    active.insert(record.dedupe_key.as_str(), record.task_id.as_str()).map_err(storage_of("write"))?;
    if let Some(comment) = record.comment_id {
        let made = CommentRecord { task: record.task_id.clone(), received_unix: record.accepted_unix };
        comments.insert(comment, encode(&made).as_slice()).map_err(storage_of("write"))?;
    }
    Ok(Accepted::Queued { task: record.task_id })
}

/// Records the answer to a refused command, once per comment: a comment
/// sent again under a new delivery id replaces its pending notice, and one
/// already answered is answered again in place (the comment carries a
/// marker), never twice.
fn notice_in(txn: &WriteTransaction, refusal: Refusal) -> Result<(), JournalError> {
    let mut notices = txn.open_table(NOTICES).map_err(storage_of("write"))?;
    let comment_id = refusal.comment_id;
    let notice = Notice { refusal, received_unix: now_unix() };
    notices.insert(comment_id, encode(&notice).as_slice()).map_err(storage_of("write"))?;
    Ok(())
}

/// The request that runs again the task `retry` names: its kind and the
/// words it was asked with, for whoever asked now. A review is of the pull
/// request's current head, read at dispatch. The new task gets its own id
/// (from the new delivery) and so its own check run; the old one's stays as
/// it was. `Err` says why there is nothing to retry.
fn retried(
    txn: &WriteTransaction,
    retry: &RetryRequest,
) -> Result<Result<TaskRequest, String>, JournalError> {
    let tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    let old = match &retry.target {
        RetryTarget::Task(task_id) => match tasks.get(task_id.as_str()).map_err(storage_of("write"))? {
            Some(value) => {
                let record: TaskRecord = decode(task_id, value.value())?;
                Some(record).filter(|record| record.repo.eq_ignore_ascii_case(&retry.repo))
            }
            None => None,
        },
        RetryTarget::Latest { number } => {
            let mut newest: Option<TaskRecord> = None;
            for entry in tasks.iter().map_err(storage_of("write"))? {
                let (key, value) = entry.map_err(storage_of("write"))?;
                let record: TaskRecord = decode(key.value(), value.value())?;
                let matches = record.number == *number && record.repo.eq_ignore_ascii_case(&retry.repo);
                if matches && newest.as_ref().is_none_or(|newest| record.seq > newest.seq) {
                    newest = Some(record);
                }
            }
            newest
        }
    };
    let Some(old) = old else {
        let what = match &retry.target {
            RetryTarget::Task(task_id) => format!("task {task_id} of {} is not in the journal", retry.repo),
            RetryTarget::Latest { number } => format!("{}#{number} has no task", retry.repo),
        };
        return Ok(Err(format!("nothing to retry: {what}")));
    };
    Ok(Ok(TaskRequest {
        kind: old.kind,
        repo: old.repo,
        number: old.number,
        head_sha: None,
        head_ref: old.head_ref,
        clone_url: old.clone_url,
        repo_id: retry.repo_id,
        prompt: old.prompt,
        subject_title: old.subject_title,
        subject_body: old.subject_body,
        base_ref: old.base_ref,
        sender: retry.sender.clone(),
        installation: retry.installation.or(old.installation),
        comment_id: retry.comment_id,
        follow_up: old.follow_up,
    }))
}

/// Marks the active tasks the request names as to be cancelled.
fn cancel_in(txn: &WriteTransaction, cancel: &CancelRequest) -> Result<Vec<TaskId>, JournalError> {
    let active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
    let prefix = format!("{}#{}:", cancel.repo, cancel.number);
    let mut matched = Vec::new();
    for entry in active.range(prefix.as_str()..).map_err(storage_of("write"))? {
        let (key, task) = entry.map_err(storage_of("write"))?;
        if !key.value().starts_with(&prefix) {
            break;
        }
        matched.push((key.value().to_owned(), task.value().to_owned()));
    }
    drop(active);
    let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    let mut cancelled = Vec::new();
    for (_, task_id) in matched {
        let Some(value) =
            tasks.get(task_id.as_str()).map_err(storage_of("write"))?.map(|value| value.value().to_vec())
        else {
            continue;
        };
        let mut record: TaskRecord = decode(&task_id, &value)?;
        if !cancel.applies_to(&record) || record.state.is_finished() {
            continue;
        }
        if record.cancel.is_none() {
            record.cancel = Some(cancel.clone());
            // A task on its way out no longer holds its dedupe key: a new
            // request for the same work (a review asked for right after the
            // push that superseded this one) is not a duplicate of it. It
            // stays active under a key of its own until it has ended.
            let leaving = format!("{}~cancelled~{task_id}", record.dedupe_key);
            let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
            let ours = active
                .get(record.dedupe_key.as_str())
                .map_err(storage_of("write"))?
                .is_some_and(|value| value.value() == task_id.as_str());
            if ours {
                active.remove(record.dedupe_key.as_str()).map_err(storage_of("write"))?;
                active.insert(leaving.as_str(), task_id.as_str()).map_err(storage_of("write"))?;
                record.dedupe_key = leaving;
            }
            tasks.insert(task_id.as_str(), encode(&record).as_slice()).map_err(storage_of("write"))?;
        }
        cancelled.push(record.task_id);
    }
    Ok(cancelled)
}

fn update_in(
    txn: &WriteTransaction,
    task_id: &TaskId,
    update: TaskUpdate,
) -> Result<Option<TaskRecord>, JournalError> {
    Ok(change_in(txn, task_id, |record| update(record))?.map(|(record, ())| record))
}

/// Ends a task once ([`TaskRecord::finish`]); a second ending changes nothing.
fn finish_in(txn: &WriteTransaction, task_id: &TaskId, outcome: Outcome) -> Result<Finished, JournalError> {
    Ok(match change_in(txn, task_id, |record| record.finish(outcome))? {
        None => Finished::Unknown,
        Some((record, Ok(()))) => Finished::Recorded(record),
        Some((record, Err(_))) => Finished::Already(record),
    })
}

/// Changes one record and keeps the indexes (unreported, active) in step
/// with it; returns the record after the change and what `change` said.
fn change_in<T>(
    txn: &WriteTransaction,
    task_id: &TaskId,
    change: impl FnOnce(&mut TaskRecord) -> T,
) -> Result<Option<(TaskRecord, T)>, JournalError> {
    let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    let Some(value) =
        tasks.get(task_id.as_str()).map_err(storage_of("write"))?.map(|value| value.value().to_vec())
    else {
        return Ok(None);
    };
    let mut record: TaskRecord = decode(task_id.as_str(), &value)?;
    let said = change(&mut record);
    tasks.insert(task_id.as_str(), encode(&record).as_slice()).map_err(storage_of("write"))?;
    let mut unreported = txn.open_table(UNREPORTED).map_err(storage_of("write"))?;
    if record.state.is_finished() && !record.reported {
        unreported.insert(task_id.as_str(), "").map_err(storage_of("write"))?;
    } else {
        unreported.remove(task_id.as_str()).map_err(storage_of("write"))?;
    }
    if record.state.is_finished() {
        let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
        let key = record.dedupe_key.as_str();
        let ours = active
            .get(key)
            .map_err(storage_of("write"))?
            .is_some_and(|value| value.value() == task_id.as_str());
        if ours {
            active.remove(key).map_err(storage_of("write"))?;
        }
    }
    Ok(Some((record, said)))
}

fn adopt_in(txn: &WriteTransaction, mut record: TaskRecord) -> Result<TaskRecord, JournalError> {
    let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    if let Some(existing) = tasks.get(record.task_id.as_str()).map_err(storage_of("write"))? {
        return decode(record.task_id.as_str(), existing.value());
    }
    let mut meta = txn.open_table(META).map_err(storage_of("write"))?;
    let seq = meta.get("seq").map_err(storage_of("write"))?.map_or(0, |value| value.value()) + 1;
    meta.insert("seq", seq).map_err(storage_of("write"))?;
    record.seq = seq;
    tasks.insert(record.task_id.as_str(), encode(&record).as_slice()).map_err(storage_of("write"))?;
    if !record.state.is_finished() {
        let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
        if active.get(record.dedupe_key.as_str()).map_err(storage_of("write"))?.is_none() {
            active
                .insert(record.dedupe_key.as_str(), record.task_id.as_str())
                .map_err(storage_of("write"))?;
        }
    }
    Ok(record)
}

/// One step of [`Journal::prune`]: looks at no more than `limit` records
/// of one table, from `at`, removes those past their cutoff, and says
/// where the next step starts.
fn prune_in(
    txn: &WriteTransaction,
    cutoffs: Cutoffs,
    at: PruneAt,
    limit: usize,
) -> Result<(Pruned, PruneAt), JournalError> {
    let mut pruned = Pruned::default();
    let next = match at {
        PruneAt::Tasks(from) => {
            let (count, next) = prune_tasks_in(txn, cutoffs.tasks, &from, limit)?;
            pruned.tasks = count;
            next.map_or(PruneAt::Deliveries(String::new()), PruneAt::Tasks)
        }
        PruneAt::Deliveries(from) => {
            let mut deliveries = txn.open_table(DELIVERIES).map_err(storage_of("write"))?;
            let swept = prune_text_keyed(&mut deliveries, &from, limit, |key, value| {
                let record: DeliveryRecord = decode(key, value)?;
                Ok((record.received_unix < cutoffs.deliveries).then_some(()))
            })?;
            pruned.deliveries = swept.removed.len();
            swept.next.map_or(PruneAt::Comments(0), PruneAt::Deliveries)
        }
        PruneAt::Comments(from) => {
            let mut comments = txn.open_table(COMMENTS).map_err(storage_of("write"))?;
            let (_, next) = prune_number_keyed(&mut comments, from, limit, |key, value| {
                let record: CommentRecord = decode(&format!("comment {key}"), value)?;
                Ok(record.received_unix < cutoffs.deliveries)
            })?;
            next.map_or(PruneAt::Notices(0), PruneAt::Comments)
        }
        PruneAt::Notices(from) => {
            // An answer GitHub would not take for the whole retention is given up.
            let mut notices = txn.open_table(NOTICES).map_err(storage_of("write"))?;
            let (count, next) = prune_number_keyed(&mut notices, from, limit, |key, value| {
                let notice: Notice = decode(&format!("notice {key}"), value)?;
                Ok(notice.received_unix < cutoffs.deliveries)
            })?;
            pruned.notices = count;
            next.map_or(PruneAt::Redeliveries(String::new()), PruneAt::Notices)
        }
        PruneAt::Redeliveries(from) => {
            // A delivery asked for again is kept as long as deliveries are,
            // which is at least as long as GitHub lists it.
            let mut asked = txn.open_table(REDELIVERIES).map_err(storage_of("write"))?;
            let swept = prune_text_keyed(&mut asked, &from, limit, |_, asked_unix| {
                Ok((asked_unix < cutoffs.deliveries).then_some(()))
            })?;
            pruned.redeliveries = swept.removed.len();
            swept.next.map_or(PruneAt::Done, PruneAt::Redeliveries)
        }
        PruneAt::Done => PruneAt::Done,
    };
    Ok((pruned, next))
}

/// Finished before `older_than_unix`, and reported: nothing is left to do
/// for it. Anything else is kept, so nothing accepted is lost.
fn expired(task: &TaskRecord, older_than_unix: u64) -> bool {
    task.reported && task.outcome().is_some_and(|outcome| outcome.finished_unix < older_than_unix)
}

/// Removes finished and reported tasks that ended before `older_than_unix`,
/// among at most `limit` looked at from `from`, with the index
/// entries that name them: the comment that made one, and (never expected,
/// since a task leaves both when it ends or is reported) its unreported and
/// active entries. Deliveries whose answer names a pruned task are left to
/// their own retention: they keep a redelivery a duplicate.
fn prune_tasks_in(
    txn: &WriteTransaction,
    older_than_unix: u64,
    from: &str,
    limit: usize,
) -> Result<(usize, Option<String>), JournalError> {
    let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    let Swept { removed: old, next } = prune_text_keyed(&mut tasks, from, limit, |key, value| {
        let task: TaskRecord = decode(key, value)?;
        Ok(expired(&task, older_than_unix).then_some(task.comment_id))
    })?;
    if old.is_empty() {
        return Ok((0, next));
    }
    let mut unreported = txn.open_table(UNREPORTED).map_err(storage_of("write"))?;
    let mut comments = txn.open_table(COMMENTS).map_err(storage_of("write"))?;
    for (task_id, comment_id) in &old {
        unreported.remove(task_id.as_str()).map_err(storage_of("write"))?;
        let Some(comment) = *comment_id else { continue };
        let made_it = match comments.get(comment).map_err(storage_of("write"))? {
            Some(value) => {
                let record: CommentRecord = decode(&format!("comment {comment}"), value.value())?;
                record.task.as_str() == task_id.as_str()
            }
            None => false,
        };
        if made_it {
            comments.remove(comment).map_err(storage_of("write"))?;
        }
    }
    // An active entry left naming a pruned task would hold its dedupe key
    // for ever, out of sight (readers skip ids with no record). The active
    // set is small (queued and running tasks), so all of it is looked at.
    let gone: std::collections::HashSet<&str> = old.iter().map(|(task_id, _)| task_id.as_str()).collect();
    let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
    let mut stale = Vec::new();
    for entry in active.iter().map_err(storage_of("write"))? {
        let (key, task_id) = entry.map_err(storage_of("write"))?;
        if gone.contains(task_id.value()) {
            stale.push(key.value().to_owned());
        }
    }
    for key in &stale {
        warn!(key = %key, "an active entry named a finished task; removed with the task");
        active.remove(key.as_str()).map_err(storage_of("write"))?;
    }
    Ok((old.len(), next))
}

/// What one step of a prune did in a table keyed by text.
struct Swept<T> {
    /// The keys removed, each with what `expired` said of its record.
    removed: Vec<(String, T)>,
    /// The key the next step starts from; `None` at the table's end.
    next: Option<String>,
}

/// Looks at no more than `limit` records of a table keyed by text, from
/// `from`, and removes each that `expired` returns something for.
fn prune_text_keyed<V: redb::Value + 'static, T>(
    table: &mut redb::Table<'_, &'static str, V>,
    from: &str,
    limit: usize,
    mut expired: impl FnMut(&str, V::SelfType<'_>) -> Result<Option<T>, JournalError>,
) -> Result<Swept<T>, JournalError> {
    let mut old = Vec::new();
    let mut next = None;
    for (looked_at, entry) in table.range(from..).map_err(storage_of("write"))?.enumerate() {
        let (key, value) = entry.map_err(storage_of("write"))?;
        if looked_at == limit {
            next = Some(key.value().to_owned());
            break;
        }
        if let Some(found) = expired(key.value(), value.value())? {
            old.push((key.value().to_owned(), found));
        }
    }
    for (key, _) in &old {
        table.remove(key.as_str()).map_err(storage_of("write"))?;
    }
    Ok(Swept { removed: old, next })
}

/// [`prune_text_keyed`] for a table keyed by number (a comment id);
/// returns how many it removed.
fn prune_number_keyed(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    from: u64,
    limit: usize,
    mut expired: impl FnMut(u64, &[u8]) -> Result<bool, JournalError>,
) -> Result<(usize, Option<u64>), JournalError> {
    let mut old = Vec::new();
    let mut next = None;
    for (looked_at, entry) in table.range(from..).map_err(storage_of("write"))?.enumerate() {
        let (key, value) = entry.map_err(storage_of("write"))?;
        if looked_at == limit {
            next = Some(key.value());
            break;
        }
        if expired(key.value(), value.value())? {
            old.push(key.value());
        }
    }
    for key in &old {
        table.remove(*key).map_err(storage_of("write"))?;
    }
    Ok((old.len(), next))
}

#[cfg(test)]
mod tests;
