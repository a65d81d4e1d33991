//! Maintenance windows: when a state may apply.

use serde::{Deserialize, Serialize};

/// A maintenance window: on these days (every day when none), from one time
/// of day to another, in UTC. A window that ends before it starts runs past
/// midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Window {
    pub days: Vec<Weekday>,
    /// Minutes after midnight, UTC.
    pub from_minute: u16,
    pub to_minute: u16,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    fn of(day: jiff::civil::Weekday) -> Weekday {
        use jiff::civil::Weekday as W;
        match day {
            W::Monday => Weekday::Mon,
            W::Tuesday => Weekday::Tue,
            W::Wednesday => Weekday::Wed,
            W::Thursday => Weekday::Thu,
            W::Friday => Weekday::Fri,
            W::Saturday => Weekday::Sat,
            W::Sunday => Weekday::Sun,
        }
    }
}

const DAY_MS: i64 = 86_400_000;

impl Window {
    fn on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.contains(&day)
    }

    /// Whether `at_ms` falls inside the window.
    pub fn contains(&self, at_ms: i64) -> bool {
        let (day, minute) = day_and_minute(at_ms);
        let (from, to) = (self.from_minute, self.to_minute);
        if from < to {
            self.on(day) && (from..to).contains(&minute)
        } else {
            let yesterday = day_and_minute(at_ms - DAY_MS).0;
            (self.on(day) && minute >= from) || (self.on(yesterday) && minute < to)
        }
    }

    /// The next time the window opens after `at_ms` (within a week).
    fn next_opening(&self, at_ms: i64) -> Option<i64> {
        let midnight = at_ms - at_ms.rem_euclid(DAY_MS);
        (0..=7)
            .map(|days| midnight + days * DAY_MS + i64::from(self.from_minute) * 60_000)
            .find(|&opens| opens > at_ms && self.on(day_and_minute(opens).0))
    }
}

fn day_and_minute(at_ms: i64) -> (Weekday, u16) {
    let day = jiff::Timestamp::from_millisecond(at_ms)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).weekday())
        .unwrap_or(jiff::civil::Weekday::Thursday);
    let minute = (at_ms.rem_euclid(DAY_MS) / 60_000) as u16;
    (Weekday::of(day), minute)
}

/// Whether applying is allowed at `at_ms`, and if not, when it next is.
pub fn window_at(windows: &[Window], at_ms: i64) -> Result<(), Option<i64>> {
    if windows.is_empty() || windows.iter().any(|w| w.contains(at_ms)) {
        return Ok(());
    }
    Err(windows.iter().filter_map(|w| w.next_opening(at_ms)).min())
}
