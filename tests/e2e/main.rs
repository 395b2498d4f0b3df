//! End-to-end tests against the real Docker Engine. See `tests/src/lib.rs`.

mod dispatcher;
mod intake;
mod recovery;
mod running;
mod worker;
