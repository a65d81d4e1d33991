//! Schedules (`schedules/<name>.yaml`): a catalog script run on a cron
//! expression read in a time zone. Here: when a schedule fires next — the
//! zone given as data (the shell reads the tz database), its daylight-saving
//! rules croner's: a time a spring-forward skips fires once, at the first
//! instant after the gap; a time a fall-back repeats fires once, at its first
//! occurrence — and what a schedule's reconcile does now: wait, fire a due
//! time, or let a missed one go as its catch-up and concurrency policies say.
//! Each fire is claimed in the store by (schedule, due time) before it
//! starts, so it runs at most once whatever restarts or replicas.

use std::collections::BTreeMap;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::rollout::Rollout;
use crate::script::{ParamValue, Targets};
use crate::state::{DeclaredState, window_at};

/// How late a fire may start and still be on time; later, it was missed
/// (the daemon was down across it) and the catch-up policy decides.
pub const ON_TIME_MS: i64 = 60_000;
/// How far a cron expression's next fire is looked for: one that fires less
/// often (`0 0 29 2 1`: a Monday the 29th of February) is refused.
pub const HORIZON_YEARS: i16 = 5;

/// A schedule as the repository declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Repository path of the file that declares it.
    pub file: String,
    /// The catalog script each fire runs (the state's, when it applies one).
    pub script: String,
    /// The declared state each fire applies, if it applies one: its script,
    /// targets and parameters are copied here, inside its windows.
    #[serde(default)]
    pub state: Option<String>,
    pub targets: Targets,
    /// As written (what the content digest covers).
    pub params: BTreeMap<String, ParamValue>,
    /// What the script gets: checked against its parameters, defaults filled in.
    #[serde(default)]
    pub resolved: BTreeMap<String, ParamValue>,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// Five fields (minute hour day-of-month month day-of-week), croner's
    /// extensions (`L`, `#`, `W`) and nicknames (`@daily`) included.
    pub cron: String,
    /// An IANA time zone (`Europe/Berlin`); `UTC` when the file names none.
    pub zone: String,
    pub catch_up: CatchUp,
    pub concurrency: Concurrency,
    /// No fire after this instant.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<Timestamp>,
    /// Declared suspended: no fire until the file says otherwise.
    #[serde(default)]
    pub suspend: bool,
}

/// What happens to fires missed while the daemon was down.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// They are recorded as missed, and the schedule waits for its next time.
    #[default]
    Skip,
    /// The latest of them runs, once, when the daemon is back.
    Once,
}

/// What a fire does while the previous one still runs.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// It is recorded as skipped.
    #[default]
    Skip,
    /// It waits for the previous one to end, then runs (one waits at most).
    Queue,
}

impl Schedule {
    /// What the schedule asks for, as a digest: a fire records the content it ran.
    pub fn digest(&self) -> String {
        let content = serde_json::json!({
            "script": self.script, "state": self.state, "targets": self.targets, "params": self.params,
            "rollout": self.rollout, "cron": self.cron, "zone": self.zone,
        });
        crate::short_digest(content.to_string().as_bytes(), 8)
    }
}

/// Reads a cron expression: five fields (no seconds, no year), or a nickname,
/// refused when it would not fire within [`HORIZON_YEARS`].
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser
        .parse(text)
        .map_err(|error| format!("{text:?} is not a cron expression: {error}"))?;
    let start = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
    match cron.find_next_occurrence(&start, false) {
        Ok(next) if next.year() < 1970 + HORIZON_YEARS => Ok(cron),
        _ => Err(format!(
            "{text:?} does not fire within {HORIZON_YEARS} years: is a field impossible (the 31st of a 30-day month)?"
        )),
    }
}

/// The first fire strictly after `after`, read in `zone`; none past `until`.
pub fn next_fire(
    cron: &Cron,
    zone: &TimeZone,
    after: Timestamp,
    until: Option<Timestamp>,
) -> Option<Timestamp> {
    let next = cron
        .find_next_occurrence(&after.to_zoned(zone.clone()), false)
        .ok()?
        .timestamp();
    until.is_none_or(|until| next <= until).then_some(next)
}

/// One fire of a schedule, as recorded under (schedule, due time): claimed
/// when its operation is created, in the same transaction, so it runs at
/// most once; or recorded as not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FireRecord {
    pub schedule: String,
    pub due_ms: i64,
    /// The schedule's content when it fired ([`Schedule::digest`]).
    pub digest: String,
    pub revision: String,
    /// When it was recorded.
    pub at_ms: i64,
    pub outcome: FireOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FireOutcome {
    /// It started this operation (the store fills the id in as it creates it).
    Started { operation_id: u64 },
    /// Not run: it fell due while the daemon was down or the fleet held,
    /// and `catch_up` is skip.
    Missed { reason: String },
    /// Not run: the previous fire still ran, or nothing could start.
    Skipped { reason: String },
    /// Waiting for approvers (`access.yaml`'s approvals): approval request
    /// `approval`, whose last approval starts it.
    AwaitingApproval { approval: u64 },
}

impl FireOutcome {
    /// `started`, `missed` or `skipped`: the metric's and the API's word.
    pub fn name(&self) -> &'static str {
        match self {
            FireOutcome::Started { .. } => "started",
            FireOutcome::Missed { .. } => "missed",
            FireOutcome::Skipped { .. } => "skipped",
            FireOutcome::AwaitingApproval { .. } => "awaiting_approval",
        }
    }
}

/// What a schedule's reconcile knows of its fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// The due time of its latest fire (run, missed or skipped) — or, before
    /// any, when the schedule appeared: fires are counted from there.
    pub last_due: Timestamp,
    /// Whether that fire's operation still runs.
    pub running: bool,
}

/// What a schedule's reconcile does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleDecision {
    /// Suspended, or past its `until`: nothing until the file changes.
    Idle,
    /// Reconcile again at this instant.
    WaitUntil(Timestamp),
    /// Claim and start the fire due at `due`.
    Fire { due: Timestamp },
    /// Record the fire due at `due` as not run (`outcome`: missed or
    /// skipped, with why), then go on.
    Pass {
        due: Timestamp,
        outcome: FireOutcome,
    },
    /// `due` waits while it is held ([`Hold`]), looking again at
    /// `look_again`; held past its minute, it was missed and `catch_up` decides.
    Held {
        due: Timestamp,
        reason: String,
        look_again: Timestamp,
    },
    /// The previous fire still runs; `due` waits for its end (queued).
    Queue { due: Timestamp },
}

/// What keeps a fire from starting now: a suspension holding the fleet or
/// every machine the schedule targets, or, for a state's apply, the state's
/// maintenance windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub reason: String,
    /// When it is known to end (the next window opens).
    pub until: Option<Timestamp>,
}

/// How often a fire held by a suspension (whose end nobody can say) looks again.
pub const HELD_RECHECK_MS: i64 = 60_000;

/// What holds a fire now, given the suspension that holds what the schedule
/// targets (`suspension`, as `Held::refusal` names it) and, when it applies
/// a state, the state with its zone.
pub fn hold(
    suspension: Option<String>,
    state: Option<(&DeclaredState, &TimeZone)>,
    now: Timestamp,
) -> Option<Hold> {
    if let Some(reason) = suspension {
        return Some(Hold {
            reason,
            until: None,
        });
    }
    let (state, zone) = state?;
    let opens = window_at(&state.windows, zone, now.as_millisecond()).err()?;
    let until = opens.and_then(|at| Timestamp::from_millisecond(at).ok());
    let reason = match until {
        Some(at) => format!(
            "outside state {}'s maintenance windows; the next opens at {}",
            state.id,
            in_zone(at, zone)
        ),
        None => format!("outside state {}'s maintenance windows", state.id),
    };
    Some(Hold { reason, until })
}

/// Decides for a schedule given its fires so far, what holds it now
/// ([`hold`]), and the time.
pub fn decide(
    schedule: &Schedule,
    cron: &Cron,
    zone: &TimeZone,
    fired: Fired,
    held: Option<&Hold>,
    now: Timestamp,
) -> ScheduleDecision {
    if schedule.suspend {
        return ScheduleDecision::Idle;
    }
    let Some(due) = next_fire(cron, zone, fired.last_due, schedule.until) else {
        return ScheduleDecision::Idle;
    };
    if due > now {
        return ScheduleDecision::WaitUntil(due);
    }
    // Only the latest fire due counts: catching up runs once, whatever was
    // missed; it was missed when the daemon was not there as it fell due.
    let mut latest = due;
    while let Some(later) = next_fire(cron, zone, latest, schedule.until).filter(|t| *t <= now) {
        latest = later;
    }
    let missed = now.as_millisecond() - latest.as_millisecond() > ON_TIME_MS;
    if missed && schedule.catch_up == CatchUp::Skip {
        let reason = format!(
            "not fired at {} ({}): the daemon was down or reconciliation suspended; catch_up is skip",
            in_zone(latest, zone),
            schedule.zone
        );
        return ScheduleDecision::Pass {
            due: latest,
            outcome: FireOutcome::Missed { reason },
        };
    }
    if let Some(hold) = held {
        let look_again = match schedule.catch_up {
            // Then it is missed.
            CatchUp::Skip => latest.as_millisecond() + ON_TIME_MS + 1,
            CatchUp::Once => (hold.until.map(|at| at.as_millisecond()))
                .unwrap_or(now.as_millisecond() + HELD_RECHECK_MS),
        };
        return ScheduleDecision::Held {
            due: latest,
            reason: hold.reason.clone(),
            look_again: Timestamp::from_millisecond(look_again).unwrap_or(now),
        };
    }
    if fired.running {
        return match schedule.concurrency {
            Concurrency::Skip => ScheduleDecision::Pass {
                due: latest,
                outcome: FireOutcome::Skipped {
                    reason: "the previous fire still runs; concurrency is skip".into(),
                },
            },
            Concurrency::Queue => ScheduleDecision::Queue { due: latest },
        };
    }
    ScheduleDecision::Fire { due: latest }
}

/// An instant as the schedule's zone reads it, e.g. `2027-03-28 03:00 CEST`.
pub fn in_zone(at: Timestamp, zone: &TimeZone) -> String {
    at.to_zoned(zone.clone())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::berlin;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn schedule(cron: &str, catch_up: CatchUp, concurrency: Concurrency) -> Schedule {
        Schedule {
            cron: cron.into(),
            catch_up,
            concurrency,
            ..crate::fixtures::schedule("nightly", "backup", Targets::default())
        }
    }

    /// Every fire in `[from, to)`, as Berlin reads them and as UTC.
    fn fires(cron: &str, from: &str, to: &str) -> Vec<String> {
        let (cron, zone) = (parse_cron(cron).unwrap(), berlin());
        let mut all = Vec::new();
        let mut after = at(from);
        while let Some(next) = next_fire(&cron, &zone, after, Some(at(to))) {
            all.push(format!("{} = {}", in_zone(next, &zone), next));
            after = next;
        }
        all
    }

    #[test]
    fn berlin_s_2027_changes_skip_nothing_and_run_nothing_twice() {
        // 28 March 2027, 02:00 CET → 03:00 CEST: 02:30 does not exist; it runs at 03:00, once.
        assert_eq!(
            fires("30 2 * * *", "2027-03-26T12:00:00Z", "2027-03-29T12:00:00Z"),
            [
                "2027-03-27 02:30 CET = 2027-03-27T01:30:00Z",
                "2027-03-28 03:00 CEST = 2027-03-28T01:00:00Z",
                "2027-03-29 02:30 CEST = 2027-03-29T00:30:00Z",
            ]
        );
        // 31 October 2027, 03:00 CEST → 02:00 CET: 02:30 exists twice; it runs at the first.
        assert_eq!(
            fires("30 2 * * *", "2027-10-29T12:00:00Z", "2027-11-01T12:00:00Z"),
            [
                "2027-10-30 02:30 CEST = 2027-10-30T00:30:00Z",
                "2027-10-31 02:30 CEST = 2027-10-31T00:30:00Z",
                "2027-11-01 02:30 CET = 2027-11-01T01:30:00Z",
            ]
        );
        // A time away from the change keeps its wall-clock time, an hour apart in UTC.
        assert_eq!(
            fires("0 9 * * 1", "2027-03-20T00:00:00Z", "2027-04-06T00:00:00Z"),
            [
                "2027-03-22 09:00 CET = 2027-03-22T08:00:00Z",
                "2027-03-29 09:00 CEST = 2027-03-29T07:00:00Z",
                "2027-04-05 09:00 CEST = 2027-04-05T07:00:00Z",
            ]
        );
    }

    #[test]
    fn cron_expressions_that_cannot_be_or_never_fire_are_refused() {
        assert!(parse_cron("0 3 * * 0").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(
            parse_cron("0 0 L * *").is_ok(),
            "croner's last day of the month"
        );
        for bad in [
            "",
            "61 * * * *",
            "0 3 * *",
            "0 0 0 3 * * *",
            "0 0 31 2 *",
            "every day",
        ] {
            assert!(parse_cron(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_due_fire_runs_a_missed_one_runs_once_or_not_and_a_running_one_is_skipped_or_queued() {
        let (cron, zone) = (parse_cron("0 3 * * *").unwrap(), berlin());
        let fired = |last: &str, running| Fired {
            last_due: at(last),
            running,
        };
        let decide_at = |policy: (CatchUp, Concurrency), last: &str, running, now: &str| {
            decide(
                &schedule("0 3 * * *", policy.0, policy.1),
                &cron,
                &zone,
                fired(last, running),
                None,
                at(now),
            )
        };
        let defaults = (CatchUp::Skip, Concurrency::Skip);
        // 03:00 CET is 02:00Z.
        let due = at("2027-01-10T02:00:00Z");
        assert_eq!(
            decide_at(
                defaults,
                "2027-01-09T02:00:00Z",
                false,
                "2027-01-09T12:00:00Z"
            ),
            ScheduleDecision::WaitUntil(due)
        );
        assert_eq!(
            decide_at(
                defaults,
                "2027-01-09T02:00:00Z",
                false,
                "2027-01-10T02:00:05Z"
            ),
            ScheduleDecision::Fire { due }
        );
        // Down from before the 10th's fire to after the 12th's: one decision for all of them.
        let back = "2027-01-12T09:00:00Z";
        let latest = at("2027-01-12T02:00:00Z");
        assert_eq!(
            decide_at(defaults, "2027-01-09T02:00:00Z", false, back),
            ScheduleDecision::Pass {
                due: latest,
                outcome: FireOutcome::Missed {
                    reason: "not fired at 2027-01-12 03:00 CET (Europe/Berlin): the daemon was down or reconciliation suspended; catch_up is skip".into()
                }
            }
        );
        assert_eq!(
            decide_at(
                (CatchUp::Once, Concurrency::Skip),
                "2027-01-09T02:00:00Z",
                false,
                back
            ),
            ScheduleDecision::Fire { due: latest }
        );
        // The previous fire still runs.
        assert!(matches!(
            decide_at(defaults, "2027-01-09T02:00:00Z", true, "2027-01-10T02:00:05Z"),
            ScheduleDecision::Pass { due: d, outcome: FireOutcome::Skipped { .. } } if d == due
        ));
        // Held by a suspension: the fire waits; held past its minute, catch_up decides.
        let held = hold(Some("reconciliation is suspended".into()), None, due).unwrap();
        let fired_9th = fired("2027-01-09T02:00:00Z", false);
        let held_at = |catch_up, now: &str| {
            let schedule = schedule("0 3 * * *", catch_up, Concurrency::Skip);
            decide(&schedule, &cron, &zone, fired_9th, Some(&held), at(now))
        };
        assert_eq!(
            held_at(CatchUp::Skip, "2027-01-10T02:00:05Z"),
            ScheduleDecision::Held {
                due,
                reason: held.reason.clone(),
                look_again: at("2027-01-10T02:01:00.001Z")
            }
        );
        assert!(matches!(
            held_at(CatchUp::Skip, "2027-01-10T05:00:00Z"),
            ScheduleDecision::Pass {
                outcome: FireOutcome::Missed { .. },
                ..
            }
        ));
        assert!(matches!(
            held_at(CatchUp::Once, "2027-01-10T05:00:00Z"),
            ScheduleDecision::Held { look_again, .. } if look_again == at("2027-01-10T05:01:00Z")
        ));
        assert_eq!(
            decide_at(
                (CatchUp::Once, Concurrency::Skip),
                "2027-01-09T02:00:00Z",
                false,
                "2027-01-10T05:00:00Z"
            ),
            ScheduleDecision::Fire { due }
        );
        assert_eq!(
            decide_at(
                (CatchUp::Skip, Concurrency::Queue),
                "2027-01-09T02:00:00Z",
                true,
                "2027-01-10T02:00:05Z"
            ),
            ScheduleDecision::Queue { due }
        );
        // Suspended, or past its until: idle.
        let mut suspended = schedule("0 3 * * *", CatchUp::Skip, Concurrency::Skip);
        suspended.suspend = true;
        assert_eq!(
            decide(
                &suspended,
                &cron,
                &zone,
                fired("2027-01-09T02:00:00Z", false),
                None,
                due
            ),
            ScheduleDecision::Idle
        );
        let mut ended = schedule("0 3 * * *", CatchUp::Skip, Concurrency::Skip);
        ended.until = Some(at("2027-01-09T12:00:00Z"));
        assert_eq!(
            decide(
                &ended,
                &cron,
                &zone,
                fired("2027-01-09T02:00:00Z", false),
                None,
                due
            ),
            ScheduleDecision::Idle
        );
    }

    #[test]
    fn a_state_s_apply_is_held_outside_its_windows_until_the_next_opens() {
        let zone = berlin();
        let state = DeclaredState {
            id: "motd".into(),
            file: "states/motd.yaml".into(),
            description: String::new(),
            script: "motd".into(),
            targets: Targets::default(),
            params: BTreeMap::new(),
            mode: crate::state::Mode::Report,
            interval: std::time::Duration::from_secs(300),
            windows: vec![crate::state::Window {
                days: vec![crate::state::Weekday::Sun],
                from_minute: 2 * 60,
                to_minute: 4 * 60,
            }],
            zone: "Europe/Berlin".into(),
            rollout: Rollout::default(),
        };
        // Sunday 2027-01-10, 01:30 and 02:30 in Berlin (CET, UTC+1).
        let early = hold(None, Some((&state, &zone)), at("2027-01-10T00:30:00Z")).unwrap();
        assert_eq!(early.until, Some(at("2027-01-10T01:00:00Z")));
        assert_eq!(
            early.reason,
            "outside state motd's maintenance windows; the next opens at 2027-01-10 02:00 CET"
        );
        assert_eq!(
            hold(None, Some((&state, &zone)), at("2027-01-10T01:30:00Z")),
            None
        );
        // A suspension holds first, whatever the windows.
        let suspended = hold(
            Some("held".into()),
            Some((&state, &zone)),
            at("2027-01-10T01:30:00Z"),
        );
        assert_eq!(suspended.unwrap().reason, "held");
        assert_eq!(hold(None, None, at("2027-01-10T00:30:00Z")), None);
    }
}
