//! Worker container names: derived from the task id, so a second create of
//! the same task meets the first one's name, and short enough for every
//! backend (a Kubernetes object name or label value and a Swarm service name
//! hold at most 63 characters).
//!
//! This module does not decide what a task id may be (core-types does); it
//! only maps every valid one to a name that fits.

use core_types::TaskId;

/// Longest worker name, the DNS label limit of Kubernetes and Swarm.
pub const MAX_CONTAINER_NAME_LEN: usize = 63;

const PREFIX: &str = "berth-";

/// How much of a long task id a hashed name keeps in front of its hash.
const KEPT_ID_CHARS: usize = 40;

/// The task's worker name: at most 63 of `[a-z0-9-]`, starting and ending
/// with a letter or digit, and different for different tasks.
///
/// `berth-<task id>` when that is at most 62 characters and ends in a letter
/// or digit: the name Berth always gave, so containers made by an earlier
/// version are still found. Otherwise (a long id, or one ending in `-`)
/// `berth-<start of the id>-<hash of the whole id>`, exactly 63 characters.
/// The two forms never meet, since only the second is 63 characters long;
/// within the second, a name is shared only if a 64-bit hash is.
pub fn container_name(task_id: &TaskId) -> String {
    let id = task_id.as_str();
    let natural = format!("{PREFIX}{id}");
    if natural.len() < MAX_CONTAINER_NAME_LEN && id.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return natural;
    }
    let kept = id.get(..KEPT_ID_CHARS).unwrap_or(id).trim_end_matches('-');
    let mut name = format!("{PREFIX}{kept}-");
    // Hex digits of the id's hash fill the name to exactly 63 characters
    // (at least 16 of them, as `kept` holds at most 40).
    let mut round = 0_u8;
    while name.len() < MAX_CONTAINER_NAME_LEN {
        let digits = format!("{:016x}", stable_hash(id.as_bytes(), round));
        let room = MAX_CONTAINER_NAME_LEN - name.len();
        name.push_str(&digits[..room.min(digits.len())]);
        round += 1;
    }
    name
}

/// The name Berth gave a task's container before names were bounded
/// (`berth-<task id>`, up to 69 characters), for finding containers made by
/// an earlier version. Equal to [`container_name`] for most ids.
pub(crate) fn legacy_container_name(task_id: &TaskId) -> String {
    format!("berth-{task_id}")
}

/// FNV-1a, 64 bits, over `bytes` and then `round`, mixed by MurmurHash3's
/// finalizer so that every round's digits differ throughout: stable across
/// Rust versions and platforms (a name must not change when Berth is
/// rebuilt, as `std`'s hasher may), with no dependency for a few lines.
fn stable_hash(bytes: &[u8], round: u8) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = bytes
        .iter()
        .chain(std::iter::once(&round))
        .fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME));
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}
