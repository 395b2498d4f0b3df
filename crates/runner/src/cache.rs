//! The clone cache from the daemon's side (ADR 23): before a task's worker
//! is created, the repository's mirror volume is refreshed by a short-lived
//! refresh container holding the task's token, at most one at a time per
//! repository, while the rest of the GitHub preparation goes on; the
//! worker then gets the mirror mounted read-only, or, when anything went
//! wrong, no mirror and a note saying why (it clones plainly).
//!
//! The daemon runs no git itself. What it knows of each mirror beyond the
//! engine's volume (its size after the last refresh, when it was last used,
//! how long filling it took) is in a small book, `clone-cache.json` in the
//! state directory, which `berth ps --caches` reads too; a lost book costs
//! only the eviction order and the sizes shown until the next refreshes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use core_types::{Secret, env_names};
use dispatcher::{
    CACHE_MOUNT, CacheEntry, CacheVolume, ContainerEngine, ContainerStatus, Dispatcher, RefreshEnd,
};
use domain::tasks::TaskRecord;
use journal::now_unix;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The book's file name in the state directory.
pub const BOOK_FILE: &str = "clone-cache.json";

/// How long a refresh may run when nothing is known of the repository yet.
const FIRST_REFRESH_LIMIT: Duration = Duration::from_secs(20 * 60);

/// A refresh of a filled mirror may take this many times as long as filling
/// it did (plus [`REFRESH_SLACK`]): past that a plain clone would have been
/// quicker, so the refresh is stopped and the task clones plainly.
const REFRESH_FACTOR: u32 = 1;

/// Added to every refresh's time limit (container start and stop).
const REFRESH_SLACK: Duration = Duration::from_secs(30);

/// What the runner is told about the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Total bytes of this instance's mirrors; past it the least recently
    /// used are removed (none while a worker has it mounted). `None`: no cap.
    pub size_cap: Option<u64>,
    /// The state directory, where the book lives.
    pub state_dir: PathBuf,
}

/// What the book says of one mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookEntry {
    /// Bytes after its last refresh.
    pub size_bytes: Option<u64>,
    /// When a task last used it (seconds since the epoch).
    pub last_used_unix: Option<u64>,
    /// How long the refresh that filled it took, in milliseconds.
    pub fill_millis: Option<u64>,
}

/// The book: repository id to what is known of its mirror.
pub type Book = BTreeMap<u64, BookEntry>;

/// Reads the book from `state_dir` (empty when missing or unreadable).
pub fn read_book(state_dir: &Path) -> Book {
    std::fs::read(state_dir.join(BOOK_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// One mirror as the status API and `berth ps --caches` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheRow {
    /// `owner/name` when the volume was made.
    pub repo: String,
    /// GitHub's id of the repository.
    pub repo_id: u64,
    /// The volume.
    pub volume: String,
    /// The deployment that owns it.
    pub instance: String,
    /// Bytes after its last refresh, when known.
    pub size_bytes: Option<u64>,
    /// When a task last used it, when known (seconds since the epoch).
    pub last_used_unix: Option<u64>,
    /// When the volume was made (seconds since the epoch).
    pub created_unix: Option<u64>,
}

/// The rows for `entries`, with what `book` knows.
pub fn cache_rows(entries: Vec<CacheEntry>, book: &Book) -> Vec<CacheRow> {
    let mut rows: Vec<CacheRow> = entries
        .into_iter()
        .map(|entry| {
            let known = book.get(&entry.repo_id).cloned().unwrap_or_default();
            CacheRow {
                created_unix: entry
                    .created_at
                    .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|since| since.as_secs()),
                repo: entry.repo,
                repo_id: entry.repo_id,
                volume: entry.volume,
                instance: entry.instance,
                size_bytes: known.size_bytes,
                last_used_unix: known.last_used_unix,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.last_used_unix.cmp(&a.last_used_unix).then_with(|| a.volume.cmp(&b.volume)));
    rows
}

/// Which mirrors to remove so that the total fits `cap`: least recently
/// used first (never used: by age), never `keep`. Sizes unknown count as 0.
pub fn eviction_order(rows: &[CacheRow], cap: u64, keep: Option<u64>) -> Vec<String> {
    let mut total: u64 = rows.iter().filter_map(|row| row.size_bytes).sum();
    let mut candidates: Vec<&CacheRow> = rows.iter().filter(|row| Some(row.repo_id) != keep).collect();
    candidates.sort_by_key(|row| (row.last_used_unix.or(row.created_unix).unwrap_or(0), row.repo_id));
    let mut evict = Vec::new();
    for row in candidates {
        if total <= cap {
            break;
        }
        total = total.saturating_sub(row.size_bytes.unwrap_or(0));
        evict.push(row.volume.clone());
    }
    evict
}

/// Mirrors held by tasks (from their refresh to their end), by repository id.
type Leases = Arc<Mutex<HashMap<u64, usize>>>;

/// A task's hold on its repository's mirror: while any is held, eviction
/// leaves the mirror alone (between the refresh and the worker's create the
/// engine would not stop it: nothing has it mounted yet). Released on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    leases: Leases,
    repo_id: u64,
}

impl Lease {
    fn take(leases: &Leases, repo_id: u64) -> Self {
        *leases.lock().expect("leases lock is never poisoned").entry(repo_id).or_default() += 1;
        Self { leases: Arc::clone(leases), repo_id }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().expect("leases lock is never poisoned");
        if let Some(count) = leases.get_mut(&self.repo_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                leases.remove(&self.repo_id);
            }
        }
    }
}

/// What a task's worker gets of the cache.
#[derive(Debug)]
pub(crate) enum CacheUse {
    /// The repository's mirror, refreshed, to mount read-only, held until the task ends.
    Mirror(CacheVolume, #[expect(dead_code, reason = "held for its drop, which releases the mirror")] Lease),
    /// None; with the reason the worker's log gives, when there is one.
    Plain(Option<String>),
}

impl CacheUse {
    /// The volume to mount, if any.
    pub(crate) fn volume(&self) -> Option<&CacheVolume> {
        match self {
            CacheUse::Mirror(volume, _) => Some(volume),
            CacheUse::Plain(_) => None,
        }
    }

    /// What the worker's environment gets.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        match self {
            CacheUse::Mirror(..) => vec![(env_names::BERTH_CACHE_DIR.to_owned(), CACHE_MOUNT.to_owned())],
            CacheUse::Plain(Some(note)) => vec![(env_names::BERTH_CACHE_NOTE.to_owned(), note.clone())],
            CacheUse::Plain(None) => Vec::new(),
        }
    }
}

/// The runner's share of the cache: settings, one lock per repository, the
/// refreshes under way, and the book.
#[derive(Debug, Default)]
pub(crate) struct CloneCache {
    settings: Option<CacheSettings>,
    locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    refreshing: Mutex<HashSet<u64>>,
    leases: Leases,
    book: Mutex<Book>,
}

impl CloneCache {
    /// The cache under `settings`; `None` keeps it off.
    pub(crate) fn new(settings: Option<CacheSettings>) -> Self {
        let book = settings.as_ref().map(|settings| read_book(&settings.state_dir)).unwrap_or_default();
        Self { settings, book: Mutex::new(book), ..Self::default() }
    }

    /// Whether the cache is on.
    pub(crate) fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// Whether a refresh of `repo_id` is running from here now.
    pub(crate) fn is_refreshing(&self, repo_id: u64) -> bool {
        self.refreshing.lock().expect("refreshing lock is never poisoned").contains(&repo_id)
    }

    /// Whether a task holds the mirror of `repo_id` (see [`Lease`]).
    fn is_leased(&self, repo_id: u64) -> bool {
        self.leases.lock().expect("leases lock is never poisoned").contains_key(&repo_id)
    }

    /// A copy of the book.
    pub(crate) fn book(&self) -> Book {
        self.book.lock().expect("book lock is never poisoned").clone()
    }

    fn update_book(&self, repo_id: u64, change: impl FnOnce(&mut BookEntry)) {
        let Some(settings) = &self.settings else { return };
        let book = {
            let mut book = self.book.lock().expect("book lock is never poisoned");
            change(book.entry(repo_id).or_default());
            book.clone()
        };
        // Written aside and renamed, so a reader never sees half a book.
        let path = settings.state_dir.join(BOOK_FILE);
        let aside = settings.state_dir.join(format!("{BOOK_FILE}.new"));
        let written = serde_json::to_vec_pretty(&book)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&aside, bytes))
            .and_then(|()| std::fs::rename(&aside, &path));
        if let Err(err) = written {
            warn!(error = %err, path = %path.display(), "could not write the clone cache's book");
        }
    }

    fn forget(&self, repo_id: u64) {
        self.update_book(repo_id, |entry| *entry = BookEntry::default());
    }

    fn lock_of(&self, repo_id: u64) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        self.locks.lock().expect("locks lock is never poisoned").entry(repo_id).or_default().clone()
    }

    /// How long a refresh of `repo_id` may run.
    fn refresh_limit(&self, repo_id: u64) -> Duration {
        let fill = self
            .book
            .lock()
            .expect("book lock is never poisoned")
            .get(&repo_id)
            .and_then(|entry| entry.fill_millis);
        match fill {
            Some(millis) => Duration::from_millis(millis) * REFRESH_FACTOR + REFRESH_SLACK,
            None => FIRST_REFRESH_LIMIT,
        }
    }

    /// Refreshes the mirror of `task`'s repository once the token arrives
    /// on `token` (prepare sends it the moment it has one, and drops the
    /// sender when it fails), and says what the worker gets.
    pub(crate) async fn prepare_for<E: ContainerEngine>(
        &self,
        dispatcher: &Dispatcher<E>,
        task: &TaskRecord,
        token: tokio::sync::oneshot::Receiver<Secret>,
    ) -> CacheUse {
        if !self.enabled() {
            return CacheUse::Plain(None);
        }
        let Some(repo_id) = task.repo_id else {
            return CacheUse::Plain(Some(
                "the task's delivery named no repository id, which the cache is keyed by".to_owned(),
            ));
        };
        // Filling a mirror costs about a full clone. A review's own clone needs
        // the full history anyway; an implement task clones depth 1, much
        // less, so it never waits for a first fill: it borrows only once a
        // review has filled the mirror.
        let filled = self.book().get(&repo_id).is_some_and(|entry| entry.fill_millis.is_some());
        if task.kind == core_types::TaskKind::Implement && !filled {
            return CacheUse::Plain(Some(
                "the repository's mirror is not filled yet, and an implement task's depth-1 clone costs less than filling it"
                    .to_owned(),
            ));
        }
        let Ok(token) = token.await else { return CacheUse::Plain(None) };
        let asked = Instant::now();
        // One refresh at a time per repository; a task that waited for
        // another's refresh uses it rather than fetching again.
        let lease = Lease::take(&self.leases, repo_id);
        let lock = self.lock_of(repo_id);
        let mut last_refresh = lock.lock().await;
        let volume = match dispatcher.cache_volume(repo_id, &task.repo).await {
            Ok(volume) => volume,
            Err(err) => {
                warn!(repo_id, error = %err, "no clone cache for this task");
                return CacheUse::Plain(Some(format!("the mirror's volume could not be had: {err}")));
            }
        };
        if last_refresh.is_some_and(|at| at >= asked) {
            self.update_book(repo_id, |entry| entry.last_used_unix = Some(now_unix()));
            return CacheUse::Mirror(volume, lease);
        }
        let limit = self.refresh_limit(repo_id);
        let deadline = now_unix() + limit.as_secs();
        let env = [
            (env_names::BERTH_CLONE_URL, task.clone_url.clone()),
            (env_names::BERTH_GITHUB_TOKEN, token.expose().to_owned()),
            (env_names::BERTH_CACHE_DIR, CACHE_MOUNT.to_owned()),
            (env_names::BERTH_DEADLINE, deadline.to_string()),
            (env_names::BERTH_REPO, task.repo.clone()),
        ];
        self.refreshing.lock().expect("refreshing lock is never poisoned").insert(repo_id);
        let started = Instant::now();
        let ran = dispatcher.run_refresh(&volume, &task.repo, &env, limit).await;
        self.refreshing.lock().expect("refreshing lock is never poisoned").remove(&repo_id);
        let took = started.elapsed();
        match ran {
            Ok(RefreshEnd::Exited { code: 0, output }) => {
                *last_refresh = Some(Instant::now());
                let size = output.lines().rev().find_map(|line| {
                    line.trim().strip_prefix(worker_size_prefix()).and_then(|size| size.trim().parse().ok())
                });
                info!(repo_id, took = ?took, size_bytes = ?size, "clone cache refreshed");
                self.update_book(repo_id, |entry| {
                    entry.size_bytes = size.or(entry.size_bytes);
                    entry.last_used_unix = Some(now_unix());
                    if entry.fill_millis.is_none() {
                        entry.fill_millis = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
                    }
                });
                drop(last_refresh);
                self.evict(dispatcher, Some(repo_id)).await;
                CacheUse::Mirror(volume, lease)
            }
            Ok(RefreshEnd::Exited { code, output }) => {
                let why = output
                    .lines()
                    .rev()
                    .find(|line| line.contains("refresh failed") || line.contains("berth-worker:"))
                    .unwrap_or("it printed nothing")
                    .trim()
                    .to_owned();
                warn!(repo_id, code, reason = %why, "the clone cache's refresh failed; the task clones plainly");
                // The mirror may be damaged: made anew by the next task,
                // unless a worker still has it mounted (the engine refuses then).
                drop(last_refresh);
                drop(lease);
                self.drop_mirror(dispatcher, &volume).await;
                CacheUse::Plain(Some(format!("the mirror's refresh failed (exit {code}: {why})")))
            }
            Ok(RefreshEnd::TimedOut) => {
                warn!(repo_id, limit = ?limit, "the clone cache's refresh took too long; the task clones plainly");
                CacheUse::Plain(Some(format!(
                    "the mirror's refresh took longer than {}s, longer than a plain clone should",
                    limit.as_secs()
                )))
            }
            Err(err) => {
                warn!(repo_id, error = %err, "the clone cache's refresh could not run; the task clones plainly");
                CacheUse::Plain(Some(format!("the mirror's refresh could not run: {err}")))
            }
        }
    }

    async fn drop_mirror<E: ContainerEngine>(&self, dispatcher: &Dispatcher<E>, volume: &CacheVolume) {
        // Another task of the repository holds it (about to mount it, or has).
        if self.is_leased(volume.repo_id()) {
            return;
        }
        match dispatcher.remove_cache(volume.name()).await {
            Ok(dispatcher::VolumeRemoval::Removed) => {
                info!(
                    volume = volume.name(),
                    "removed a mirror whose refresh failed; the next task fills it anew"
                );
                self.forget(volume.repo_id());
            }
            Ok(_) => {}
            Err(err) => warn!(volume = volume.name(), error = %err, "could not remove a mirror"),
        }
    }

    /// Removes least recently used mirrors until the total fits the cap,
    /// never `keep` and never one a container uses (the engine refuses).
    pub(crate) async fn evict<E: ContainerEngine>(&self, dispatcher: &Dispatcher<E>, keep: Option<u64>) {
        let Some(cap) = self.settings.as_ref().and_then(|settings| settings.size_cap) else { return };
        let entries = match dispatcher.caches().await {
            Ok(entries) => entries,
            Err(err) => {
                warn!(error = %err, "cannot list the clone cache's mirrors");
                return;
            }
        };
        let rows = cache_rows(entries, &self.book());
        for volume in eviction_order(&rows, cap, keep) {
            let repo_id = rows.iter().find(|row| row.volume == volume).map(|row| row.repo_id);
            if repo_id.is_some_and(|id| self.is_refreshing(id) || self.is_leased(id)) {
                info!(volume, "a mirror over the cap is in use; kept");
                continue;
            }
            match dispatcher.remove_cache(&volume).await {
                Ok(dispatcher::VolumeRemoval::Removed) => {
                    info!(volume, "evicted a least recently used mirror (BERTH_CLONE_CACHE_SIZE)");
                    if let Some(repo_id) = repo_id {
                        self.forget(repo_id);
                    }
                }
                Ok(dispatcher::VolumeRemoval::InUse) => {
                    info!(volume, "a mirror over the cap is in use; kept")
                }
                Ok(dispatcher::VolumeRemoval::Missing) => {}
                Err(err) => warn!(volume, error = %err, "could not evict a mirror"),
            }
        }
    }

    /// The sweep's part: removes refresh containers no refresh of this
    /// daemon is waiting on (left by a daemon killed mid-refresh, or whose
    /// removal failed) once they are `grace` old, and keeps the cap.
    pub(crate) async fn sweep<E: ContainerEngine>(
        &self,
        dispatcher: &Dispatcher<E>,
        started: bool,
        grace: Duration,
    ) {
        if let Ok(refreshes) = dispatcher.refresh_containers().await {
            for (id, repo_id, status, created) in refreshes {
                let age = created
                    .and_then(|created| std::time::SystemTime::now().duration_since(created).ok())
                    .unwrap_or(Duration::MAX);
                let ours = self.is_refreshing(repo_id);
                let settled = !started || age >= grace || matches!(status, ContainerStatus::Exited(_));
                if !ours && settled {
                    info!(container_id = %id, repo_id, "removing a refresh container left over");
                    if let Err(err) = dispatcher.remove(&id).await {
                        warn!(container_id = %id, error = %err, "could not remove a refresh container");
                    }
                }
            }
        }
        self.evict(dispatcher, None).await;
    }

    /// The mirrors of this instance, with what the book knows.
    pub(crate) async fn rows<E: ContainerEngine>(
        &self,
        dispatcher: &Dispatcher<E>,
    ) -> Result<Vec<CacheRow>, dispatcher::DispatchError> {
        Ok(cache_rows(dispatcher.caches().await?, &self.book()))
    }
}

/// The prefix of the size line a refresh prints (the worker's `SIZE_LINE_PREFIX`).
fn worker_size_prefix() -> &'static str {
    "berth-cache: size="
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(repo_id: u64, size: u64, last_used: Option<u64>) -> CacheRow {
        CacheRow {
            repo: format!("o/r{repo_id}"),
            repo_id,
            volume: format!("v{repo_id}"),
            instance: "default".to_owned(),
            size_bytes: Some(size),
            last_used_unix: last_used,
            created_unix: Some(1),
        }
    }

    #[test]
    fn eviction_takes_the_least_recently_used_first_until_the_total_fits() {
        let rows = [row(1, 100, Some(30)), row(2, 100, Some(10)), row(3, 100, None), row(4, 100, Some(20))];
        // 400 bytes, cap 150: three must go, never-used (by age) first, then the oldest uses.
        assert_eq!(eviction_order(&rows, 150, None), ["v3", "v2", "v4"]);
        assert_eq!(eviction_order(&rows, 400, None), Vec::<String>::new());
        // The mirror just used is never evicted, even when it is the oldest.
        assert_eq!(eviction_order(&rows, 250, Some(3)), ["v2", "v4"]);
    }

    #[test]
    fn a_task_without_a_repository_id_gets_no_mirror_and_a_note() {
        let use_ = CacheUse::Plain(Some("why".to_owned()));
        assert_eq!(use_.env(), [(env_names::BERTH_CACHE_NOTE.to_owned(), "why".to_owned())]);
        assert!(use_.volume().is_none());
        assert!(CacheUse::Plain(None).env().is_empty());
    }
}
