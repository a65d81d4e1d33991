//! Lockout rules: how failed logins accumulate and when they lock a name.
//!
//! Pure functions over [`LoginFailures`]; the store keeps the counters so a
//! restart does not reset them.

use std::time::Duration;

use crate::store::LoginFailures;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Consecutive failures that lock the name.
    pub attempts: u32,
    /// How long a lock lasts; also how long a failure counts towards one.
    pub duration: Duration,
}

impl LockoutPolicy {
    fn duration_ms(&self) -> i64 {
        i64::try_from(self.duration.as_millis()).unwrap_or(i64::MAX)
    }

    /// Time left on a lock, if the name is locked at `now_ms`.
    pub fn locked(&self, failures: Option<LoginFailures>, now_ms: i64) -> Option<Duration> {
        let until = failures?.locked_until_ms?;
        (until > now_ms).then(|| Duration::from_millis(u64::try_from(until - now_ms).unwrap_or(0)))
    }

    /// The counters after one more failure at `now_ms`.
    ///
    /// Failures older than the lock duration, or from before an expired lock,
    /// no longer count: the count starts again.
    pub fn record_failure(&self, current: Option<LoginFailures>, now_ms: i64) -> LoginFailures {
        let window = self.duration_ms();
        let previous = current
            .filter(|f| now_ms - f.last_failure_ms < window)
            .filter(|f| f.locked_until_ms.is_none())
            .map_or(0, |f| f.count);
        let count = previous + 1;
        let locked_until_ms = (count >= self.attempts).then(|| now_ms.saturating_add(window));
        LoginFailures {
            count,
            last_failure_ms: now_ms,
            locked_until_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LockoutPolicy = LockoutPolicy {
        attempts: 5,
        duration: Duration::from_secs(300),
    };

    fn fail_times(n: u32, start_ms: i64, step_ms: i64) -> Option<LoginFailures> {
        (0..n).fold(None, |state, i| {
            Some(POLICY.record_failure(state, start_ms + i64::from(i) * step_ms))
        })
    }

    #[test]
    fn four_failures_do_not_lock() {
        let state = fail_times(4, 0, 1_000);
        assert_eq!(state.unwrap().count, 4);
        assert_eq!(POLICY.locked(state, 4_000), None);
    }

    #[test]
    fn fifth_failure_locks_for_the_duration() {
        let state = fail_times(5, 0, 1_000);
        let locked_at = 4_000;
        assert_eq!(state.unwrap().locked_until_ms, Some(locked_at + 300_000));
        assert_eq!(
            POLICY.locked(state, locked_at + 1_000),
            Some(Duration::from_secs(299))
        );
        assert_eq!(POLICY.locked(state, locked_at + 300_000), None);
    }

    #[test]
    fn old_failures_expire() {
        let state = fail_times(4, 0, 1_000);
        let later = POLICY.record_failure(state, 3_000 + 300_000);
        assert_eq!(later.count, 1);
        assert_eq!(later.locked_until_ms, None);
    }

    #[test]
    fn failure_after_an_expired_lock_starts_a_new_count() {
        let state = fail_times(5, 0, 1_000);
        let after = POLICY.record_failure(state, 4_000 + 300_001);
        assert_eq!(after.count, 1);
        assert_eq!(POLICY.locked(Some(after), 4_000 + 300_002), None);
    }
}
