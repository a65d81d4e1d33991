//! Schedules (`schedules/*.yaml`): where each lives, its cron expression and
//! zone's name, and its script, targets and parameters as a run-request's.
//! Whether the zone is in the tz database is the shell's to say (the core
//! reads no files): the daemon's load checks it beside `load`.

use super::*;
use crate::schedule::{Schedule, parse_cron};
use crate::secret::Secret;
use crate::state::Mode;

/// A time zone's name as the tz database spells them: `UTC`, `Europe/Berlin`, `America/Argentina/Salta`.
static ZONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*){0,2}$")
        .expect("a valid pattern")
});

/// A zone as written (`UTC` when absent); `None` when it cannot be a zone's name (reported).
pub(super) fn check_zone(zone: Option<Spanned<String>>, report: &mut Report) -> Option<String> {
    match zone {
        None => Some("UTC".to_owned()),
        Some(zone) if ZONE.is_match(&zone.value) && zone.value.len() <= 64 => Some(zone.value),
        Some(zone) => {
            let message = format!(
                "{:?} is not a time zone's name: an IANA name such as Europe/Berlin, or UTC",
                zone.value
            );
            report.at(&zone, message);
            None
        }
    }
}

/// What a schedule may name: the catalog's scripts (`read`: whether
/// `scripts.yaml` was read at all) and secrets, and the declared states.
pub(super) struct Catalog<'a> {
    pub scripts: &'a BTreeMap<String, Script>,
    pub secrets: &'a BTreeMap<String, Secret>,
    pub states: &'a BTreeMap<String, DeclaredState>,
    pub read: bool,
}

pub(super) fn check_schedule(
    file: ScheduleFile,
    path: &str,
    catalog: Catalog<'_>,
    known: &Known,
    report: &mut Report,
) -> Option<Schedule> {
    let ScheduleFile {
        name,
        description,
        script,
        state,
        targets,
        params,
        rollout,
        cron,
        zone,
        catch_up,
        concurrency,
        until,
        suspend,
    } = file;
    let mut sound = in_its_file(&name, path, super::super::SCHEDULES_DIR, "schedule", report);
    if let Err(problem) = parse_cron(&cron.value) {
        report.at(&cron, problem);
        sound = false;
    }
    let zone = check_zone(zone, report).unwrap_or_else(|| {
        sound = false;
        String::new()
    });
    let until = match until {
        None => None,
        Some(text) => match text.value.parse::<jiff::Timestamp>() {
            Ok(at) => Some(at),
            Err(error) => {
                report.at(
                    &text,
                    format!("until must be an RFC 3339 time such as 2027-12-31T23:00:00Z: {error}"),
                );
                sound = false;
                None
            }
        },
    };
    let rollout = rollout.and_then(|r| check_rollout(&r, report));
    let runs = match (script, state) {
        (Some(script), None) => {
            let given = targets.map_or_else(Targets::default, |targets| {
                known.check_targets(&targets, report)
            });
            let asked = runs::Asked {
                script: &script,
                params: &params,
                owner: &name,
                what: "schedule",
            };
            let resolved = asked.report(
                given,
                catalog.scripts,
                catalog.secrets,
                catalog.read,
                known,
                report,
            );
            let (targets, resolved) = resolved?;
            Runs {
                script: script.value,
                state: None,
                targets,
                params: params.into_iter().map(|(k, v)| (k, v.value)).collect(),
                resolved,
                rollout,
            }
        }
        (None, Some(state)) => {
            let applied = applies(&state, catalog.states, report)?;
            if targets.is_some() || !params.is_empty() {
                report.at(
                    &state,
                    "a schedule that applies a state takes the state's targets and parameters: remove its targets and params",
                );
                return None;
            }
            Runs {
                script: applied.script.clone(),
                state: Some(state.value),
                targets: applied.targets.clone(),
                params: applied.params.clone(),
                resolved: applied.params.clone(),
                rollout: rollout.or(Some(applied.rollout)),
            }
        }
        (Some(script), Some(_)) => {
            report.at(
                &script,
                "a schedule runs a script or applies a state, not both: keep one of script and state",
            );
            return None;
        }
        (None, None) => {
            report.at(
                &name,
                "a schedule needs what it runs: a catalog script (script: ID) or a state to apply (state: ID)",
            );
            return None;
        }
    };
    sound.then_some(Schedule {
        name: name.value,
        description,
        file: path.to_owned(),
        script: runs.script,
        state: runs.state,
        targets: runs.targets,
        params: runs.params,
        resolved: runs.resolved,
        rollout: runs.rollout,
        cron: cron.value,
        zone,
        catch_up,
        concurrency,
        until,
        suspend,
    })
}

/// What a schedule's fires run, from its script or its state.
struct Runs {
    script: String,
    state: Option<String>,
    targets: Targets,
    params: BTreeMap<String, ParamValue>,
    resolved: BTreeMap<String, ParamValue>,
    rollout: Option<Rollout>,
}

/// The declared state a schedule applies: one in `report` mode (one that
/// enforces applies itself on drift, and two applies would race).
fn applies<'a>(
    id: &Spanned<String>,
    states: &'a BTreeMap<String, DeclaredState>,
    report: &mut Report,
) -> Option<&'a DeclaredState> {
    let Some(state) = states.get(&id.value) else {
        let known: Vec<&str> = states.keys().map(String::as_str).collect();
        report.at(
            id,
            format!(
                "no declared state {:?} (states/*.yaml declares: {})",
                id.value,
                match known.is_empty() {
                    true => "none".to_owned(),
                    false => known.join(", "),
                }
            ),
        );
        return None;
    };
    if state.mode != Mode::Report {
        report.at(
            id,
            format!(
                "state {:?} enforces (it applies on drift itself); a schedule applies only a state with mode: report",
                id.value
            ),
        );
        return None;
    }
    Some(state)
}
