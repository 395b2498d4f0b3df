//! Exponential backoff as a pure iterator of delays.
//!
//! [`Backoff`] only computes how long to wait before the next try: the first
//! delay, each next one twice the one before, capped; optionally jittered
//! from a seed the caller supplies, and optionally limited to a number of
//! attempts. It never sleeps and reads no clock, so callers keep their own
//! `tokio::time::sleep` (or a `select!` with their cancellation token) and
//! tests can check a sequence without waiting for it.

use std::time::Duration;

/// Delays between retries: `initial`, then doubling, at most `max`.
///
/// As an [`Iterator`] it never ends; [`Backoff::max_attempts`] bounds it.
/// The first delay is `initial` as given (even above `max`); every later one
/// is at most `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    /// State of the jitter's generator; `None`: no jitter.
    jitter: Option<u64>,
}

impl Backoff {
    /// Delays of `initial`, `2 * initial`, `4 * initial`, ... capped at `max`, with no jitter.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, max, jitter: None }
    }

    /// The same delays, each scaled by a factor from 1/2 to 1 drawn from a
    /// generator seeded with `seed`, so that many retrying callers spread
    /// out; the same seed gives the same delays.
    #[must_use]
    pub const fn with_jitter(mut self, seed: u64) -> Self {
        self.jitter = Some(seed);
        self
    }

    /// The delays between at most `attempts` tries: one fewer than
    /// `attempts`, since the first try waits for nothing.
    pub fn max_attempts(self, attempts: u32) -> std::iter::Take<Self> {
        self.take(usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX))
    }

    /// The next delay (what [`Iterator::next`] gives, which is never `None`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        match &mut self.jitter {
            None => delay,
            Some(state) => {
                // The top 53 bits of the draw make a uniform float in [0, 1).
                let unit = (split_mix(state) >> 11) as f64 / (1_u64 << 53) as f64;
                delay.mul_f64(0.5 + unit / 2.0)
            }
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

/// SplitMix64: a small, well-mixed generator; plenty for spreading retries.
fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
