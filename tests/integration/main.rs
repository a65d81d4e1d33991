//! The integration tests: the daemon, the binary and the CLI through real sockets, real `sshd`
//! test hosts and real Git repositories.
//!
//! One test binary rather than one per file: every binary links the whole daemon, so a binary per
//! file multiplies link time and disk use (sixteen ~300 MB debug binaries filled a CI disk).
//! Run one area with `cargo test --test integration terminal::`.

mod support;

mod api_auth;
mod approvals;
mod audit;
mod certificates;
mod cli;
mod demo;
mod enroll;
mod exactly_once;
mod facts;
mod fleet;
mod forge;
mod fuzz;
mod git_sync;
mod grants;
mod hostile;
mod inventory;
mod metrics;
mod openapi;
mod operations;
mod pictures;
mod replicas;
mod schedules;
mod second_factor;
mod secrets;
mod serve;
mod ssh;
mod sso;
mod states;
mod store;
mod tables;
mod terminal;
mod tidy;
mod tokens;
mod triggers;
mod validate;
