//! Pictures of the fleet: what the console draws, aggregated by the daemon
//! so that a fleet of 10,000 machines is a few hundred numbers, never 10,000
//! series. Here: the hourly rollups the leader samples into (machines by
//! health, each declared state's machines by standing), series over a span
//! read from them or from one machine's health history, operation durations
//! per script, distributions of facts, and a state's machines by tag.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::facts::{FactValue, Facts};
use crate::machine::Machine;
use crate::operation::{Operation, OperationState};

pub const HOUR_MS: i64 = 3_600_000;
/// How long rollups are kept: the longest span and a day more.
pub const KEEP_MS: i64 = 8 * 24 * HOUR_MS;
/// Most values one distribution names; the rest are counted as `other`.
pub const TOP_VALUES: usize = 12;
/// Most operations a durations picture reads (the newest ones in its span).
pub const MAX_OPERATIONS: usize = 20_000;

/// The series the leader samples: machines by health…
pub const AVAILABILITY: &str = "availability";

/// …and each declared state's machines by standing.
pub fn compliance_series(state_id: &str) -> String {
    format!("state/{state_id}")
}

/// What a picture covers, ending now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Span {
    #[default]
    Day,
    Week,
}

impl Span {
    pub fn ms(self) -> i64 {
        match self {
            Span::Day => 24 * HOUR_MS,
            Span::Week => 7 * 24 * HOUR_MS,
        }
    }

    /// A machine's points: 48 half-hours a day, 84 two-hours a week.
    pub fn machine_bucket_ms(self) -> i64 {
        match self {
            Span::Day => HOUR_MS / 2,
            Span::Week => 2 * HOUR_MS,
        }
    }
}

/// The hour `at_ms` falls in (its start).
pub fn hour_of(at_ms: i64) -> i64 {
    at_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// One hour of a series: how many samples it took and, by category, the
/// sum of the counts they saw (their mean: `sums[c] / samples`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    pub samples: u32,
    pub sums: BTreeMap<String, u64>,
}

impl Rollup {
    /// Adds one sample's counts.
    pub fn add(&mut self, counts: &BTreeMap<String, u64>) {
        self.samples = self.samples.saturating_add(1);
        for (category, count) in counts {
            let sum = self.sums.entry(category.clone()).or_default();
            *sum = sum.saturating_add(*count);
        }
    }
}

/// A point of a series: its bucket's start, and by category the mean count
/// (none: no sample fell in it — a gap, not a zero).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Point {
    pub at_ms: i64,
    pub values: Option<BTreeMap<String, f64>>,
}

/// The hourly points of the `span` ending at `now_ms`, from a series'
/// rollups (by hour): every hour present, gaps where nothing was sampled.
pub fn hourly(rollups: &BTreeMap<i64, Rollup>, span: Span, now_ms: i64) -> Vec<Point> {
    let last = hour_of(now_ms);
    let first = last - span.ms() + HOUR_MS;
    (0..span.ms() / HOUR_MS)
        .map(|n| first + n * HOUR_MS)
        .map(|at_ms| Point {
            at_ms,
            values: (rollups.get(&at_ms))
                .filter(|rollup| rollup.samples > 0)
                .map(|rollup| {
                    (rollup.sums.iter())
                        .map(|(category, sum)| {
                            (category.clone(), *sum as f64 / f64::from(rollup.samples))
                        })
                        .collect()
                }),
        })
        .collect()
}

/// One health check as a machine's picture reads it: when, and its latency
/// when the machine answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub at_ms: i64,
    pub latency_ms: Option<u64>,
}

/// A bucket of one machine's checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachinePoint {
    pub at_ms: i64,
    pub checks: u32,
    /// Checks it answered.
    pub reachable: u32,
    /// Mean and highest SSH latency of those (none: it never answered).
    pub latency_ms: Option<f64>,
    pub latency_max_ms: Option<u64>,
}

/// A machine's reachability and latency over `span`, in buckets
/// ([`Span::machine_bucket_ms`]); a bucket without checks has `checks: 0`.
pub fn machine_series(checks: &[Check], span: Span, now_ms: i64) -> Vec<MachinePoint> {
    let bucket = span.machine_bucket_ms();
    let end = now_ms.div_euclid(bucket) * bucket + bucket;
    let start = end - span.ms();
    let mut points: Vec<MachinePoint> = (0..span.ms() / bucket)
        .map(|n| MachinePoint {
            at_ms: start + n * bucket,
            checks: 0,
            reachable: 0,
            latency_ms: None,
            latency_max_ms: None,
        })
        .collect();
    let mut latency_sums = vec![0u64; points.len()];
    for check in checks.iter().filter(|c| (start..end).contains(&c.at_ms)) {
        let index = usize::try_from((check.at_ms - start) / bucket).unwrap_or(0);
        let point = &mut points[index];
        point.checks += 1;
        if let Some(latency) = check.latency_ms {
            point.reachable += 1;
            latency_sums[index] = latency_sums[index].saturating_add(latency);
            point.latency_max_ms = Some(point.latency_max_ms.unwrap_or(0).max(latency));
        }
    }
    for (point, sum) in points.iter_mut().zip(latency_sums) {
        if point.reachable > 0 {
            point.latency_ms = Some(sum as f64 / f64::from(point.reachable));
        }
    }
    points
}

/// How long one script's operations took over a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Durations {
    pub script: String,
    pub operations: u32,
    /// Of those, how many did not succeed on every machine.
    pub failed: u32,
    pub median_ms: u64,
    pub p90_ms: u64,
    pub max_ms: u64,
}

/// Durations per script of the operations that finished since `since_ms`,
/// the scripts run most first.
pub fn durations<'a>(
    operations: impl IntoIterator<Item = &'a Operation>,
    since_ms: i64,
) -> Vec<Durations> {
    let mut by_script: BTreeMap<&str, (Vec<u64>, u32)> = BTreeMap::new();
    for operation in operations {
        let Some(finished) = operation.finished_at_ms.filter(|at| *at >= since_ms) else {
            continue;
        };
        let took = u64::try_from(finished - operation.created_at_ms).unwrap_or(0);
        let (took_all, failed) = by_script.entry(&operation.script).or_default();
        took_all.push(took);
        if operation.state != OperationState::Succeeded {
            *failed += 1;
        }
    }
    let mut all: Vec<Durations> = by_script
        .into_iter()
        .map(|(script, (mut took, failed))| {
            took.sort_unstable();
            let at = |fraction: f64| took[((took.len() - 1) as f64 * fraction).round() as usize];
            Durations {
                script: script.to_owned(),
                operations: u32::try_from(took.len()).unwrap_or(u32::MAX),
                failed,
                median_ms: at(0.5),
                p90_ms: at(0.9),
                max_ms: *took.last().expect("one at least"),
            }
        })
        .collect();
    all.sort_by(|a, b| {
        b.operations
            .cmp(&a.operations)
            .then(a.script.cmp(&b.script))
    });
    all
}

/// How many machines have each value of a fact, the most common first; past
/// [`TOP_VALUES`] the rest are `other`, machines without it `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Distribution {
    pub fact: String,
    pub values: Vec<(String, u32)>,
}

/// The facts whose distributions the fleet's picture shows; pending updates
/// are grouped (`0`, `1-9`, `10-49`, `50+`) rather than one bar per count.
pub const DISTRIBUTED: &[&str] = &[
    "os",
    "kernel",
    "arch",
    "updates",
    "security_updates",
    "reboot_required",
];

pub fn distributions<'a>(facts: impl IntoIterator<Item = &'a Facts>) -> Vec<Distribution> {
    let mut counts: BTreeMap<&str, BTreeMap<String, u32>> = BTreeMap::new();
    for facts in facts {
        for fact in DISTRIBUTED {
            let value = match (facts.get(*fact), *fact) {
                (Some(FactValue::Int(n)), "updates" | "security_updates") => match n {
                    0 => "0",
                    1..=9 => "1-9",
                    10..=49 => "10-49",
                    _ => "50+",
                }
                .to_owned(),
                (Some(value), _) => value.to_string(),
                (None, _) => "unknown".to_owned(),
            };
            *counts.entry(fact).or_default().entry(value).or_default() += 1;
        }
    }
    DISTRIBUTED
        .iter()
        .map(|fact| {
            let mut values: Vec<(String, u32)> = counts
                .remove(fact)
                .unwrap_or_default()
                .into_iter()
                .collect();
            values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            if values.len() > TOP_VALUES {
                let other: u32 = values[TOP_VALUES - 1..].iter().map(|(_, n)| n).sum();
                values.truncate(TOP_VALUES - 1);
                values.push(("other".to_owned(), other));
            }
            Distribution {
                fact: (*fact).to_owned(),
                values,
            }
        })
        .collect()
}

/// A state's machines by tag: for each tag of its machines (and `untagged`),
/// how many stand each way (`in_sync`, `drifted`, …).
pub fn by_tag<'a>(
    standings: impl IntoIterator<Item = (&'a str, &'a str)>,
    machine: impl Fn(&str) -> Option<&'a Machine>,
) -> BTreeMap<String, BTreeMap<String, u32>> {
    let mut grid: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for (machine_id, standing) in standings {
        let tags: BTreeSet<&str> = match machine(machine_id) {
            Some(m) if !m.tags.is_empty() => m.tags.iter().map(String::as_str).collect(),
            _ => BTreeSet::from(["untagged"]),
        };
        for tag in tags {
            *grid
                .entry(tag.to_owned())
                .or_default()
                .entry(standing.to_owned())
                .or_default() += 1;
        }
    }
    grid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::machine;

    const NOW: i64 = 1_800_000_000_000 + 40 * 60_000;

    #[test]
    fn hourly_points_average_their_samples_and_leave_gaps_where_none_were_taken() {
        let mut rollups = BTreeMap::new();
        let mut hour = Rollup::default();
        hour.add(&BTreeMap::from([
            ("reachable".into(), 10),
            ("unreachable".into(), 0),
        ]));
        hour.add(&BTreeMap::from([
            ("reachable".into(), 8),
            ("unreachable".into(), 2),
        ]));
        rollups.insert(hour_of(NOW), hour);
        let points = hourly(&rollups, Span::Day, NOW);
        assert_eq!(points.len(), 24);
        assert_eq!(points[23].at_ms, hour_of(NOW));
        let last = points[23].values.as_ref().unwrap();
        assert_eq!((last["reachable"], last["unreachable"]), (9.0, 1.0));
        assert!(points[..23].iter().all(|p| p.values.is_none()));
        assert_eq!(hourly(&rollups, Span::Week, NOW).len(), 168);
    }

    #[test]
    fn a_machine_s_checks_fall_in_buckets_with_their_reachability_and_latency() {
        let checks = [
            Check {
                at_ms: NOW - 60_000,
                latency_ms: Some(10),
            },
            Check {
                at_ms: NOW - 30_000,
                latency_ms: Some(30),
            },
            Check {
                at_ms: NOW - 20_000,
                latency_ms: None,
            },
            Check {
                at_ms: NOW - 2 * 24 * HOUR_MS,
                latency_ms: Some(5),
            },
        ];
        let points = machine_series(&checks, Span::Day, NOW);
        assert_eq!(points.len(), 48);
        let last = points.last().unwrap();
        assert_eq!((last.checks, last.reachable), (3, 2));
        assert_eq!(
            (last.latency_ms, last.latency_max_ms),
            (Some(20.0), Some(30))
        );
        assert_eq!(
            points.iter().map(|p| p.checks).sum::<u32>(),
            3,
            "older checks are outside the span"
        );
    }

    #[test]
    fn durations_per_script_give_median_p90_and_failures() {
        let operation = |id: u64, script: &str, took: i64, state| Operation {
            id,
            script: script.into(),
            params: BTreeMap::new(),
            machines: vec![],
            requested_by: crate::operation::Requester::User { name: "a".into() },
            state,
            created_at_ms: NOW - took,
            finished_at_ms: Some(NOW),
            rollout: None,
            retry_of: None,
            secrets: vec![],
        };
        let mut all: Vec<Operation> = (1..=10)
            .map(|n| operation(n, "backup", n as i64 * 1000, OperationState::Succeeded))
            .collect();
        all.push(operation(11, "reboot", 500, OperationState::Failed));
        let mut old = operation(12, "reboot", 500, OperationState::Succeeded);
        old.finished_at_ms = Some(NOW - 2 * 24 * HOUR_MS);
        all.push(old);
        let shown = durations(&all, NOW - Span::Day.ms());
        assert_eq!(shown.len(), 2);
        assert_eq!(
            (
                shown[0].script.as_str(),
                shown[0].operations,
                shown[0].median_ms,
                shown[0].p90_ms,
                shown[0].max_ms
            ),
            ("backup", 10, 6000, 9000, 10000)
        );
        assert_eq!((shown[1].operations, shown[1].failed), (1, 1));
    }

    #[test]
    fn distributions_count_values_group_updates_and_fold_the_long_tail() {
        let facts: Vec<Facts> = (0..30)
            .map(|n| {
                Facts::from([
                    ("kernel".to_owned(), FactValue::Text(format!("6.1.{n}"))),
                    (
                        "os".to_owned(),
                        FactValue::Text(if n < 20 { "debian-12" } else { "debian-11" }.into()),
                    ),
                    ("updates".to_owned(), FactValue::Int(n)),
                ])
            })
            .collect();
        let shown = distributions(&facts);
        let of = |fact: &str| {
            shown
                .iter()
                .find(|d| d.fact == fact)
                .unwrap()
                .values
                .clone()
        };
        assert_eq!(
            of("os"),
            [("debian-12".into(), 20), ("debian-11".into(), 10)]
        );
        let kernels = of("kernel");
        assert_eq!(kernels.len(), TOP_VALUES);
        assert_eq!(
            kernels.last().unwrap(),
            &("other".to_owned(), 30 - (TOP_VALUES as u32 - 1))
        );
        assert_eq!(
            of("updates"),
            [("10-49".into(), 20), ("1-9".into(), 9), ("0".into(), 1)]
        );
        assert_eq!(of("arch"), [("unknown".into(), 30)]);
    }

    #[test]
    fn a_state_s_machines_are_counted_under_each_of_their_tags() {
        let machines = [
            machine("a", &["web", "eu"]),
            machine("b", &["web"]),
            machine("c", &[]),
        ];
        let find = |id: &str| machines.iter().find(|m| m.id == id);
        let grid = by_tag([("a", "in_sync"), ("b", "drifted"), ("c", "in_sync")], find);
        assert_eq!(
            grid["web"],
            BTreeMap::from([("in_sync".into(), 1), ("drifted".into(), 1)])
        );
        assert_eq!(grid["eu"]["in_sync"], 1);
        assert_eq!(grid["untagged"]["in_sync"], 1);
    }
}
