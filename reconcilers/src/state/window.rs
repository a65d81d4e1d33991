//! Maintenance windows: when a state may apply — times of day read in the
//! state's time zone, given as data (the shell reads the tz database).

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use serde::{Deserialize, Serialize};

/// A maintenance window: on these days (every day when none), from one time
/// of day to another, in the state's zone (UTC unless it names one). A window
/// that ends before it starts runs past midnight into the next day. Daylight
/// saving as schedules have it: an opening time a spring-forward skips opens
/// at the first instant after the gap; one a fall-back repeats, at the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Window {
    pub days: Vec<Weekday>,
    /// Minutes after midnight, in the state's zone.
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

impl Window {
    fn on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.contains(&day)
    }

    /// Whether `at_ms` falls inside the window, read in `zone`.
    pub fn contains(&self, at_ms: i64, zone: &TimeZone) -> bool {
        let Some(local) = civil(at_ms, zone) else {
            return false;
        };
        let minute = (local.hour() as u16) * 60 + local.minute() as u16;
        let day = Weekday::of(local.weekday());
        let (from, to) = (self.from_minute, self.to_minute);
        if from < to {
            self.on(day) && (from..to).contains(&minute)
        } else {
            let yesterday = Weekday::of(
                local
                    .date()
                    .yesterday()
                    .map_or(local.weekday(), |d| d.weekday()),
            );
            (self.on(day) && minute >= from) || (self.on(yesterday) && minute < to)
        }
    }

    /// The next time the window opens after `at_ms` (within a week), in `zone`.
    fn next_opening(&self, at_ms: i64, zone: &TimeZone) -> Option<i64> {
        let today = civil(at_ms, zone)?.date();
        let (hour, minute) = ((self.from_minute / 60) as i8, (self.from_minute % 60) as i8);
        (0..=7)
            .filter_map(|days| today.checked_add(jiff::Span::new().days(days)).ok())
            .filter(|date| self.on(Weekday::of(date.weekday())))
            .filter_map(|date| instant(date.at(hour, minute, 0, 0), zone))
            .find(|&opens| opens > at_ms)
    }
}

/// `at_ms` as `zone`'s wall clock reads it.
fn civil(at_ms: i64, zone: &TimeZone) -> Option<DateTime> {
    let at = jiff::Timestamp::from_millisecond(at_ms).ok()?;
    Some(zone.to_datetime(at))
}

/// The instant `zone`'s wall clock shows `local`: a time a fall-back repeats
/// at its first occurrence, one a spring-forward skips at the gap's end.
fn instant(local: DateTime, zone: &TimeZone) -> Option<i64> {
    let ambiguous = zone.to_ambiguous_timestamp(local);
    let at = match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { offset } | AmbiguousOffset::Fold { before: offset, .. } => {
            offset.to_timestamp(local).ok()?
        }
        AmbiguousOffset::Gap { before, .. } => {
            // Read with the offset before the gap, the time lies past the
            // change; the change itself is the first instant after the gap.
            let past = before.to_timestamp(local).ok()?;
            zone.preceding(past).next()?.timestamp()
        }
    };
    Some(at.as_millisecond())
}

/// Whether applying is allowed at `at_ms` (windows read in `zone`), and if not, when it next is.
pub fn window_at(windows: &[Window], zone: &TimeZone, at_ms: i64) -> Result<(), Option<i64>> {
    if windows.is_empty() || windows.iter().any(|w| w.contains(at_ms, zone)) {
        return Ok(());
    }
    Err(windows
        .iter()
        .filter_map(|w| w.next_opening(at_ms, zone))
        .min())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::berlin;

    fn ms(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn at(ms: i64) -> String {
        jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    #[test]
    fn a_berlin_window_keeps_its_wall_clock_across_both_2027_changes() {
        let zone = berlin();
        // Every day 02:30–04:00, Berlin time.
        let nightly = Window {
            days: vec![],
            from_minute: 150,
            to_minute: 240,
        };
        let windows = std::slice::from_ref(&nightly);
        // Winter: 02:30 CET is 01:30Z; summer: 02:30 CEST is 00:30Z.
        assert!(nightly.contains(ms("2027-03-01T01:45:00Z"), &zone));
        assert!(!nightly.contains(ms("2027-03-01T00:45:00Z"), &zone));
        assert!(nightly.contains(ms("2027-06-01T00:45:00Z"), &zone));
        assert!(!nightly.contains(ms("2027-06-01T01:45:00Z") + 60 * 60_000, &zone));
        // 28 March: 02:30 does not exist; the window opens at 03:00 CEST (01:00Z).
        assert_eq!(
            window_at(windows, &zone, ms("2027-03-27T12:00:00Z"))
                .unwrap_err()
                .map(at),
            Some("2027-03-28T01:00:00Z".into())
        );
        assert!(
            window_at(windows, &zone, ms("2027-03-28T01:30:00Z")).is_ok(),
            "03:30 CEST is inside"
        );
        // 31 October: 02:30 exists twice; it opens at the first (00:30Z), and the window holds through both.
        assert_eq!(
            window_at(windows, &zone, ms("2027-10-30T12:00:00Z"))
                .unwrap_err()
                .map(at),
            Some("2027-10-31T00:30:00Z".into())
        );
        assert!(
            window_at(windows, &zone, ms("2027-10-31T01:45:00Z")).is_ok(),
            "the second 02:45, CET"
        );
        // UTC stays the default's reading.
        assert_eq!(
            window_at(windows, &TimeZone::UTC, ms("2027-03-27T12:00:00Z"))
                .unwrap_err()
                .map(at),
            Some("2027-03-28T02:30:00Z".into())
        );
    }
}
