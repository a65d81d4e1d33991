//! Declared states (`states/*.yaml`): their script, targets, rollout and windows.

use super::*;

pub(super) fn check_state(
    declared: StateFile,
    path: &str,
    scripts: &BTreeMap<String, Script>,
    secrets: &BTreeMap<String, crate::secret::Secret>,
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> Option<DeclaredState> {
    let StateFile {
        id,
        description,
        script,
        targets,
        params,
        mode,
        interval,
        windows,
        zone,
        rollout,
    } = declared;
    let zone = super::schedules::check_zone(zone, report);
    let catalog_script = scripts.get(&script.value);
    if let Some(catalog_script) = catalog_script
        && catalog_script.check.is_none()
    {
        report.at(
            &script,
            format!(
                "script {:?} has no check: a declared state needs one to know whether it holds (add `check:` or `check_file:` to it in scripts.yaml)",
                script.value
            ),
        );
    }
    let given = targets.map_or_else(Targets::default, |targets| {
        known.no_facts(&targets, "a declared state", report);
        known.check_targets(&targets, report)
    });
    let asked = Asked {
        script: &script,
        params: &params,
        owner: &id,
        what: "state",
    };
    let resolved = asked.report(given, scripts, secrets, catalog_read, known, report);
    let interval = match interval {
        None => Some(state::DEFAULT_INTERVAL),
        Some(text) => duration(&text, report).filter(|interval| {
            let enough = *interval >= state::MIN_INTERVAL;
            if !enough {
                report.at(
                    &text,
                    format!(
                        "interval {:?} is shorter than {}s, the shortest allowed: each check is an SSH session on every target",
                        text.value,
                        state::MIN_INTERVAL.as_secs()
                    ),
                );
            }
            enough
        }),
    };
    let windows: Vec<Option<Window>> = windows
        .iter()
        .map(|window| check_window(window, report))
        .collect();
    let rollout = match rollout {
        Some(given) => check_rollout(&given, report),
        None => Some(Rollout::default()),
    };
    let (targets, params) = resolved?;
    Some(DeclaredState {
        id: id.value,
        file: path.to_owned(),
        description,
        script: script.value,
        targets,
        params,
        mode,
        interval: interval?,
        windows: windows.into_iter().collect::<Option<_>>()?,
        zone: zone?,
        rollout: rollout?,
    })
}

pub(super) fn check_window(window: &Spanned<WindowEntry>, report: &mut Report) -> Option<Window> {
    let minute = |text: &Spanned<String>, report: &mut Report| {
        let parsed = text.value.split_once(':').and_then(|(h, m)| {
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && text.value.len() == 5).then_some(h * 60 + m)
        });
        if parsed.is_none() {
            report.at(
                text,
                format!(
                    "{:?} is not a time of day such as 02:00 or 23:30 (HH:MM, UTC)",
                    text.value
                ),
            );
        }
        parsed
    };
    let from = minute(&window.value.from, report);
    let to = minute(&window.value.to, report);
    let (from, to) = (from?, to?);
    if from == to {
        report.at(
            &window.value.to,
            "a window must end at another time than it starts (it would be empty)",
        );
        return None;
    }
    Some(Window {
        days: window.value.days.clone(),
        from_minute: from,
        to_minute: to,
    })
}
