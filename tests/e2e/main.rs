//! End-to-end tests against the real Docker Engine. See `tests/src/lib.rs`.

mod dispatcher;
mod intake;
mod running;
mod worker;
