//! `berth`: the daemon and the operator CLI.
//!
//! This crate owns the HTTP side (webhook verification, trigger and trust
//! policy, health and status routes), the journal, and the operator commands.
//! It drives containers only through `dispatcher` and never names bollard.

pub mod agent_env;
pub mod cli;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod dashboard;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod events;
pub mod fake_github;
pub mod github;
pub mod journal;
pub mod metrics;
pub mod prompt;
pub mod ps;
pub mod runner;
pub mod server;
pub mod setup;
pub mod signature;
pub mod status;
pub mod tasks;
pub mod terminal;
pub mod throttle;
pub mod triggers;

#[cfg(test)]
mod tests;
