//! Operations: one script run across a set of machines, and its per-machine results.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::certificate::CertificateLogin;
use crate::rollout::{Progress, Rollout};
use crate::script::ParamValue;

/// The state of a whole operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    Running,
    Succeeded,
    Failed,
    PartiallyFailed,
    Stopped,
    /// The daemon stopped while the operation ran; nothing is re-run.
    Interrupted,
}

impl OperationState {
    pub const ALL: [OperationState; 7] = [
        OperationState::Pending,
        OperationState::Running,
        OperationState::Succeeded,
        OperationState::Failed,
        OperationState::PartiallyFailed,
        OperationState::Stopped,
        OperationState::Interrupted,
    ];

    /// Whether it is an end state (nothing more runs).
    pub fn is_finished(self) -> bool {
        !matches!(self, OperationState::Pending | OperationState::Running)
    }

    /// The name the API uses, also a metric's label value.
    pub fn name(self) -> &'static str {
        match self {
            OperationState::Pending => "pending",
            OperationState::Running => "running",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
            OperationState::PartiallyFailed => "partially_failed",
            OperationState::Stopped => "stopped",
            OperationState::Interrupted => "interrupted",
        }
    }
}

/// The state of one machine within an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostState {
    Pending,
    Running,
    Succeeded,
    /// A non-zero exit, a signal, or an error before the script could run.
    Failed {
        exit_code: Option<u32>,
        signal: Option<String>,
        error: Option<String>,
    },
    /// Ended at its timeout.
    Timeout {
        /// The machine never confirmed the end (it stopped answering: a
        /// partition?); the daemon gave up waiting after a fixed grace.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unconfirmed: bool,
    },
    Skipped {
        reason: String,
    },
    /// Ended by a stop.
    Stopped {
        /// As for `timeout`: the end was never confirmed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unconfirmed: bool,
    },
    Interrupted,
    /// Never started: the operation's rollout halted first.
    Held {
        reason: String,
    },
}

/// Who asked for an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Requester {
    User {
        name: String,
    },
    RunRequest {
        id: String,
        revision: String,
    },
    /// A declared state's apply, for the revision that declared its content.
    State {
        id: String,
        revision: String,
    },
    /// A schedule's fire, due at `due_ms`, as the revision declared it.
    Schedule {
        name: String,
        due_ms: i64,
        revision: String,
    },
    /// An inbound trigger's request (an alert, say), as the revision declared the trigger.
    Trigger {
        name: String,
        /// The alert's fingerprint, when Alertmanager gave one.
        alert: Option<String>,
        revision: String,
    },
}

impl Requester {
    /// Who asked, in a word: the user's name, `run:<id>`, `state:<id>`,
    /// `schedule:<name>` or `trigger:<name>`.
    pub fn label(&self) -> String {
        match self {
            Requester::User { name } => name.clone(),
            Requester::RunRequest { id, .. } => format!("run:{id}"),
            Requester::State { id, .. } => format!("state:{id}"),
            Requester::Schedule { name, .. } => format!("schedule:{name}"),
            Requester::Trigger { name, .. } => format!("trigger:{name}"),
        }
    }
}

/// An operation as recorded. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: u64,
    pub script: String,
    pub params: BTreeMap<String, ParamValue>,
    pub machines: Vec<String>,
    pub requested_by: Requester,
    pub state: OperationState,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Its hosts ran in these batches (canaries first), halting as it says.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// The operation whose failed, timed-out and interrupted machines it runs again.
    #[serde(default)]
    pub retry_of: Option<u64>,
    /// The secrets its `secret` parameters gave the script, by name (never a value).
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// One machine's part in an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostResult {
    pub machine_id: String,
    pub state: HostState,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The certificate its script's login presented (none with a static key).
    #[serde(default)]
    pub certificate: Option<CertificateLogin>,
}

impl HostState {
    /// The `state` the API shows.
    pub fn name(&self) -> &'static str {
        match self {
            HostState::Pending => "pending",
            HostState::Running => "running",
            HostState::Succeeded => "succeeded",
            HostState::Failed { .. } => "failed",
            HostState::Timeout { .. } => "timeout",
            HostState::Skipped { .. } => "skipped",
            HostState::Stopped { .. } => "stopped",
            HostState::Interrupted => "interrupted",
            HostState::Held { .. } => "held",
        }
    }

    /// Whether a retry runs this machine again: it failed, timed out or was interrupted.
    pub fn is_retried(&self) -> bool {
        matches!(
            self,
            HostState::Failed { .. } | HostState::Timeout { .. } | HostState::Interrupted
        )
    }

    /// Whether this host's part is over.
    pub fn is_final(&self) -> bool {
        !matches!(self, HostState::Pending | HostState::Running)
    }
}

impl Progress {
    /// Counts a host's end into a rollout: a success, or a failure (a
    /// non-zero exit or a timeout); stops and skips are neither.
    pub fn count(&mut self, host: &HostState) {
        match host {
            HostState::Succeeded => self.succeeded += 1,
            HostState::Failed { .. } | HostState::Timeout { .. } => self.failed += 1,
            _ => {}
        }
    }
}

/// The state of a finished operation, from its hosts' states.
///
/// Everything that ran succeeded and nothing was skipped: succeeded. Nothing
/// succeeded: failed. Otherwise partially failed. Stops and interruptions
/// win over both, since the operation did not run to its end.
pub fn summarize(hosts: &[HostState]) -> OperationState {
    if hosts.iter().any(|h| matches!(h, HostState::Interrupted)) {
        return OperationState::Interrupted;
    }
    if hosts.iter().any(|h| matches!(h, HostState::Stopped { .. })) {
        return OperationState::Stopped;
    }
    let succeeded = hosts
        .iter()
        .filter(|h| matches!(h, HostState::Succeeded))
        .count();
    if succeeded == hosts.len() && succeeded > 0 {
        OperationState::Succeeded
    } else if succeeded == 0 {
        OperationState::Failed
    } else {
        OperationState::PartiallyFailed
    }
}

/// Which output stream a chunk came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Something that happened in an operation, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OperationEvent {
    /// A piece of a machine's output. Chunks end on UTF-8 character
    /// boundaries when the output is text.
    Output {
        machine_id: String,
        stream: Stream,
        /// Base64 when serialised: output is bytes, and JSON arrays of numbers are four times larger.
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// A machine's part changed state.
    Host {
        machine_id: String,
        state: HostState,
    },
    /// The operation changed state.
    Operation { state: OperationState },
    /// Nothing follows.
    End { state: OperationState },
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// An event as recorded: numbered from 1 within its operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub seq: u64,
    pub at_ms: i64,
    pub event: OperationEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_named_as_the_api_names_it() {
        for state in OperationState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.name());
        }
        let tagged = |value: serde_json::Value| value["state"].as_str().unwrap().to_owned();
        let unconfirmed = false;
        let hosts = [
            HostState::Pending,
            HostState::Running,
            HostState::Succeeded,
            HostState::Failed {
                exit_code: Some(1),
                signal: None,
                error: None,
            },
            HostState::Timeout { unconfirmed },
            HostState::Skipped { reason: "r".into() },
            HostState::Stopped { unconfirmed },
            HostState::Interrupted,
        ];
        for state in hosts {
            assert_eq!(tagged(serde_json::to_value(&state).unwrap()), state.name());
        }
        use crate::enrollment::Enrollment;
        use crate::machine::Health;
        let error = String::from("e");
        let healths = [
            Health::Unknown,
            Health::Reachable { latency_ms: 1 },
            Health::Unreachable {
                error: error.clone(),
            },
        ];
        for health in &healths {
            assert_eq!(tagged(serde_json::to_value(health).unwrap()), health.name());
        }
        assert_eq!(healths.map(|h| h.name()), Health::NAMES);
        let enrollments = [
            Enrollment::Unknown,
            Enrollment::Enrolled,
            Enrollment::Mismatch {
                expected: "a".into(),
                found: "b".into(),
            },
            Enrollment::MissingFile,
            Enrollment::Unreachable {
                error: error.clone(),
            },
            Enrollment::HostKeyMismatch { error },
        ];
        for enrollment in &enrollments {
            let name = tagged(serde_json::to_value(enrollment).unwrap());
            assert_eq!(name, enrollment.name());
        }
        assert_eq!(enrollments.map(|e| e.name()), Enrollment::NAMES);
    }

    #[test]
    fn output_bytes_are_stored_as_base64_and_read_back() {
        let event = OperationEvent::Output {
            machine_id: "m".into(),
            stream: Stream::Stdout,
            data: vec![0xff, b'x', 0],
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""data":"/3gA""#), "{json}");
        assert_eq!(
            serde_json::from_str::<OperationEvent>(&json).unwrap(),
            event
        );
    }

    #[test]
    fn summaries() {
        let failed = HostState::Failed {
            exit_code: Some(1),
            signal: None,
            error: None,
        };
        let skipped = HostState::Skipped {
            reason: "not enrolled".into(),
        };
        let cases = [
            (
                vec![HostState::Succeeded, HostState::Succeeded],
                OperationState::Succeeded,
            ),
            (
                vec![HostState::Succeeded, failed.clone()],
                OperationState::PartiallyFailed,
            ),
            (
                vec![HostState::Succeeded, skipped.clone()],
                OperationState::PartiallyFailed,
            ),
            (
                vec![failed.clone(), HostState::Timeout { unconfirmed: false }],
                OperationState::Failed,
            ),
            (vec![skipped.clone()], OperationState::Failed),
            (vec![], OperationState::Failed),
            (
                vec![
                    HostState::Succeeded,
                    HostState::Stopped { unconfirmed: true },
                ],
                OperationState::Stopped,
            ),
            (
                vec![
                    HostState::Stopped { unconfirmed: false },
                    HostState::Interrupted,
                ],
                OperationState::Interrupted,
            ),
        ];
        for (hosts, expected) in cases {
            assert_eq!(summarize(&hosts), expected, "{hosts:?}");
        }
    }
}
