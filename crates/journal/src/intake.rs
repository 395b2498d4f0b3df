//! The intake log: the append path of [`crate::Journal::accept`] (ADR 24).
//!
//! A delivery that only adds records (it is ignored, or queues new tasks) is
//! decided against in-memory indexes and redb's committed state, written as
//! one compact record to an append-only segment file, and answered once the
//! batch it was written in is on disk (one `fdatasync` per batch). The
//! records wait in [`Pending`] (which readers see through) until the fold
//! thread writes them into redb in one large transaction, after which they
//! leave [`Pending`] and a segment whose records are all folded is deleted.
//!
//! A segment is a run of frames: `length (u32 LE) | CRC-32 of the payload
//! (u32 LE) | payload (JSON of an [`IntakeRecord`])`. Frames are only ever
//! appended, a batch at a time, and a batch is answered only after it is
//! synced, so a crash can leave at most the tail of one segment torn, and
//! what is torn was never answered. Reading stops at a frame that does not
//! check unless a later frame carries the log on; then the stretch between
//! is a [`Gap`] (damage, or pages of a torn batch that reached the disk out
//! of order), named in the start-up log, and reading goes on (ADR 30).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use core_types::TaskId;
use serde::{Deserialize, Serialize};
use tracing::{debug, error};

use crate::{Accepted, DeliveryRecord};
use domain::tasks::TaskRecord;

/// The folder of the intake log, beside `journal.redb`.
pub(crate) const DIR_NAME: &str = "journal.intake";

/// A segment is closed and a new one started once it is this long; it is
/// deleted once every record in it is folded into redb.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;

/// The longest frame payload a reader accepts (a record names at most the
/// tasks of one delivery; anything longer is a torn length).
const MAX_FRAME: usize = 64 << 20;

/// One delivery as the intake log keeps it: what redb's tables get when it
/// is folded in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IntakeRecord {
    /// Its place in the log, from 1; redb's `meta.folded` is the last one folded.
    pub(crate) lsn: u64,
    /// `X-GitHub-Delivery`.
    pub(crate) delivery: String,
    /// `X-GitHub-Event`.
    pub(crate) event: String,
    /// When it was received.
    pub(crate) received_unix: u64,
    /// Its answer.
    pub(crate) outcome: Accepted,
    /// The tasks it queued, as stored (each with its `seq`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tasks: Vec<TaskRecord>,
    /// The answers it owes on GitHub (a person's duplicate command),
    /// written to the notices table when folded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) notices: Vec<domain::request::Refusal>,
}

impl IntakeRecord {
    /// The delivery's record in redb's `deliveries` table.
    pub(crate) fn delivery_record(&self) -> DeliveryRecord {
        DeliveryRecord {
            received_unix: self.received_unix,
            event: self.event.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

/// An intake record with its tasks as JSON, as redb's `tasks` table stores
/// them: made once, when the record is framed (from what the caller's thread
/// encoded) or read back, and copied from then on, so neither the writer nor
/// the fold encodes a task.
#[derive(Debug)]
pub(crate) struct Logged {
    record: IntakeRecord,
    /// `record.tasks[i]` as JSON.
    task_json: Vec<Vec<u8>>,
}

impl Logged {
    /// A record whose tasks are encoded here (one read back from the log).
    pub(crate) fn new(record: IntakeRecord) -> Self {
        let task_json = record.tasks.iter().map(crate::encode).collect();
        Self { record, task_json }
    }

    /// A record with its tasks' JSON already made: `task_json[i]` must be
    /// `record.tasks[i]` as `serde_json` writes it.
    pub(crate) fn encoded(record: IntakeRecord, task_json: Vec<Vec<u8>>) -> Self {
        debug_assert_eq!(record.tasks.len(), task_json.len(), "one JSON per task");
        Self { record, task_json }
    }

    pub(crate) fn record(&self) -> &IntakeRecord {
        &self.record
    }

    /// Each task with its JSON.
    pub(crate) fn tasks(&self) -> impl Iterator<Item = (&TaskRecord, &[u8])> {
        self.record.tasks.iter().zip(self.task_json.iter().map(Vec::as_slice))
    }
}

/// Records on disk in the log and not yet folded into redb, with the
/// indexes the append path decides on and the readers look through.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    records: BTreeMap<u64, Arc<Logged>>,
    deliveries: HashMap<String, u64>,
    tasks: HashMap<String, (u64, usize)>,
    comments: HashMap<u64, (u64, TaskId)>,
    active: HashMap<String, (u64, TaskId)>,
}

impl Pending {
    /// Adds a record that is on disk.
    pub(crate) fn insert(&mut self, logged: Arc<Logged>) {
        let record = logged.record();
        let lsn = record.lsn;
        self.deliveries.insert(record.delivery.clone(), lsn);
        for (index, task) in record.tasks.iter().enumerate() {
            self.tasks.insert(task.task_id.as_str().to_owned(), (lsn, index));
            if let Some(comment) = task.comment_id {
                self.comments.insert(comment, (lsn, task.task_id.clone()));
            }
            self.active.insert(task.dedupe_key.clone(), (lsn, task.task_id.clone()));
        }
        self.records.insert(lsn, logged);
    }

    /// Forgets the records up to `lsn`, which redb now holds.
    pub(crate) fn remove_upto(&mut self, lsn: u64) {
        self.remove_some_upto(lsn, usize::MAX);
    }

    /// Forgets at most `most` of the records up to `lsn`, oldest first;
    /// whether any such record is left. Readers may look between two calls:
    /// redb holds every record up to `lsn`, so one that is gone from here is
    /// found there.
    pub(crate) fn remove_some_upto(&mut self, lsn: u64, most: usize) -> bool {
        for _ in 0..most {
            let Some(entry) = self.records.first_entry() else { return false };
            if *entry.key() > lsn {
                return false;
            }
            let logged = entry.remove();
            let record = logged.record();
            let ours = |entry: Option<&u64>| entry == Some(&record.lsn);
            if ours(self.deliveries.get(&record.delivery)) {
                self.deliveries.remove(&record.delivery);
            }
            for task in &record.tasks {
                if ours(self.tasks.get(task.task_id.as_str()).map(|(lsn, _)| lsn)) {
                    self.tasks.remove(task.task_id.as_str());
                }
                if let Some(comment) = task.comment_id
                    && ours(self.comments.get(&comment).map(|(lsn, _)| lsn))
                {
                    self.comments.remove(&comment);
                }
                if ours(self.active.get(&task.dedupe_key).map(|(lsn, _)| lsn)) {
                    self.active.remove(&task.dedupe_key);
                }
            }
        }
        self.records.first_key_value().is_some_and(|(first, _)| *first <= lsn)
    }

    /// How many records wait to be folded.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The records waiting, in log order.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Logged>> {
        self.records.values().cloned().collect()
    }

    /// The answer a delivery in the log got.
    pub(crate) fn delivery_outcome(&self, delivery: &str) -> Option<&Accepted> {
        let lsn = self.deliveries.get(delivery)?;
        self.records.get(lsn).map(|logged| &logged.record.outcome)
    }

    /// A delivery in the log, as redb will hold it.
    pub(crate) fn delivery(&self, delivery: &str) -> Option<DeliveryRecord> {
        let lsn = self.deliveries.get(delivery)?;
        self.records.get(lsn).map(|logged| logged.record.delivery_record())
    }

    /// The task a comment in the log made.
    /// The answers owed on GitHub by records not folded yet, with when each
    /// delivery was received.
    pub(crate) fn notices(&self) -> Vec<(domain::request::Refusal, u64)> {
        self.records
            .values()
            .map(|logged| &logged.record)
            .flat_map(|record| record.notices.iter().map(|refusal| (refusal.clone(), record.received_unix)))
            .collect()
    }

    pub(crate) fn comment_task(&self, comment: u64) -> Option<&TaskId> {
        self.comments.get(&comment).map(|(_, task)| task)
    }

    /// The task in the log that holds a dedupe key.
    pub(crate) fn active_task(&self, key: &str) -> Option<&TaskId> {
        self.active.get(key).map(|(_, task)| task)
    }

    /// A task in the log.
    pub(crate) fn task(&self, task_id: &str) -> Option<TaskRecord> {
        let (lsn, index) = self.tasks.get(task_id)?;
        self.records.get(lsn).and_then(|logged| logged.record.tasks.get(*index)).cloned()
    }

    /// Every task in the log (all queued: any change to one folds it first).
    pub(crate) fn tasks(&self) -> Vec<TaskRecord> {
        self.records.values().flat_map(|logged| logged.record.tasks.iter().cloned()).collect()
    }
}

/// A closed segment and the last record in it.
#[derive(Debug, Clone)]
pub(crate) struct Closed {
    pub(crate) path: PathBuf,
    pub(crate) last_lsn: u64,
}

/// What reading the log at start found.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Every record that checks, in log order.
    pub(crate) records: Vec<IntakeRecord>,
    /// The segments read (all closed now: appends go to a new one).
    pub(crate) segments: Vec<Closed>,
}

/// The segment appended to.
#[derive(Debug)]
struct Segment {
    file: File,
    path: PathBuf,
    /// Bytes of whole, synced batches.
    len: u64,
    /// The last record in it, 0 while empty.
    last_lsn: u64,
}

/// The writer's side of the log: the open segment, appends and rotation.
#[derive(Debug)]
pub(crate) struct IntakeLog {
    dir: PathBuf,
    current: Option<Segment>,
}

/// CRC-32 (IEEE) lookup tables for slicing by 8: `TABLES[0]` is the
/// classic byte-at-a-time table, `TABLES[k]` a byte followed by `k` zeros.
const TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0_u32; 256]; 8];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        tables[0][n] = c;
        n += 1;
    }
    let mut n = 0;
    while n < 256 {
        let mut k = 1;
        while k < 8 {
            let previous = tables[k - 1][n];
            tables[k][n] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            k += 1;
        }
        n += 1;
    }
    tables
};

/// CRC-32 (IEEE), for telling a whole frame from a torn one; eight bytes
/// a step (a frame of a few KB is checksummed on the writer thread, in
/// every batch).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0_u32;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let low = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let high = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        let byte = |word: u32, at: u32| (word >> (8 * at) & 0xff) as usize;
        crc = TABLES[7][byte(low, 0)]
            ^ TABLES[6][byte(low, 1)]
            ^ TABLES[5][byte(low, 2)]
            ^ TABLES[4][byte(low, 3)]
            ^ TABLES[3][byte(high, 0)]
            ^ TABLES[2][byte(high, 1)]
            ^ TABLES[1][byte(high, 2)]
            ^ TABLES[0][byte(high, 3)];
    }
    for &byte in chunks.remainder() {
        crc = TABLES[0][((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Appends one record's frame to `out`.
pub(crate) fn frame(logged: &Logged, out: &mut Vec<u8>) {
    // The payload is written in place after room for the header, which is
    // filled in once its length and CRC are known: no copy of it is made.
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    write_payload(logged, out);
    let payload = &out[start + 8..];
    let len = u32::try_from(payload.len()).expect("a record is far below 4 GiB");
    let crc = crc32(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The record as `serde_json` writes an [`IntakeRecord`] (the same fields,
/// in the same order, skipped when empty), with its tasks' JSON copied in.
fn write_payload(logged: &Logged, out: &mut Vec<u8>) {
    fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
        serde_json::to_writer(out, value).expect("intake records always serialize");
    }
    let record = &logged.record;
    out.extend_from_slice(b"{\"lsn\":");
    put(out, &record.lsn);
    out.extend_from_slice(b",\"delivery\":");
    put(out, record.delivery.as_str());
    out.extend_from_slice(b",\"event\":");
    put(out, record.event.as_str());
    out.extend_from_slice(b",\"received_unix\":");
    put(out, &record.received_unix);
    out.extend_from_slice(b",\"outcome\":");
    put(out, &record.outcome);
    if !logged.task_json.is_empty() {
        out.extend_from_slice(b",\"tasks\":[");
        for (index, json) in logged.task_json.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(json);
        }
        out.push(b']');
    }
    if !record.notices.is_empty() {
        out.extend_from_slice(b",\"notices\":");
        put(out, &record.notices);
    }
    out.push(b'}');
}

/// What [`read_frames`] read of one segment's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Frames {
    /// The records that check, in log order.
    pub(crate) records: Vec<IntakeRecord>,
    /// Bytes after the last record read: a torn batch, never answered,
    /// a reused segment's older frames, or zeros.
    pub(crate) left: usize,
    /// Stretches that did not read as records although records of the log
    /// follow them; read on after each.
    pub(crate) gaps: Vec<Gap>,
}

/// A stretch of a segment that does not read as records, followed by
/// records that carry the log on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gap {
    /// Where it starts in the segment.
    pub(crate) offset: usize,
    /// How long it is.
    pub(crate) bytes: usize,
    /// The places in the log it held (empty when none is missing).
    pub(crate) lost: std::ops::Range<u64>,
}

/// The records of one segment's bytes, in order: each frame must check and
/// follow the one before it (`first_lsn`, when known, is the first
/// record's). Where one does not, the rest is searched for a later frame
/// that carries the log on, and reading goes on from there (a [`Gap`]).
/// Bytes that hold no such frame are left: a torn tail, or a reused
/// segment's ([`SPARE_NAME`]) older frames, whose places in the log are
/// lower.
pub(crate) fn read_frames(bytes: &[u8], first_lsn: Option<u64>) -> Frames {
    let mut read = Frames::default();
    let mut at = 0;
    // The place the next frame must have: the first's, then one on from the
    // last read, or the place found past a gap.
    let mut expected = first_lsn;
    loop {
        let next = checked_payload(bytes, at)
            .and_then(|payload| serde_json::from_slice::<IntakeRecord>(payload).ok())
            .filter(|record| expected.is_none_or(|expected| record.lsn == expected));
        if let Some(record) = next {
            at += 8 + frame_len(bytes, at);
            expected = Some(record.lsn + 1);
            read.records.push(record);
            continue;
        }
        // Without a place to carry on from, there is nothing to look for.
        let Some(from) = expected else { break };
        let later = (at + 1..bytes.len().saturating_sub(8)).find_map(|offset| {
            // Every record starts so: checked before the CRC, which is dearer.
            if !bytes[offset + 8..].starts_with(RECORD_START) {
                return None;
            }
            let payload = checked_payload(bytes, offset)?;
            let place = serde_json::from_slice::<Place>(payload).ok()?.lsn;
            // The places skipped must fit in the bytes skipped. A reused
            // segment's older frames are lower; were the counter ever set back
            // (a journal moved aside, its spares kept), they could be higher,
            // but not by so little.
            let room = ((offset - at) / MIN_FRAME_BYTES) as u64;
            (place >= from && place - from <= room).then_some((offset, place))
        });
        let Some((offset, place)) = later else { break };
        read.gaps.push(Gap { offset: at, bytes: offset - at, lost: from..place });
        at = offset;
        expected = Some(place);
    }
    read.left = bytes.len() - at;
    read
}

/// How every frame's payload starts (`lsn` is the record's first field).
const RECORD_START: &[u8] = b"{\"lsn\":";

/// No frame is shorter: its header and the least record there is (checked
/// by `the_least_record_fills_a_minimum_frame`).
const MIN_FRAME_BYTES: usize = 64;

/// Only the place in the log of a frame's record, for the search past a gap.
#[derive(Deserialize)]
struct Place {
    lsn: u64,
}

/// The length a frame at `at` declares.
fn frame_len(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
}

/// The payload of the frame at `at`, if its length fits and its CRC checks.
fn checked_payload(bytes: &[u8], at: usize) -> Option<&[u8]> {
    if bytes.len().saturating_sub(at) < 8 {
        return None;
    }
    let len = frame_len(bytes, at);
    let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
    if len == 0 || len > MAX_FRAME || bytes.len() - at - 8 < len {
        return None;
    }
    let payload = &bytes[at + 8..at + 8 + len];
    (crc32(payload) == crc).then_some(payload)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(crate) fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.log")
}

/// The first record's place in the log, from a segment's name.
fn first_lsn_of(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

/// Folded, full segments kept to be written over by the next new segments
/// (not read at start: they are not `.log`s). Their blocks are allocated
/// and written, so a batch written over them and synced changes no file
/// metadata: the `fdatasync` flushes the batch's pages only. A batch that
/// grows a new file makes the `fdatasync` write the inode as well, a second
/// device write and wait on every batch.
///
/// Spares are named `spare.0` to `spare.{MAX_SPARES - 1}` (`spare` alone is
/// an older daemon's, and taken first). Under a storm a synced fold retires
/// every segment of the last few seconds at once, so the pool holds that
/// many; [`trim_spares`] lets all but one go once the log has been idle
/// for a while (the fold thread's `SPARES_KEPT_IDLE`).
pub(crate) const SPARE_NAME: &str = "spare";

/// The most spares kept: 128 MiB, about what 5 s of a storm at 25 MB/s of
/// records (the one synced fold's reach) fills.
pub(crate) const MAX_SPARES: usize = 16;

/// The names a spare may have, the older daemon's first.
fn spare_names(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    std::iter::once(dir.join(SPARE_NAME))
        .chain((0..MAX_SPARES).map(move |slot| dir.join(format!("{SPARE_NAME}.{slot}"))))
}

/// Keeps a folded segment as a spare when it is full (so every block of
/// it is written) and a slot is free, else deletes it.
pub(crate) fn retire(segment: &Closed) -> std::io::Result<()> {
    let full = std::fs::metadata(&segment.path).is_ok_and(|meta| meta.len() >= SEGMENT_BYTES);
    let free_slot = segment.path.parent().filter(|_| full).and_then(|dir| {
        // Only the fold thread adds spares, so a free slot stays free until the rename.
        spare_names(dir).skip(1).find(|name| !name.exists())
    });
    match free_slot {
        Some(slot) => std::fs::rename(&segment.path, slot),
        None => std::fs::remove_file(&segment.path),
    }
}

/// Deletes every spare in `dir` but one: the log has been idle, and the
/// next storm's first segments are new files again.
pub(crate) fn trim_spares(dir: &Path) -> std::io::Result<()> {
    let mut kept = false;
    for name in spare_names(dir) {
        if !name.exists() {
            continue;
        }
        if kept {
            match std::fs::remove_file(&name) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        } else {
            kept = true;
        }
    }
    Ok(())
}

impl IntakeLog {
    /// Reads every segment in `dir` (made if missing): the records that
    /// check, in order. Segments with no whole record are deleted, since
    /// nothing in them was ever answered.
    pub(crate) fn replay(dir: &Path) -> std::io::Result<Replayed> {
        Self::read(dir, true)
    }

    /// Every record in the log's segments, in order, deleting nothing:
    /// what a reopened database may have lost of folds that were not synced.
    pub(crate) fn records(dir: &Path) -> std::io::Result<Vec<IntakeRecord>> {
        Ok(Self::read(dir, false)?.records)
    }

    fn read(dir: &Path, at_start: bool) -> std::io::Result<Replayed> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .collect();
        names.sort();
        let mut replayed = Replayed::default();
        for path in names {
            let bytes = std::fs::read(&path)?;
            let Frames { records, left, gaps } = read_frames(&bytes, first_lsn_of(&path));
            if left > 0 {
                debug!(
                    segment = %path.display(),
                    bytes = left,
                    "the intake log segment ends in bytes that are not records: a torn batch, never answered, or a reused segment's older frames; they are left out"
                );
            }
            for gap in gaps.iter().filter(|_| at_start) {
                error!(
                    segment = %path.display(),
                    offset = gap.offset,
                    bytes = gap.bytes,
                    lost_from = gap.lost.start,
                    lost_to = gap.lost.end.saturating_sub(1),
                    "a stretch of the intake log does not read as records, and records follow it: read on after it. The deliveries it held are lost, unless the daemon was killed while writing them (then they were never answered); if not, the disk damaged the file"
                );
            }
            match records.last() {
                Some(last) => {
                    replayed.segments.push(Closed { path, last_lsn: last.lsn });
                    replayed.records.extend(records);
                }
                None if at_start => std::fs::remove_file(&path)?,
                None => {}
            }
        }
        Ok(replayed)
    }

    /// The log in `dir`, appending to a new segment from the next batch on.
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned(), current: None }
    }

    /// Appends `frames` (the records `first_lsn..=last_lsn`) and syncs them;
    /// on an error the segment is cut back to its last whole batch (or, if
    /// it cannot be, closed), so nothing unanswered is ever followed by
    /// answered records.
    pub(crate) fn append(&mut self, frames: &[u8], first_lsn: u64, last_lsn: u64) -> std::io::Result<()> {
        if self.current.is_none() {
            let path = self.dir.join(segment_name(first_lsn));
            // A spare, written over from its start, or a new file.
            let mut reused = false;
            for spare in spare_names(&self.dir) {
                match std::fs::rename(&spare, &path) {
                    Ok(()) => {
                        reused = true;
                        break;
                    }
                    // Not there, or let go by the fold thread's trim just now.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
            let file = if reused {
                OpenOptions::new().write(true).open(&path)?
            } else {
                OpenOptions::new().write(true).create_new(true).open(&path)?
            };
            // The new file's name must be on disk before anything in it is answered.
            if let Err(err) = sync_dir(&self.dir) {
                drop(std::fs::remove_file(&path));
                return Err(err);
            }
            self.current = Some(Segment { file, path, len: 0, last_lsn: 0 });
        }
        let segment = self.current.as_mut().expect("a segment was just opened");
        let written = segment.file.write_all_at(frames, segment.len).and_then(|()| segment.file.sync_data());
        match written {
            Ok(()) => {
                segment.len += frames.len() as u64;
                segment.last_lsn = last_lsn;
                Ok(())
            }
            Err(err) => {
                // Cut back to the last whole batch (a reused segment then
                // ends there, and is no longer the spare's length).
                let cut = segment.file.set_len(segment.len).and_then(|()| segment.file.sync_data());
                if cut.is_err() || segment.len == 0 {
                    // Close it; a torn tail is left out when it is read.
                    let empty = segment.len == 0;
                    let segment = self.current.take().expect("there is a segment");
                    if empty {
                        drop(std::fs::remove_file(&segment.path));
                    }
                }
                Err(err)
            }
        }
    }

    /// Closes the segment once it is long enough, for the fold thread to delete.
    pub(crate) fn rotate_if_full(&mut self) -> Option<Closed> {
        if self.current.as_ref().is_some_and(|segment| segment.len >= SEGMENT_BYTES) {
            let segment = self.current.take().expect("there is a segment");
            return Some(Closed { path: segment.path, last_lsn: segment.last_lsn });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lsn: u64) -> IntakeRecord {
        IntakeRecord {
            lsn,
            delivery: format!("d-{lsn}"),
            event: "ping".to_owned(),
            received_unix: 1,
            outcome: Accepted::Ignored { reason: "ping".to_owned() },
            tasks: Vec::new(),
            notices: Vec::new(),
        }
    }

    fn logged(lsn: u64) -> Logged {
        Logged::new(record(lsn))
    }

    /// The frame's payload is the record exactly as serde writes it (which
    /// is how it is read back), with tasks, notices and neither.
    #[test]
    fn a_framed_record_is_what_serde_writes_and_reads_back_the_same() {
        let task = |number: u64, seq: u64| {
            let request = domain::request::TaskRequest {
                kind: core_types::TaskKind::Review,
                repo: "octo/repo".to_owned(),
                number,
                head_sha: Some("a".repeat(40)),
                head_ref: None,
                clone_url: "https://github.com/octo/repo.git".to_owned(),
                repo_id: Some(7),
                prompt: "look at \"this\"\n\u{1f600}".to_owned(),
                subject_title: "A title".to_owned(),
                subject_body: String::new(),
                base_ref: Some("main".to_owned()),
                sender: "octocat".to_owned(),
                installation: Some(1),
                comment_id: Some(number * 10),
                follow_up: false,
            };
            TaskRecord::queued(request, "d-1", seq, 5)
        };
        let notice = domain::request::Refusal {
            repo: "octo/repo".to_owned(),
            number: 3,
            sender: "octocat".to_owned(),
            installation: None,
            comment_id: 30,
            reason: "a review task for octo/repo#3 is already queued".to_owned(),
        };
        let cases = [
            record(1),
            IntakeRecord {
                outcome: Accepted::Queued { task: task(1, 4).task_id },
                tasks: vec![task(1, 4), task(2, 5)],
                ..record(2)
            },
            IntakeRecord { notices: vec![notice.clone()], ..record(3) },
            IntakeRecord { tasks: vec![task(4, 6)], notices: vec![notice], ..record(4) },
        ];
        for case in cases {
            let mut out = Vec::new();
            frame(&Logged::new(case.clone()), &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out[8..]),
                serde_json::to_string(&case).unwrap(),
                "record {}",
                case.lsn
            );
            let read = read_frames(&out, Some(case.lsn));
            assert_eq!(read, Frames { records: vec![case], left: 0, gaps: Vec::new() });
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// Slicing by 8 agrees with the plain bitwise definition at every
    /// length and alignment of the 8-byte steps.
    #[test]
    fn crc32_agrees_with_the_bitwise_definition_at_every_length() {
        fn bitwise(bytes: &[u8]) -> u32 {
            let mut crc = !0_u32;
            for &byte in bytes {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { 0xedb8_8320 ^ (crc >> 1) } else { crc >> 1 };
                }
            }
            !crc
        }
        let bytes: Vec<u8> = (0..300_u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..8 {
            for end in start..bytes.len() {
                assert_eq!(crc32(&bytes[start..end]), bitwise(&bytes[start..end]), "{start}..{end}");
            }
        }
    }

    #[test]
    fn a_torn_tail_is_left_out_and_everything_before_it_read() {
        let mut bytes = Vec::new();
        for lsn in 1..=3 {
            frame(&logged(lsn), &mut bytes);
        }
        let whole = bytes.len();
        frame(&logged(4), &mut bytes);
        // Every cut inside the fourth frame reads as the first three.
        for cut in whole..bytes.len() {
            let read = read_frames(&bytes[..cut], Some(1));
            assert_eq!(read.records.iter().map(|r| r.lsn).collect::<Vec<_>>(), [1, 2, 3], "cut at {cut}");
            assert_eq!(read.left, cut - whole);
            assert!(read.gaps.is_empty());
        }
        // A flipped byte in the payload ends the reading there.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x20;
        assert_eq!(read_frames(&flipped, Some(1)).records.len(), 3);
        assert_eq!(read_frames(&bytes, Some(1)).records.len(), 4);
    }

    #[test]
    fn damage_in_the_middle_of_a_segment_is_a_gap_and_the_records_after_it_are_read() {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for lsn in 1..=8 {
            starts.push(bytes.len());
            frame(&logged(lsn), &mut bytes);
        }
        let lsns = |read: &Frames| read.records.iter().map(|r| r.lsn).collect::<Vec<_>>();
        // A flipped byte in the third record's payload: it is lost, the rest read.
        let mut damaged = bytes.clone();
        damaged[starts[2] + 12] ^= 0x01;
        let read = read_frames(&damaged, Some(1));
        assert_eq!(lsns(&read), [1, 2, 4, 5, 6, 7, 8]);
        assert_eq!(read.gaps, [Gap { offset: starts[2], bytes: starts[3] - starts[2], lost: 3..4 }]);
        assert_eq!(read.left, 0);
        // A damaged length, and two stretches of zeros over the fifth and
        // sixth records and the first: three gaps.
        let mut damaged = bytes.clone();
        damaged[starts[3]..starts[3] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        damaged[starts[4]..starts[6]].fill(0);
        damaged[..starts[1]].fill(0);
        let read = read_frames(&damaged, Some(1));
        assert_eq!(lsns(&read), [2, 3, 7, 8]);
        let lost: Vec<_> = read.gaps.iter().map(|gap| gap.lost.clone()).collect();
        assert_eq!(lost, [1..2, 4..7]);
        // Zeros after the last record (a spare's unwritten end) are left, not a gap.
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 4096, 0);
        let read = read_frames(&padded, Some(1));
        assert_eq!((lsns(&read).len(), read.left, read.gaps.len()), (8, 4096, 0));
    }

    #[test]
    fn the_least_record_fills_a_minimum_frame() {
        let least = IntakeRecord {
            lsn: 0,
            delivery: String::new(),
            event: String::new(),
            received_unix: 0,
            outcome: Accepted::Ignored { reason: String::new() },
            tasks: Vec::new(),
            notices: Vec::new(),
        };
        let mut out = Vec::new();
        frame(&Logged::new(least), &mut out);
        assert!(out.len() >= MIN_FRAME_BYTES, "{} bytes", out.len());
        assert!(out[8..].starts_with(RECORD_START));
    }

    #[test]
    fn a_frame_from_before_the_counter_was_set_back_does_not_carry_the_log_on() {
        // A journal moved aside keeps its spares: a new log from place 1 over
        // a spare that held places 5000 on.
        let mut bytes = Vec::new();
        frame(&logged(1), &mut bytes);
        frame(&logged(2), &mut bytes);
        let torn = bytes.len();
        for lsn in 5000..5010 {
            frame(&logged(lsn), &mut bytes);
        }
        // The new log's third record was torn over the old frames' start.
        bytes[torn..torn + 20].fill(0);
        let read = read_frames(&bytes, Some(1));
        assert_eq!(read.records.iter().map(|r| r.lsn).collect::<Vec<_>>(), [1, 2]);
        assert!(read.gaps.is_empty(), "{:?}", read.gaps);
        assert_eq!(read.left, bytes.len() - torn);
    }

    #[test]
    fn a_replay_reads_past_a_damaged_record_and_folds_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = IntakeLog::new(dir.path());
        let mut frames = Vec::new();
        let mut second = 0;
        for lsn in 1..=3 {
            if lsn == 2 {
                second = frames.len();
            }
            frame(&logged(lsn), &mut frames);
        }
        log.append(&frames, 1, 3).unwrap();
        let path = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second + 10] ^= 0x04;
        std::fs::write(&path, bytes).unwrap();
        let replayed = IntakeLog::replay(dir.path()).unwrap();
        let lsns: Vec<u64> = replayed.records.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, [1, 3]);
        assert_eq!(replayed.segments.last().map(|segment| segment.last_lsn), Some(3));
    }

    #[test]
    fn a_full_folded_segment_is_written_over_by_the_next_and_its_old_frames_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let big =
            |lsn: u64| IntakeRecord { delivery: format!("d-{lsn}-{}", "x".repeat(1 << 20)), ..record(lsn) };
        let mut log = IntakeLog::new(dir.path());
        let mut closed = None;
        for lsn in 1..=9 {
            let mut frames = Vec::new();
            frame(&Logged::new(big(lsn)), &mut frames);
            log.append(&frames, lsn, lsn).unwrap();
            closed = closed.or(log.rotate_if_full());
        }
        let closed = closed.expect("nine 1 MiB records fill an 8 MiB segment");
        assert_eq!(closed.last_lsn, 8);
        // Folded: kept as the spare, not deleted.
        retire(&closed).unwrap();
        assert!(!closed.path.exists());
        let spare = dir.path().join(format!("{SPARE_NAME}.0"));
        assert!(std::fs::metadata(&spare).unwrap().len() >= SEGMENT_BYTES);

        // The segment after the ninth record's opens on the spare.
        let mut log = IntakeLog::new(dir.path());
        let mut frames = Vec::new();
        frame(&logged(10), &mut frames);
        frame(&logged(11), &mut frames);
        log.append(&frames, 10, 11).unwrap();
        assert!(!spare.exists(), "the spare was taken");
        let reused = dir.path().join(segment_name(10));
        assert!(std::fs::metadata(&reused).unwrap().len() >= SEGMENT_BYTES, "written over, not cut");
        // Its old frames (records 1 to 8) are still there after the new ones, and not read.
        let bytes = std::fs::read(&reused).unwrap();
        let read = read_frames(&bytes, Some(10));
        assert_eq!(read.records.iter().map(|r| r.lsn).collect::<Vec<_>>(), [10, 11]);
        assert!(read.left > 0);
        assert!(read.gaps.is_empty(), "older frames are not the log carried on");
        let replayed = IntakeLog::replay(dir.path()).unwrap();
        let lsns: Vec<u64> = replayed.records.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, [9, 10, 11], "the ninth record's segment and the reused one");
        // A segment that is not full is deleted when folded, not kept.
        let small = replayed.segments.iter().find(|segment| segment.last_lsn == 9).unwrap();
        retire(small).unwrap();
        assert!(!small.path.exists() && !spare.exists());
    }

    #[test]
    fn full_folded_segments_are_kept_as_spares_up_to_the_pool_and_trimmed_to_one_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let full = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![0_u8; usize::try_from(SEGMENT_BYTES).unwrap()]).unwrap();
            Closed { path, last_lsn: 1 }
        };
        for n in 0..MAX_SPARES + 2 {
            let segment = full(&segment_name(n as u64 + 1));
            retire(&segment).unwrap();
            assert!(!segment.path.exists());
        }
        let spares = || spare_names(dir.path()).filter(|name| name.exists()).count();
        assert_eq!(spares(), MAX_SPARES, "the two past the pool were deleted");
        // The writer takes them one by one for its new segments.
        let mut log = IntakeLog::new(dir.path());
        let mut frames = Vec::new();
        frame(&logged(1), &mut frames);
        log.append(&frames, 1, 1).unwrap();
        assert_eq!(spares(), MAX_SPARES - 1);
        let taken = dir.path().join(segment_name(1));
        assert!(std::fs::metadata(&taken).unwrap().len() >= SEGMENT_BYTES, "written over, not a new file");
        trim_spares(dir.path()).unwrap();
        assert_eq!(spares(), 1, "idle: one spare is kept");
        trim_spares(dir.path()).unwrap();
        assert_eq!(spares(), 1);
    }

    #[test]
    fn folded_records_are_let_go_in_steps_oldest_first_and_later_ones_stay() {
        let mut pending = Pending::default();
        for lsn in 1..=5 {
            pending.insert(Arc::new(logged(lsn)));
        }
        assert!(pending.remove_some_upto(3, 2), "record 3 is still to go");
        assert_eq!(pending.len(), 3);
        assert!(pending.delivery_outcome("d-1").is_none() && pending.delivery_outcome("d-2").is_none());
        assert!(pending.delivery_outcome("d-3").is_some());
        assert!(!pending.remove_some_upto(3, 2), "nothing up to 3 is left");
        assert_eq!(pending.len(), 2);
        assert!(pending.delivery_outcome("d-3").is_none());
        assert!(pending.delivery_outcome("d-4").is_some() && pending.delivery_outcome("d-5").is_some());
        pending.remove_upto(5);
        assert_eq!(pending.len(), 0);
        assert!(!pending.remove_some_upto(5, 1));
    }
}
