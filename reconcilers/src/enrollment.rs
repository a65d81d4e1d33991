//! Enrollment: does the machine at this address hold the id the inventory gives it?
//!
//! A machine proves it is the one the inventory means by holding
//! `LINKOPS-<uuid>` in `/etc/linkops/client_id`. Operations and terminals are
//! only allowed on enrolled machines.

use serde::{Deserialize, Serialize};

/// Where a machine keeps its enrollment id.
pub const CLIENT_ID_PATH: &str = "/etc/linkops/client_id";

/// The content `/etc/linkops/client_id` must have for the inventory uuid.
pub fn expected_client_id(uuid: &str) -> String {
    format!("LINKOPS-{uuid}")
}

/// What reading the client id over SSH produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdReading {
    /// The file was read; its raw content.
    Content(String),
    /// The file does not exist (or is unreadable) on the machine.
    Missing,
    /// The machine could not be reached.
    Unreachable(String),
    /// The machine answered with a host key other than the known one.
    HostKeyMismatch(String),
}

/// The enrollment state of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Enrollment {
    /// Not checked yet.
    Unknown,
    Enrolled,
    Mismatch {
        expected: String,
        found: String,
    },
    MissingFile,
    Unreachable {
        error: String,
    },
    HostKeyMismatch {
        error: String,
    },
}

impl Enrollment {
    /// Every [`Enrollment::name`].
    pub const NAMES: [&'static str; 6] = [
        "unknown",
        "enrolled",
        "mismatch",
        "missing_file",
        "unreachable",
        "host_key_mismatch",
    ];

    /// The `state` the API shows, also a metric's label value.
    pub fn name(&self) -> &'static str {
        match self {
            Enrollment::Unknown => "unknown",
            Enrollment::Enrolled => "enrolled",
            Enrollment::Mismatch { .. } => "mismatch",
            Enrollment::MissingFile => "missing_file",
            Enrollment::Unreachable { .. } => "unreachable",
            Enrollment::HostKeyMismatch { .. } => "host_key_mismatch",
        }
    }

    pub fn is_enrolled(&self) -> bool {
        matches!(self, Enrollment::Enrolled)
    }
}

/// Judges a reading of the client id against the inventory's uuid.
///
/// Surrounding whitespace is ignored (files usually end with a newline); any
/// other difference is a mismatch, reported with both values.
pub fn assess(uuid: &str, reading: ClientIdReading) -> Enrollment {
    match reading {
        ClientIdReading::Content(content) => {
            let expected = expected_client_id(uuid);
            let found = content.trim();
            if found == expected {
                Enrollment::Enrolled
            } else {
                Enrollment::Mismatch {
                    expected,
                    found: found.to_owned(),
                }
            }
        }
        ClientIdReading::Missing => Enrollment::MissingFile,
        ClientIdReading::Unreachable(error) => Enrollment::Unreachable { error },
        ClientIdReading::HostKeyMismatch(error) => Enrollment::HostKeyMismatch { error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "6f1c1c9e-1f7b-4a3e-9c55-0d2a9a1b7e42";

    #[test]
    fn matching_id_with_trailing_newline_is_enrolled() {
        let reading = ClientIdReading::Content(format!("LINKOPS-{UUID}\n"));
        assert_eq!(assess(UUID, reading), Enrollment::Enrolled);
    }

    #[test]
    fn other_id_is_a_mismatch_naming_both() {
        let reading = ClientIdReading::Content("LINKOPS-someone-else\n".into());
        assert_eq!(
            assess(UUID, reading),
            Enrollment::Mismatch {
                expected: format!("LINKOPS-{UUID}"),
                found: "LINKOPS-someone-else".into(),
            }
        );
    }

    #[test]
    fn bare_uuid_without_prefix_is_a_mismatch() {
        let reading = ClientIdReading::Content(UUID.into());
        assert!(!assess(UUID, reading).is_enrolled());
    }

    #[test]
    fn failures_map_to_their_states() {
        assert_eq!(
            assess(UUID, ClientIdReading::Missing),
            Enrollment::MissingFile
        );
        assert_eq!(
            assess(UUID, ClientIdReading::Unreachable("timed out".into())),
            Enrollment::Unreachable {
                error: "timed out".into()
            }
        );
        assert_eq!(
            assess(UUID, ClientIdReading::HostKeyMismatch("changed".into())),
            Enrollment::HostKeyMismatch {
                error: "changed".into()
            }
        );
    }
}
