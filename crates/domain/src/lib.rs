//! Berth's rules, with no I/O and no runtime: what a webhook says
//! (`events`), whether GitHub sent it (`signature`), what it asks for
//! (`triggers`), the task records built from it (`tasks`), and the words the
//! agent is given (`prompt`).
//!
//! Everything here is a pure function of its inputs, so it is tested in
//! microseconds and shared by the journal, the runner and the HTTP side.

pub mod events;
pub mod prompt;
pub mod request;
pub mod signature;
pub mod tasks;
pub mod triggers;

#[cfg(test)]
mod tests;
