//! Unit and router tests of the api crate. The router is driven with
//! `oneshot`, no socket; the journal is a real redb file in a temp dir.

mod arrows;
mod config;
mod connections;
mod hardening;
mod intake;
mod setup;
mod status;

use std::path::PathBuf;

/// The webhook fixtures vendored in the repository (`tests/fixtures/github-webhooks`,
/// with their provenance), so a plain clone passes its own tests.
pub(crate) fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/github-webhooks");
    assert!(
        dir.join("MANIFEST.json").is_file(),
        "webhook fixtures missing: expected tests/fixtures/github-webhooks in the repository (looked in {})",
        dir.display()
    );
    dir
}

/// A file holding a PEM-shaped App key, for settings tests. Written once per
/// test process and never rewritten: tests run in parallel, and a file
/// rewritten by one is read empty by another.
pub(crate) fn test_key() -> &'static std::path::Path {
    static KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let key = std::env::temp_dir().join(format!("berth-config-test-{}.pem", std::process::id()));
        std::fs::write(&key, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
            .expect("the test key is written");
        key
    })
}
