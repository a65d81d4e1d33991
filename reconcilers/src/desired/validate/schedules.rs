//! Schedules (`schedules/*.yaml`): where each lives, its cron expression and
//! zone's name, and its script, targets and parameters as a run-request's.
//! Whether the zone is in the tz database is the shell's to say (the core
//! reads no files): the daemon's load checks it beside `load`.

use super::*;
use crate::schedule::{Schedule, parse_cron};
use crate::secret::Secret;

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

pub(super) fn check_schedule(
    file: ScheduleFile,
    path: &str,
    scripts: &BTreeMap<String, Script>,
    secrets: &BTreeMap<String, Secret>,
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> Option<Schedule> {
    let ScheduleFile {
        name,
        description,
        script,
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
    let file_name = path.rsplit('/').next().unwrap_or(path);
    let stem = file_name.trim_end_matches(".yaml").trim_end_matches(".yml");
    let mut sound = true;
    if stem != name.value {
        let expected = format!("{}/{}.yaml", super::super::SCHEDULES_DIR, name.value);
        report.at(
            &name,
            format!("schedule {:?} must be in {expected}", name.value),
        );
        sound = false;
    }
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
    let given = targets.map_or_else(Targets::default, |targets| {
        known.check_targets(&targets, report)
    });
    let asked = runs::Asked {
        script: &script,
        params: &params,
        owner: &name,
        what: "schedule",
    };
    let resolved = asked.report(given, scripts, secrets, catalog_read, known, report);
    let rollout = rollout.and_then(|r| check_rollout(&r, report));
    let (targets, resolved) = resolved?;
    sound.then_some(Schedule {
        name: name.value,
        description,
        file: path.to_owned(),
        script: script.value,
        targets,
        params: params.into_iter().map(|(k, v)| (k, v.value)).collect(),
        resolved,
        rollout,
        cron: cron.value,
        zone,
        catch_up,
        concurrency,
        until,
        suspend,
    })
}
