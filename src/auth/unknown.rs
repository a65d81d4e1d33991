//! Failed-login counters for names that have no account.
//!
//! They lock like a real account's (so lockout does not reveal which names
//! exist), but anyone can submit any name: they live in memory, expire after
//! the lockout duration and are capped, so no stream of invented names grows
//! the daemon or the store.

use std::collections::HashMap;

use crate::store::LoginFailures;

pub struct UnknownNames {
    failures: HashMap<String, LoginFailures>,
    cap: usize,
    /// How long a failure is remembered (the lockout duration).
    window_ms: i64,
}

impl UnknownNames {
    pub fn new(cap: usize, window_ms: i64) -> UnknownNames {
        UnknownNames {
            failures: HashMap::new(),
            cap: cap.max(1),
            window_ms,
        }
    }

    pub fn get(&self, name: &str) -> Option<LoginFailures> {
        self.failures.get(name).copied()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Sets the counters of `name`; at the cap, expired entries go first, then the oldest.
    pub fn put(&mut self, name: &str, failures: LoginFailures, now_ms: i64) {
        if !self.failures.contains_key(name) && self.failures.len() >= self.cap {
            let window = self.window_ms;
            self.failures.retain(|_, f| {
                now_ms - f.last_failure_ms < window
                    || f.locked_until_ms.is_some_and(|until| until > now_ms)
            });
            if self.failures.len() >= self.cap
                && let Some(oldest) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, f)| f.last_failure_ms)
                    .map(|(name, _)| name.clone())
            {
                self.failures.remove(&oldest);
            }
        }
        self.failures.insert(name.to_owned(), failures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_at(ms: i64) -> LoginFailures {
        LoginFailures {
            count: 1,
            last_failure_ms: ms,
            locked_until_ms: None,
        }
    }

    #[test]
    fn the_map_never_grows_past_its_cap_and_forgets_the_oldest_first() {
        let mut names = UnknownNames::new(3, 60_000);
        for (i, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            names.put(name, failed_at(i as i64), i as i64);
        }
        assert_eq!(names.len(), 3);
        assert!(names.get("a").is_none() && names.get("b").is_none());
        assert!(names.get("e").is_some());
    }

    #[test]
    fn expired_counters_make_room_before_live_ones_go() {
        let mut names = UnknownNames::new(2, 1_000);
        names.put("old", failed_at(0), 0);
        names.put("live", failed_at(5_000), 5_000);
        names.put("new", failed_at(5_100), 5_100);
        assert!(names.get("old").is_none());
        assert!(names.get("live").is_some() && names.get("new").is_some());
    }
}
