//! The config repository: reading a revision's files, and (`sync`) following the remote.

mod files;
pub mod mirror;
pub mod plans;
pub mod propose;
pub mod sync;
mod watch;
pub mod webhook;

pub use files::{Error as FilesError, read_dir};
