//! Run-requests (`runs/*.yaml`): their script, targets and parameters.

use super::*;

pub(super) fn check_run(
    request: RunRequestFile,
    path: &str,
    scripts: &BTreeMap<String, Script>,
    // False when scripts.yaml could not be read whole: an unknown script is
    // then not reported (it may be one of the broken entries).
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> Option<RunRequest> {
    let RunRequestFile {
        id,
        script,
        targets,
        params,
        not_before,
        rollout,
    } = request;
    let Some(catalog_script) = scripts.get(&script.value) else {
        if !catalog_read {
            return None;
        }
        report.at(
            &script,
            format!(
                "unknown script {:?}: it is not in scripts.yaml",
                script.value
            ),
        );
        return None;
    };
    let given = targets.map_or_else(Targets::default, |targets| {
        known.check_targets(&targets, report)
    });
    let targets = catalog_script.targets_or_default(given);
    if targets.is_empty() {
        report.at(
            &id,
            format!(
                "run-request {:?} has no targets, and script {:?} has no default targets",
                id.value, script.value
            ),
        );
    }
    let values: BTreeMap<_, _> = params
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    let resolved = resolve_params(catalog_script, &params, &id, report);
    let not_before = match not_before {
        None => None,
        Some(text) => {
            match text.value.parse::<jiff::Timestamp>() {
                Ok(at) => Some(at),
                Err(error) => {
                    report.at(&text, format!("not_before must be an RFC 3339 time such as 2026-12-01T03:00:00Z: {error}"));
                    None
                }
            }
        }
    };
    let rollout = rollout.and_then(|r| check_rollout(&r, report));
    Some(RunRequest {
        id: id.value,
        file: path.to_owned(),
        rollout,
        script: script.value,
        targets,
        params: values,
        // Last: not_before's problem is reported too.
        resolved: resolved?,
        not_before,
    })
}

/// The values a run or a state gives its script, checked against the
/// script's parameters, each problem at the value it is about (at `owner`, for
/// a missing one).
pub(super) fn resolve_params(
    script: &Script,
    params: &BTreeMap<String, Spanned<ParamValue>>,
    owner: &Spanned<String>,
    report: &mut Report,
) -> Option<BTreeMap<String, ParamValue>> {
    let values: BTreeMap<_, _> = params
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    match script.resolve_params(&values) {
        Ok(resolved) => Some(resolved),
        Err(param_problems) => {
            for (name, message) in param_problems {
                let from_default = script
                    .params
                    .iter()
                    .any(|p| p.name == name && p.default.is_some());
                if from_default && !params.contains_key(&name) {
                    // A broken default is reported once, where scripts.yaml declares it.
                    continue;
                }
                match params.get(&name) {
                    Some(value) => report.at(value, message),
                    None => report.at(owner, message),
                }
            }
            None
        }
    }
}
