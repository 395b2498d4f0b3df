//! Unit tests of the rules, against the vendored webhook fixtures.

mod signature;
mod triggers;

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
