//! LinkOps: a declarative GitOps reconciler for fleets of Linux machines reached over SSH.
//!
//! See `ARCHITECTURE.md` for the code map. The binary (`src/main.rs`) only
//! parses the command line and calls into this library.

pub mod access;
pub mod api;
pub mod auth;
pub mod authority;
pub mod blocking;
pub mod client;
pub mod config;
pub mod contract;
pub mod controller;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fleet;
pub mod git;
pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod offline;
pub mod operations;
pub mod pictures;
pub mod replica;
pub mod schedules;
pub mod sealed;
pub mod secrets;
pub mod server;
pub mod ssh;
pub mod store;
pub mod tables;
pub mod telemetry;
pub mod terminal;
