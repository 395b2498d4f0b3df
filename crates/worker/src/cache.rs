//! The clone cache, from inside containers (ADR 23).
//!
//! `berth-worker refresh-cache` runs in a short-lived refresh container with
//! the repository's mirror volume mounted writable at `BERTH_CACHE_DIR`: it
//! makes the bare mirror when the volume is new, clears lock files a killed
//! refresh left, and fetches every branch from the clone URL with the task's
//! token (as a header, as for any clone). It never repacks or prunes
//! objects: workers borrow them while it runs.
//!
//! A worker with `BERTH_CACHE_DIR` set finds the mirror mounted read-only
//! and borrows its objects (an alternates file); anything that goes wrong
//! with it falls back to the plain clone, and the log says why.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use core_types::{Secret, env_names};
use tokio_util::sync::CancellationToken;

use crate::error::Halt;
use crate::git::{Author, Git};
use crate::output::Output;
use crate::process::{Limits, OrphanSweep};
use crate::redact::Redactor;

/// How long a refresh may take when `BERTH_DEADLINE` is unset.
const DEFAULT_REFRESH_TIME: Duration = Duration::from_secs(30 * 60);

/// The line a refresh prints last, with the mirror's size in bytes.
pub const SIZE_LINE_PREFIX: &str = "berth-cache: size=";

/// Whether `dir` holds a bare repository a worker can borrow objects from.
pub(crate) fn usable_mirror(dir: &Path) -> Result<(), String> {
    if !dir.join("HEAD").is_file() {
        return Err(format!("{} holds no mirror yet", dir.display()));
    }
    if !dir.join("objects").is_dir() {
        return Err(format!("{} has no objects directory", dir.display()));
    }
    Ok(())
}

/// Lock files and temporary packs a refresh killed part-way leaves behind:
/// git refuses to update a ref whose lock exists, so they would stop every
/// later refresh. Only one refresh runs per mirror, so none is live.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for name in ["packed-refs.lock", "shallow.lock", "config.lock", "HEAD.lock", "index.lock"] {
        let path = dir.join(name);
        if path.exists() {
            found.push(path);
        }
    }
    let mut pending = vec![dir.join("refs")];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "lock") {
                found.push(path);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("objects/pack")) {
        found.extend(
            entries.flatten().map(|entry| entry.path()).filter(|path| {
                path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("tmp_"))
            }),
        );
    }
    found
}

/// Bytes of the files under `dir`.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                total += metadata.len();
            }
        }
    }
    total
}

/// `berth-worker refresh-cache`: fetches every branch of `BERTH_CLONE_URL`
/// into the mirror at `BERTH_CACHE_DIR`; prints the mirror's size last.
/// Exit 0 when the mirror is up to date, 1 when not (the daemon then mounts
/// no mirror and the task clones plainly), 2 on a bad environment.
pub async fn refresh(env: &BTreeMap<String, String>, cancel: CancellationToken) -> u8 {
    let token = env.get(env_names::BERTH_GITHUB_TOKEN).filter(|token| !token.is_empty()).map(Secret::new);
    let secrets: Vec<String> = token.iter().flat_map(crate::git::token_secrets).collect();
    let output = Output::new(Redactor::new(&secrets));
    let (Some(dir), Some(url)) = (env.get(env_names::BERTH_CACHE_DIR), env.get(env_names::BERTH_CLONE_URL))
    else {
        output.note(&format!(
            "refresh-cache needs {} and {}",
            env_names::BERTH_CACHE_DIR,
            env_names::BERTH_CLONE_URL
        ));
        return 2;
    };
    let dir = PathBuf::from(dir);
    let remaining = env
        .get(env_names::BERTH_DEADLINE)
        .and_then(|deadline| deadline.parse::<u64>().ok())
        .map(|deadline| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Duration::from_secs(deadline).saturating_sub(now)
        })
        .unwrap_or(DEFAULT_REFRESH_TIME);
    let limits = Limits {
        deadline: tokio::time::Instant::now() + remaining,
        grace: Duration::from_secs(2),
        cancel,
        sweep: OrphanSweep::Disabled,
    };
    let author =
        Author { name: crate::DEFAULT_AUTHOR_NAME.to_owned(), email: crate::DEFAULT_AUTHOR_EMAIL.to_owned() };
    let git = Git::new(url, token.as_ref(), &author, 0);
    match refresh_into(&dir, url, &git, &limits, &output).await {
        Ok(()) => {
            output.note("the mirror is up to date");
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{SIZE_LINE_PREFIX}{}", size_of(&dir));
            0
        }
        Err(Halt::Failed(err)) => {
            output.note(&format!("the refresh failed: {}", err.chain()));
            1
        }
        Err(Halt::DeadlinePassed { during }) => {
            output.note(&format!("the refresh ran out of time while {during}"));
            1
        }
        Err(Halt::Cancelled) => {
            output.note("the refresh was stopped");
            1
        }
    }
}

async fn refresh_into(
    dir: &Path,
    url: &str,
    git: &Git,
    limits: &Limits,
    output: &Output,
) -> Result<(), Halt> {
    let git_dir = dir.to_string_lossy().into_owned();
    if usable_mirror(dir).is_err() {
        output.note("making a new mirror");
        git.run(dir, &["init", "--quiet", "--bare", "--", &git_dir], "making the mirror", limits, output)
            .await?;
    }
    for leftover in leftovers(dir) {
        output.note(&format!("removing {} left by an earlier refresh", leftover.display()));
        let _ = std::fs::remove_file(&leftover);
    }
    git.run(
        dir,
        &[
            "--git-dir",
            &git_dir,
            // Packs, never loose objects: fewer files for workers to read.
            "-c",
            "fetch.unpackLimit=1",
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            url,
            "+refs/heads/*:refs/heads/*",
        ],
        "fetching into the mirror",
        limits,
        output,
    )
    .await?;
    Ok(())
}
