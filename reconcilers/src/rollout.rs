//! Rollouts: how many machines change at once, the canaries that must
//! succeed before the rest start, and how many failures halt the rest.
//!
//! One policy for a declared state's applies and for an operation's hosts
//! (manual runs and run-requests): batches run one after another, the first
//! of them the canaries; a halted rollout starts nothing more.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A rollout policy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Machines changed at once, after the canaries (at least 1).
    #[serde(default = "default_batch")]
    #[schemars(default = "default_batch", range(min = 1))]
    pub batch: u32,
    /// Machines changed first, alone, which must all succeed before any other starts.
    #[serde(default)]
    pub canary: u32,
    /// Failures that halt the rollout (at least 1); a failed canary halts it whatever this says.
    #[serde(default = "default_max_failures")]
    #[schemars(default = "default_max_failures", range(min = 1))]
    pub max_failures: u32,
}

fn default_batch() -> u32 {
    5
}

fn default_max_failures() -> u32 {
    1
}

impl Default for Rollout {
    /// A declared state's, when it says none: one canary, then five at a
    /// time, halted by the first failure.
    fn default() -> Rollout {
        Rollout {
            batch: default_batch(),
            canary: 1,
            max_failures: default_max_failures(),
        }
    }
}

/// What a rollout has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub succeeded: u32,
    pub failed: u32,
}

impl Rollout {
    /// What makes the policy unworkable, if anything (serde takes any number).
    pub fn problem(&self) -> Option<&'static str> {
        (self.batch == 0 || self.max_failures == 0)
            .then_some("a rollout's batch and max_failures must be at least 1")
    }

    /// Why the rollout halts after `progress`, if it does.
    pub fn halts(&self, progress: Progress) -> Option<String> {
        if progress.failed > 0 && progress.succeeded < self.canary {
            return Some(format!(
                "a canary failed ({} of {} canaries succeeded)",
                progress.succeeded, self.canary
            ));
        }
        if progress.failed >= self.max_failures.max(1) {
            return Some(format!(
                "{} machine(s) failed, max_failures is {}",
                progress.failed, self.max_failures
            ));
        }
        None
    }

    /// How many machines the next batch may have: the canaries left, or a
    /// batch; none while one is in flight or once halted.
    pub fn next_batch(&self, progress: Progress, in_flight: usize) -> usize {
        if in_flight > 0 || self.halts(progress).is_some() {
            return 0;
        }
        if progress.succeeded < self.canary {
            (self.canary - progress.succeeded) as usize
        } else {
            self.batch.max(1) as usize
        }
    }

    /// Whether the batch it would start now is of canaries.
    pub fn in_canary(&self, progress: Progress) -> bool {
        progress.succeeded < self.canary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(succeeded: u32, failed: u32) -> Progress {
        Progress { succeeded, failed }
    }

    #[test]
    fn canaries_first_then_batches_one_at_a_time() {
        let rollout = Rollout {
            batch: 3,
            canary: 2,
            max_failures: 2,
        };
        // (succeeded, failed, in flight) → next batch
        let table = [
            (0, 0, 0, 2),
            (1, 0, 0, 1),
            (2, 0, 0, 3),
            (2, 0, 3, 0),
            (5, 1, 0, 3),
            (5, 2, 0, 0),
            // A canary failed: halted, even below max_failures.
            (1, 1, 0, 0),
        ];
        for (succeeded, failed, in_flight, expected) in table {
            assert_eq!(
                rollout.next_batch(progress(succeeded, failed), in_flight),
                expected,
                "succeeded {succeeded}, failed {failed}, in flight {in_flight}"
            );
        }
    }

    #[test]
    fn a_halt_says_why() {
        let rollout = Rollout::default();
        assert_eq!(rollout.halts(progress(0, 0)), None);
        assert_eq!(
            rollout.halts(progress(0, 1)).unwrap(),
            "a canary failed (0 of 1 canaries succeeded)"
        );
        assert_eq!(
            rollout.halts(progress(4, 1)).unwrap(),
            "1 machine(s) failed, max_failures is 1"
        );
        let patient = Rollout {
            max_failures: 3,
            ..Rollout::default()
        };
        assert_eq!(patient.halts(progress(4, 2)), None);
    }
}
