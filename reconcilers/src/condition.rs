//! Status conditions in the Flux/kstatus style: `Ready`, `Reconciling`, `Stalled`.
//!
//! A condition's `last_transition_ms` changes only when its status does, so
//! it tells since when a machine has been down, not when it was last looked at.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionKind {
    /// The object is as desired (a machine: reachable and enrolled).
    Ready,
    /// LinkOps is working on it right now.
    Reconciling,
    /// It cannot progress without a person (a changed host key, a wrong client id).
    Stalled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionKind,
    pub status: ConditionStatus,
    /// CamelCase, machine-readable.
    pub reason: String,
    /// For people.
    pub message: String,
    pub last_transition_ms: i64,
}

/// Sets a condition, keeping its transition time when the status is unchanged.
pub fn set(
    conditions: &mut Vec<Condition>,
    kind: ConditionKind,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    now_ms: i64,
) {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.kind == kind) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_ms = now_ms;
            }
            existing.status = status;
            existing.reason = reason.to_owned();
            existing.message = message;
        }
        None => conditions.push(Condition {
            kind,
            status,
            reason: reason.to_owned(),
            message,
            last_transition_ms: now_ms,
        }),
    }
}

/// The condition of a kind, if set.
pub fn get(conditions: &[Condition], kind: ConditionKind) -> Option<&Condition> {
    conditions.iter().find(|c| c.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            ConditionKind::Ready,
            ConditionStatus::False,
            "Unreachable",
            "down",
            100,
        );
        set(
            &mut conditions,
            ConditionKind::Ready,
            ConditionStatus::False,
            "Unreachable",
            "still down",
            200,
        );
        let ready = get(&conditions, ConditionKind::Ready).unwrap();
        assert_eq!(
            (ready.last_transition_ms, ready.message.as_str()),
            (100, "still down")
        );
        set(
            &mut conditions,
            ConditionKind::Ready,
            ConditionStatus::True,
            "Enrolled",
            "up",
            300,
        );
        assert_eq!(
            get(&conditions, ConditionKind::Ready)
                .unwrap()
                .last_transition_ms,
            300
        );
        assert_eq!(conditions.len(), 1);
    }
}
