//! The runner's unit tests. `words` covers how endings read; `scenarios`
//! drives a whole runner with the in-memory engine (`dispatcher`'s `fake`
//! feature) and an in-memory GitHub under paused tokio time, so each
//! cancel, deadline, outage and restart path runs in milliseconds. The
//! journal is the real one, in a temporary directory.

mod backfill;
mod clone_cache;
mod follow_ups;
mod github;
pub(crate) mod harness;
mod kept_logs;
mod progress;
mod scenarios;
mod words;
