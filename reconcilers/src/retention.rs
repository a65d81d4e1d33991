//! What the store keeps of a machine's health history: every sample while it
//! is recent, then one per bucket and every change of state, then nothing —
//! so its size is bounded by settings, not by how long the daemon has run;
//! and how long the records of a declared state outlive its leaving Git (or
//! a machine's leaving its targets).

use std::time::Duration;

/// How a machine's health history is thinned (`[retention]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRetention {
    /// Every sample younger than this is kept.
    pub full: Duration,
    /// Older ones are thinned to the first of each bucket of this length,
    /// and every sample whose state differs from the one before it…
    pub bucket: Duration,
    /// …until they are this old, when they go.
    pub window: Duration,
    /// At most this many samples per machine (a flapping machine's
    /// transitions included); the oldest go first.
    pub max_samples: usize,
}

/// One stored sample, as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: i64,
    /// Its health or enrollment differs from the sample before it.
    pub changed: bool,
}

/// The samples to remove (their times), of one machine's samples oldest first.
pub fn expired(samples: &[Sample], now_ms: i64, policy: &HealthRetention) -> Vec<i64> {
    let ms = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    let full_from = now_ms.saturating_sub(ms(policy.full));
    let window_from = now_ms.saturating_sub(ms(policy.window));
    let bucket = ms(policy.bucket).max(1);
    let mut kept = Vec::with_capacity(samples.len());
    let mut removed = Vec::new();
    let mut last_bucket = None;
    for sample in samples {
        let keep = if sample.at_ms < window_from {
            false
        } else if sample.at_ms >= full_from || sample.changed {
            true
        } else {
            let this = sample.at_ms.div_euclid(bucket);
            last_bucket != Some(this)
        };
        if keep {
            last_bucket = Some(sample.at_ms.div_euclid(bucket));
            kept.push(sample.at_ms);
        } else {
            removed.push(sample.at_ms);
        }
    }
    let over = kept.len().saturating_sub(policy.max_samples);
    removed.extend_from_slice(&kept[..over]);
    removed.sort_unstable();
    removed
}

/// Whether a declared state's record (or its record on one machine) goes:
/// Git no longer declares the state (or its targets no longer select the
/// machine), and nothing has happened to the record for `grace` — long
/// enough to look back at what was there, not for ever.
pub fn departed(declared: bool, last_activity_ms: i64, grace: Duration, now_ms: i64) -> bool {
    let grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    !declared && now_ms.saturating_sub(last_activity_ms) >= grace
}

/// When a state's record on a machine last changed: its standing, its last
/// check, its last apply.
pub fn last_activity(target: &crate::state::Target) -> i64 {
    let check = target.check.as_ref().map(|c| c.at_ms);
    let apply = target
        .apply
        .as_ref()
        .map(|a| a.finished_at_ms.unwrap_or(a.started_at_ms));
    [Some(target.since_ms), check, apply]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(target.since_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn policy(max_samples: usize) -> HealthRetention {
        HealthRetention {
            full: Duration::from_secs(3600),
            bucket: Duration::from_secs(3600),
            window: Duration::from_secs(24 * 3600),
            max_samples,
        }
    }

    fn samples(times: &[i64], changed: &[i64]) -> Vec<Sample> {
        times
            .iter()
            .map(|&at_ms| Sample {
                at_ms,
                changed: changed.contains(&at_ms),
            })
            .collect()
    }

    #[test]
    fn recent_samples_stay_older_ones_thin_to_a_bucket_and_changes_the_oldest_go() {
        let now = 100 * HOUR;
        // What, the samples' times, those that changed, the cap, and the times removed.
        type Case = (&'static str, Vec<i64>, Vec<i64>, usize, Vec<i64>);
        let cases: &[Case] = &[
            (
                "all within the full window",
                vec![now - 30 * MIN, now - MIN, now],
                vec![],
                1000,
                vec![],
            ),
            (
                "older than full: the first of each hour stays",
                vec![
                    now - 3 * HOUR,
                    now - 3 * HOUR + MIN,
                    now - 3 * HOUR + 2 * MIN,
                    now - 2 * HOUR,
                    now - 2 * HOUR + MIN,
                    now,
                ],
                vec![],
                1000,
                vec![
                    now - 3 * HOUR + MIN,
                    now - 3 * HOUR + 2 * MIN,
                    now - 2 * HOUR + MIN,
                ],
            ),
            (
                "a change of state stays, whatever its bucket",
                vec![
                    now - 3 * HOUR,
                    now - 3 * HOUR + MIN,
                    now - 3 * HOUR + 2 * MIN,
                ],
                vec![now - 3 * HOUR + MIN],
                1000,
                vec![now - 3 * HOUR + 2 * MIN],
            ),
            (
                "past the window everything goes, changes too",
                vec![now - 30 * HOUR, now - 25 * HOUR, now],
                vec![now - 30 * HOUR],
                1000,
                vec![now - 30 * HOUR, now - 25 * HOUR],
            ),
            (
                "over the cap the oldest kept go",
                vec![now - 3 * MIN, now - 2 * MIN, now - MIN, now],
                vec![],
                2,
                vec![now - 3 * MIN, now - 2 * MIN],
            ),
        ];
        for (what, times, changed, max, expected) in cases {
            let removed = expired(&samples(times, changed), now, &policy(*max));
            assert_eq!(&removed, expected, "{what}");
        }
    }

    #[test]
    fn a_day_of_minutely_samples_is_bounded_by_the_settings() {
        let now = 48 * HOUR;
        let times: Vec<i64> = (0..=48 * 60).map(|m| m * MIN).collect();
        let removed = expired(&samples(&times, &[]), now, &policy(1000));
        let kept = times.len() - removed.len();
        // 61 samples of the last hour, then one per hour for the rest of the day.
        assert_eq!(kept, 61 + 23);
    }

    #[test]
    fn departed_records_go_after_their_grace_and_declared_ones_never() {
        let day = Duration::from_secs(86_400);
        let cases = [
            (true, 0, 100 * DAY_MS, false),
            (false, 0, DAY_MS - 1, false),
            (false, 0, DAY_MS, true),
            (false, 5 * DAY_MS, 5 * DAY_MS + 1, false),
        ];
        for (declared, last, now, gone) in cases {
            assert_eq!(
                departed(declared, last, day, now),
                gone,
                "{declared} {last} {now}"
            );
        }
        let mut target = crate::state::Target::new("motd", "web1", 10);
        assert_eq!(last_activity(&target), 10);
        target.apply = Some(crate::state::ApplyRecord {
            digest: "d".into(),
            operation_id: 1,
            started_at_ms: 20,
            finished_at_ms: Some(30),
            result: crate::state::ApplyResult::Succeeded,
        });
        assert_eq!(last_activity(&target), 30);
    }

    const DAY_MS: i64 = 86_400_000;
}
