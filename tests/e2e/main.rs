//! End-to-end tests against the real Docker Engine. See `tests/src/lib.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "end-to-end test support: a failed unwrap is a failed test"
)]

mod agent;
mod cache;
mod check_runs;
mod claude;
mod commands;
mod deploy;
mod dispatcher;
mod engine_contract;
mod fake_kube;
mod follow_ups;
mod hardening;
mod hardening_intake;
mod hardening_journal;
mod intake;
mod kubernetes;
mod operate;
mod real_agent;
mod recovery;
mod refusals;
mod reruns;
mod running;
mod setup;
mod worker;
