//! `berth`: the daemon and the operator CLI.
//!
//! This crate owns the HTTP side (webhook verification, trigger and trust
//! policy, health and status routes), the journal, and the operator commands.
//! It drives containers only through `runner` and `dispatcher`, and never names
//! bollard or redb.

pub mod cli;
pub mod config;
pub mod connections;
pub mod daemon;
pub mod dashboard;
pub mod demo;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod log_writer;
pub mod ps;
pub mod server;
pub mod setup;
pub mod status;
pub mod terminal;
pub mod throttle;

#[cfg(test)]
mod tests;
