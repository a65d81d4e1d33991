//! The config repository: reading a revision's files, and (`sync`) following the remote.

mod files;

pub use files::{Error as FilesError, read_dir};
