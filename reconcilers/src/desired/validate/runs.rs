//! Run-requests (`runs/*.yaml`): their script, targets and parameters.

use super::*;
use crate::secret::Secret;

pub(super) fn check_run(
    request: RunRequestFile,
    path: &str,
    scripts: &BTreeMap<String, Script>,
    secrets: &BTreeMap<String, Secret>,
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
    let given = targets.map_or_else(Targets::default, |targets| {
        known.check_targets(&targets, report)
    });
    let asked = Asked {
        script: &script,
        params: &params,
        owner: &id,
        what: "run-request",
    };
    let resolved = asked.report(given, scripts, secrets, catalog_read, known, report);
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
    // Last: the other problems are reported too.
    let (targets, resolved) = resolved?;
    Some(RunRequest {
        id: id.value,
        file: path.to_owned(),
        rollout,
        script: script.value,
        targets,
        params: params.into_iter().map(|(k, v)| (k, v.value)).collect(),
        resolved,
        not_before,
    })
}

/// A run-request's or a declared state's ask, as written: what its problems
/// are reported at.
pub(super) struct Asked<'a> {
    pub script: &'a Spanned<String>,
    pub params: &'a BTreeMap<String, Spanned<ParamValue>>,
    /// The id of the run-request or state: where a missing value or target is reported.
    pub owner: &'a Spanned<String>,
    /// "run-request" or "state", for the words.
    pub what: &'static str,
}

impl Asked<'_> {
    /// Resolves the ask on `targets` (given, checked by `Known::check_targets`)
    /// as the API resolves one, reporting each problem where it is written;
    /// its targets and values when it can run.
    pub fn report(
        &self,
        targets: Targets,
        scripts: &BTreeMap<String, Script>,
        secrets: &BTreeMap<String, Secret>,
        // False when scripts.yaml could not be read whole: an unknown script is
        // then not reported (it may be one of the broken entries).
        catalog_read: bool,
        known: &Known,
        report: &mut Report,
    ) -> Option<(Targets, BTreeMap<String, ParamValue>)> {
        let ask = Ask {
            script: self.script.value.clone(),
            params: (self.params.iter())
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
            targets,
            rollout: None,
        };
        let problems = match ask.resolve(scripts, known.machines, secrets) {
            Ok(resolved) => return Some((resolved.targets, resolved.params)),
            Err(problems) => problems,
        };
        for problem in problems {
            match problem {
                AskProblem::UnknownScript(script) if catalog_read => report.at(
                    self.script,
                    format!("unknown script {script:?}: it is not in scripts.yaml"),
                ),
                AskProblem::Param { name, message } => {
                    let spec = (scripts.get(&self.script.value))
                        .and_then(|script| script.params.iter().find(|p| p.name == name));
                    match (self.params.get(&name), spec) {
                        (Some(value), _) => report.at(value, message),
                        // A secret default that exists but may not go where
                        // this ask goes is this file's problem, not the catalog's.
                        (None, Some(spec)) if spec.kind == ParamType::Secret => report.at(
                            self.owner,
                            format!("parameter {name} (its default): {message}"),
                        ),
                        // A broken default is reported once, where scripts.yaml declares it.
                        (None, Some(spec)) if spec.default.is_some() => {}
                        (None, _) => report.at(self.owner, message),
                    }
                }
                AskProblem::NoTargets { script } => report.at(
                    self.owner,
                    format!(
                        "{} {:?} has no targets, and script {script:?} has no default targets",
                        self.what, self.owner.value
                    ),
                ),
                // Reported where written: a given tag by `Known::check_targets`,
                // a default one with its script.
                AskProblem::UnmatchedTag(_) => {}
                AskProblem::UnknownScript(_) | AskProblem::Rollout(_) => {}
            }
        }
        None
    }
}
