//! Unit and router tests of the api crate. The router is driven with
//! `oneshot`, no socket; the journal is a real redb file in a temp dir.

mod config;
mod connections;
mod hardening;
mod intake;
mod journal;
mod runner;
mod signature;
mod status;
mod triggers;

use std::path::PathBuf;

/// The shared webhook fixtures beside the repository.
pub(crate) fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/github-webhooks");
    assert!(
        dir.join("MANIFEST.json").is_file(),
        "webhook fixtures missing: expected ../shared/fixtures/github-webhooks beside the repository (looked in {})",
        dir.display()
    );
    dir
}
