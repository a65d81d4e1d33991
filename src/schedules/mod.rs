//! Schedules in the daemon: the time zones their cron expressions (and
//! declared states' windows) are read in, from the system's tz database
//! (`/usr/share/zoneinfo`, Debian's `tzdata`) — the core gets them as data —
//! what holds a schedule's fire, and its next fire as the API shows it.

use linkops_reconcilers::desired::{DesiredState, Problem};
use linkops_reconcilers::run;
use linkops_reconcilers::schedule::{self, FireRecord, Fired, Hold, Schedule, ScheduleDecision};
use linkops_reconcilers::suspension::Held;

/// The zone named `name` (`UTC` included), or why there is none.
pub fn zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::db().get(name).map_err(|error| {
        format!("time zone {name:?} is not in the tz database (/usr/share/zoneinfo; Debian's tzdata): {error}")
    })
}

/// The schedules and declared states of `desired` whose zone the tz
/// database does not know, each a problem at its file: refused like a broken file.
pub fn unknown_zones(desired: &DesiredState) -> Vec<Problem> {
    let schedules = (desired.schedules.values()).map(|s| (&s.file, &s.zone));
    let states = (desired.states.values()).map(|s| (&s.file, &s.zone));
    schedules
        .chain(states)
        .filter_map(|(file, name)| zone(name).err().map(|message| (file, message)))
        .map(|(file, message)| Problem {
            file: file.clone(),
            line: 1,
            column: 1,
            message,
        })
        .collect()
}

/// What holds `schedule`'s fire at `now` ([`schedule::hold`]): the
/// suspension holding the fleet or every machine it targets, or the windows
/// of the state it applies.
pub fn hold(
    schedule: &Schedule,
    desired: &DesiredState,
    held: &Held,
    now: jiff::Timestamp,
) -> Option<Hold> {
    let selected = schedule.targets.select(&desired.machines);
    let suspension = run::refused_by_suspension(held, &selected);
    // The state's zone was checked at load, as the schedule's was.
    let state = (schedule.state.as_ref())
        .and_then(|id| desired.states.get(id))
        .and_then(|state| Some((state, zone(&state.zone).ok()?)));
    schedule::hold(suspension, state.as_ref().map(|(s, z)| (*s, z)), now)
}

/// When `schedule` fires next after `now`, given its latest fire (or when it
/// was first seen, `since_ms`): a fire due and not yet taken is due now.
pub fn next_fire(
    schedule: &Schedule,
    last: Option<&FireRecord>,
    since_ms: i64,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let (zone, cron) = (
        zone(&schedule.zone).ok()?,
        schedule::parse_cron(&schedule.cron).ok()?,
    );
    let fired = Fired {
        last_due: jiff::Timestamp::from_millisecond(last.map_or(since_ms, |f| f.due_ms)).ok()?,
        running: false,
    };
    // What holds it is the reconcile's to say: here, only when it is due.
    match schedule::decide(schedule, &cron, &zone, fired, None, now) {
        ScheduleDecision::Idle => None,
        ScheduleDecision::WaitUntil(due) => Some(due),
        ScheduleDecision::Fire { due }
        | ScheduleDecision::Pass { due, .. }
        | ScheduleDecision::Held { due, .. }
        | ScheduleDecision::Queue { due } => Some(due),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_come_from_the_system_tz_database() {
        let berlin = zone("Europe/Berlin").unwrap();
        let summer: jiff::Timestamp = "2027-07-01T12:00:00Z".parse().unwrap();
        assert_eq!(berlin.to_offset(summer).seconds(), 2 * 3600);
        assert!(zone("UTC").is_ok());
        assert!(
            zone("Europe/Berln")
                .unwrap_err()
                .contains("not in the tz database")
        );
    }
}
