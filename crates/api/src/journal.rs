//! The journal: one embedded redb file under the state directory that
//! records deliveries (for dedupe across redeliveries and restarts), tasks
//! and their outcomes.
//!
//! A 202 means the delivery is in the journal: [`Journal::accept`] returns
//! only after its transaction is durably committed. Writes go through one
//! writer thread that commits whatever has queued up together (group
//! commit), so many concurrent deliveries share one fsync without any of them
//! being answered before it is on disk. Reads open their own read
//! transactions and never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use core_types::TaskId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::tasks::{CancelRequest, TaskRecord, TaskState};
use crate::triggers::{Decision, TaskRequest};

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

/// How many writes one commit may carry at most.
const MAX_GROUP: usize = 512;

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
    /// The file could not be opened or is damaged.
    #[error(
        "journal {path} cannot be opened (it may be corrupt or from a newer berth; move it aside to start empty)"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// The state directory could not be created.
    #[error("state directory {path} cannot be created")]
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
    /// The writer thread is gone (the daemon is shutting down).
    #[error("journal writer has stopped")]
    WriterGone,
    /// Another write in the same group commit failed, so this one was not stored.
    #[error("journal commit failed: {reason}")]
    CommitFailed {
        /// The failure of the group.
        reason: String,
    },
}

fn storage_of<E: Into<redb::Error>>(operation: &'static str) -> impl Fn(E) -> JournalError {
    move |source| JournalError::Storage { operation, source: source.into() }
}

/// One write the writer thread applies.
enum WriteOp {
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
    Prune {
        older_than_unix: u64,
        reply: oneshot::Sender<Result<usize, JournalError>>,
    },
    Adopt {
        record: Box<TaskRecord>,
        reply: oneshot::Sender<Result<TaskRecord, JournalError>>,
    },
    MarkRedelivery {
        guid: String,
        reply: oneshot::Sender<Result<bool, JournalError>>,
    },
}

/// A change to a task record, applied in the writer's transaction.
pub type TaskUpdate = Box<dyn FnOnce(&mut TaskRecord) + Send>;

/// The journal: cheap to clone, shared by the webhook handler, the scheduler
/// and the status API.
#[derive(Clone)]
pub struct Journal {
    db: Arc<Database>,
    writer: mpsc::UnboundedSender<WriteOp>,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (or creates) `journal.redb` in `state_dir` and starts its writer.
    ///
    /// # Errors
    /// A corrupt or unreadable file is an error, never a silent fresh start.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| JournalError::StateDir { path: state_dir.to_owned(), source })?;
        let path = state_dir.join("journal.redb");
        let db =
            Database::create(&path).map_err(|source| JournalError::Open { path: path.clone(), source })?;
        let db = Arc::new(db);
        {
            // Create the tables once so readers never find them missing.
            let txn = db.begin_write().map_err(storage_of("open"))?;
            txn.open_table(DELIVERIES).map_err(storage_of("open"))?;
            txn.open_table(TASKS).map_err(storage_of("open"))?;
            txn.open_table(ACTIVE).map_err(storage_of("open"))?;
            txn.open_table(META).map_err(storage_of("open"))?;
            txn.open_table(UNREPORTED).map_err(storage_of("open"))?;
            txn.open_table(REDELIVERIES).map_err(storage_of("open"))?;
            txn.commit().map_err(storage_of("open"))?;
        }
        let (writer, ops) = mpsc::unbounded_channel();
        let writer_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("berth-journal".to_owned())
            .spawn(move || run_writer(&writer_db, ops))
            .map_err(|source| JournalError::StateDir { path: state_dir.to_owned(), source })?;
        Ok(Self { db, writer, path })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
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
        let (reply, answer) = oneshot::channel();
        let op = WriteOp::Accept {
            delivery: delivery.to_owned(),
            event: event.to_owned(),
            decision: Box::new(decision),
            reply,
        };
        self.writer.send(op).map_err(|_| JournalError::WriterGone)?;
        answer.await.map_err(|_| JournalError::WriterGone)?
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
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriteOp::UpdateTask { task_id: task_id.clone(), update, reply })
            .map_err(|_| JournalError::WriterGone)?;
        answer.await.map_err(|_| JournalError::WriterGone)?
    }

    /// Forgets deliveries received before `older_than_unix`. Tasks are kept.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn prune(&self, older_than_unix: u64) -> Result<usize, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.writer.send(WriteOp::Prune { older_than_unix, reply }).map_err(|_| JournalError::WriterGone)?;
        answer.await.map_err(|_| JournalError::WriterGone)?
    }

    /// Records a task found only on a container's labels (the journal never
    /// knew it, or lost it), unless it is already known; returns the record kept.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn adopt(&self, record: TaskRecord) -> Result<TaskRecord, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriteOp::Adopt { record: Box::new(record), reply })
            .map_err(|_| JournalError::WriterGone)?;
        answer.await.map_err(|_| JournalError::WriterGone)?
    }

    /// Notes that a redelivery of `guid` was asked for; false when it already was.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn mark_redelivery(&self, guid: &str) -> Result<bool, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriteOp::MarkRedelivery { guid: guid.to_owned(), reply })
            .map_err(|_| JournalError::WriterGone)?;
        answer.await.map_err(|_| JournalError::WriterGone)?
    }

    /// One task.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn task(&self, task_id: &TaskId) -> Result<Option<TaskRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(TASKS).map_err(storage_of("read"))?;
        let value = table.get(task_id.as_str()).map_err(storage_of("read"))?;
        value.map(|value| decode(task_id.as_str(), value.value())).transpose()
    }

    /// Every task, in the order accepted.
    ///
    /// # Errors
    /// Storage failures or a damaged record.
    pub fn tasks(&self) -> Result<Vec<TaskRecord>, JournalError> {
        let txn = self.db.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(TASKS).map_err(storage_of("read"))?;
        let mut tasks = Vec::new();
        for entry in table.iter().map_err(storage_of("read"))? {
            let (key, value) = entry.map_err(storage_of("read"))?;
            tasks.push(decode::<TaskRecord>(key.value(), value.value())?);
        }
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
        let txn = self.db.begin_read().map_err(storage_of("read"))?;
        let listed = txn.open_table(index).map_err(storage_of("read"))?;
        let tasks = txn.open_table(TASKS).map_err(storage_of("read"))?;
        let mut records = Vec::new();
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
        let txn = self.db.begin_read().map_err(storage_of("read"))?;
        let table = txn.open_table(DELIVERIES).map_err(storage_of("read"))?;
        let value = table.get(delivery).map_err(storage_of("read"))?;
        value.map(|value| decode(delivery, value.value())).transpose()
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, JournalError> {
    serde_json::from_slice(bytes).map_err(|source| JournalError::Damaged { key: key.to_owned(), source })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("journal records always serialize")
}

/// The writer loop: take one op, then whatever else is already waiting, apply
/// them all in one transaction, commit once, then answer each.
fn run_writer(db: &Database, mut ops: mpsc::UnboundedReceiver<WriteOp>) {
    while let Some(first) = ops.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        debug!(writes = batch.len(), "journal group commit");
        apply_batch(db, batch);
    }
}

enum Reply {
    Accept(oneshot::Sender<Result<Accepted, JournalError>>, Accepted),
    UpdateTask(oneshot::Sender<Result<Option<TaskRecord>, JournalError>>, Option<TaskRecord>),
    Prune(oneshot::Sender<Result<usize, JournalError>>, usize),
    Adopt(oneshot::Sender<Result<TaskRecord, JournalError>>, TaskRecord),
    MarkRedelivery(oneshot::Sender<Result<bool, JournalError>>, bool),
}

fn apply_batch(db: &Database, batch: Vec<WriteOp>) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut ops = batch.into_iter();
    let result = (|| -> Result<(), JournalError> {
        let txn = db.begin_write().map_err(storage_of("write"))?;
        for op in ops.by_ref() {
            replies.push(match op {
                WriteOp::Accept { delivery, event, decision, reply } => {
                    Reply::Accept(reply, accept_in(&txn, &delivery, &event, *decision)?)
                }
                WriteOp::UpdateTask { task_id, update, reply } => {
                    Reply::UpdateTask(reply, update_in(&txn, &task_id, update)?)
                }
                WriteOp::Prune { older_than_unix, reply } => {
                    Reply::Prune(reply, prune_in(&txn, older_than_unix)?)
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
            });
        }
        txn.commit().map_err(storage_of("commit"))
    })();
    let failure = result.err().map(|err| {
        warn!(error = %err, "journal commit failed; its writes are answered with errors");
        err.to_string()
    });
    let answer = |reason: &Option<String>| reason.clone().map(|reason| JournalError::CommitFailed { reason });
    for reply in replies {
        match reply {
            Reply::Accept(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::UpdateTask(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::Prune(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::Adopt(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
            Reply::MarkRedelivery(reply, value) => drop(reply.send(answer(&failure).map_or(Ok(value), Err))),
        }
    }
    // Ops after the failing one (and the failing one) are dropped: their callers see the writer's error.
    for op in ops {
        let error = || JournalError::CommitFailed { reason: failure.clone().unwrap_or_default() };
        match op {
            WriteOp::Accept { reply, .. } => drop(reply.send(Err(error()))),
            WriteOp::UpdateTask { reply, .. } => drop(reply.send(Err(error()))),
            WriteOp::Prune { reply, .. } => drop(reply.send(Err(error()))),
            WriteOp::Adopt { reply, .. } => drop(reply.send(Err(error()))),
            WriteOp::MarkRedelivery { reply, .. } => drop(reply.send(Err(error()))),
        }
    }
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
        let task = match existing.outcome {
            Accepted::Queued { task } => Some(task),
            Accepted::Duplicate { task, .. } => task,
            Accepted::CancelRequested { queued, .. } => queued,
            Accepted::Ignored { .. } => None,
        };
        return Ok(Accepted::Duplicate { task, reason: format!("delivery {delivery} was already received") });
    }
    let accepted = match decision {
        Decision::Ignore(reason) => Accepted::Ignored { reason },
        Decision::Queue(request) => queue_in(txn, delivery, request)?,
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

fn queue_in(txn: &WriteTransaction, delivery: &str, request: TaskRequest) -> Result<Accepted, JournalError> {
    let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
    let key = request.dedupe_key();
    if let Some(existing) = active.get(key.as_str()).map_err(storage_of("write"))? {
        let task = TaskId::new(existing.value()).ok();
        return Ok(Accepted::Duplicate {
            task,
            reason: format!(
                "a {} task for {}#{} is already queued or running",
                request.kind, request.repo, request.number
            ),
        });
    }
    let mut meta = txn.open_table(META).map_err(storage_of("write"))?;
    let seq = meta.get("seq").map_err(storage_of("write"))?.map_or(0, |value| value.value()) + 1;
    meta.insert("seq", seq).map_err(storage_of("write"))?;
    let record = TaskRecord::queued(request, delivery, seq, now_unix());
    let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    tasks.insert(record.task_id.as_str(), encode(&record).as_slice()).map_err(storage_of("write"))?;
    active.insert(key.as_str(), record.task_id.as_str()).map_err(storage_of("write"))?;
    Ok(Accepted::Queued { task: record.task_id })
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
        if !cancel.applies_to(&record) || record.state == TaskState::Finished {
            continue;
        }
        if record.cancel.is_none() {
            record.cancel = Some(cancel.clone());
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
    let mut tasks = txn.open_table(TASKS).map_err(storage_of("write"))?;
    let Some(value) =
        tasks.get(task_id.as_str()).map_err(storage_of("write"))?.map(|value| value.value().to_vec())
    else {
        return Ok(None);
    };
    let mut record: TaskRecord = decode(task_id.as_str(), &value)?;
    update(&mut record);
    tasks.insert(task_id.as_str(), encode(&record).as_slice()).map_err(storage_of("write"))?;
    let mut unreported = txn.open_table(UNREPORTED).map_err(storage_of("write"))?;
    if record.state == TaskState::Finished && !record.reported {
        unreported.insert(task_id.as_str(), "").map_err(storage_of("write"))?;
    } else {
        unreported.remove(task_id.as_str()).map_err(storage_of("write"))?;
    }
    if record.state == TaskState::Finished {
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
    Ok(Some(record))
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
    if record.state != TaskState::Finished {
        let mut active = txn.open_table(ACTIVE).map_err(storage_of("write"))?;
        if active.get(record.dedupe_key.as_str()).map_err(storage_of("write"))?.is_none() {
            active
                .insert(record.dedupe_key.as_str(), record.task_id.as_str())
                .map_err(storage_of("write"))?;
        }
    }
    Ok(record)
}

fn prune_in(txn: &WriteTransaction, older_than_unix: u64) -> Result<usize, JournalError> {
    let mut deliveries = txn.open_table(DELIVERIES).map_err(storage_of("write"))?;
    let mut old = Vec::new();
    for entry in deliveries.iter().map_err(storage_of("write"))? {
        let (key, value) = entry.map_err(storage_of("write"))?;
        let record: DeliveryRecord = decode(key.value(), value.value())?;
        if record.received_unix < older_than_unix {
            old.push(key.value().to_owned());
        }
    }
    for key in &old {
        deliveries.remove(key.as_str()).map_err(storage_of("write"))?;
    }
    Ok(old.len())
}
