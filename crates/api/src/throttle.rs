//! Log lines that anyone can cause, at a bounded rate: at most one line per
//! period, and the next line that is written says how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets at most one log line through per period; `const` so a `static` can
/// hold one.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new(ThrottleState { last: None, suppressed: 0 }) }
    }

    /// Whether a line may be written now: `Some(n)` when it may, `n` being
    /// the lines left out since the last one; `None` when it is left out
    /// (and counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`LogThrottle::admit`] at a given instant.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update of two counters.
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = state.last.is_none_or(|last| now.saturating_duration_since(last) >= self.every);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}
