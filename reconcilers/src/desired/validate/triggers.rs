//! Inbound triggers (`triggers/*.yaml`): where each lives, its script and the
//! machines it may run on, the paths its mapping reads (never into a
//! `secret` parameter), its fixed parameters as the script declares them,
//! and its secret, dedup window and rate.

use super::*;
use crate::secret::Secret;
use crate::trigger::{MAX_PATH, Rate, Trigger};

/// A dotted path into a request: `labels.instance`.
static PATH: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$").expect("a valid pattern"));

/// The default dedup window: Alertmanager's group_interval is 5m, its repeat_interval 4h.
const DEFAULT_DEDUP: Duration = Duration::from_secs(3600);
/// The most runs a trigger's rate may allow in its window.
const MAX_RATE_RUNS: u32 = 10_000;

pub(super) fn check_trigger(
    file: TriggerFile,
    path: &str,
    scripts: &BTreeMap<String, Script>,
    secrets: &BTreeMap<String, Secret>,
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> Option<Trigger> {
    let TriggerFile {
        name,
        description,
        script,
        machines,
        format,
        machine,
        map,
        params,
        auth,
        secret,
        dedup,
        rate,
        dry_run,
    } = file;
    let mut sound = in_its_file(&name, path, super::super::TRIGGERS_DIR, "trigger", report);
    let machines = known.check_targets(&machines, report);
    let mut path_ok = |path: &Spanned<String>, report: &mut Report| {
        let fits = path.value.len() <= MAX_PATH && PATH.is_match(&path.value);
        if !fits {
            report.at(
                path,
                format!(
                    "{:?} is not a dotted path such as labels.instance (letters, digits, '_' and '-' between dots; at most {MAX_PATH} characters)",
                    path.value
                ),
            );
            sound = false;
        }
    };
    let machine_path = match machine {
        Some(given) => {
            path_ok(&given, report);
            given.value
        }
        None => "labels.instance".to_owned(),
    };
    for path in map.values() {
        path_ok(path, report);
    }
    let declared = scripts.get(&script.value);
    match declared {
        None if catalog_read => {
            report.at(
                &script,
                format!(
                    "unknown script {:?}: it is not in scripts.yaml",
                    script.value
                ),
            );
            sound = false;
        }
        None => sound = false,
        Some(declared) => {
            for (param, path) in &map {
                let spec = declared.params.iter().find(|p| &p.name == param);
                let problem = match spec {
                    None => Some(format!(
                        "script {} has no parameter {param:?} to map {:?} to",
                        script.value, path.value
                    )),
                    Some(spec) if spec.kind == ParamType::Secret => Some(format!(
                        "parameter {param} is a secret: a request never names the secret a script is given"
                    )),
                    Some(_) if params.contains_key(param) => Some(format!(
                        "parameter {param} is both fixed in params and mapped: keep one"
                    )),
                    Some(_) => None,
                };
                if let Some(problem) = problem {
                    report.at(path, problem);
                    sound = false;
                }
            }
            for (param, value) in &params {
                let spec = declared.params.iter().find(|p| &p.name == param);
                let checked = match spec {
                    None => Err(format!(
                        "script {} has no parameter {param:?}",
                        script.value
                    )),
                    Some(spec) => spec.check(&value.value).map(drop),
                };
                if let Err(problem) = checked {
                    report.at(value, problem);
                    sound = false;
                }
            }
            for spec in (declared.params.iter()).filter(|p| p.required && p.default.is_none()) {
                if !params.contains_key(&spec.name) && !map.contains_key(&spec.name) {
                    report.at(
                        &script,
                        format!(
                            "script {} requires parameter {}: fix it in params or map it from the request",
                            script.value, spec.name
                        ),
                    );
                    sound = false;
                }
            }
        }
    }
    if let Some(secret) = &secret
        && !secrets.contains_key(&secret.value)
    {
        report.at(
            secret,
            format!(
                "no secret {:?}: there is no secrets/{}.yaml (`linkops secret set {}` writes one)",
                secret.value, secret.value, secret.value
            ),
        );
        sound = false;
    }
    let dedup = match dedup {
        None => Some(DEFAULT_DEDUP),
        Some(given) => duration(&given, report),
    };
    let rate = match rate {
        None => Some(Rate::default()),
        Some(given) => {
            let per = duration(
                &Spanned {
                    value: given.value.per.clone(),
                    referenced: given.referenced,
                    defined: given.defined,
                },
                report,
            );
            let runs = given.value.runs;
            if runs == 0 || runs > MAX_RATE_RUNS {
                report.at(
                    &given,
                    format!("rate.runs is {runs}: give 1 to {MAX_RATE_RUNS}"),
                );
                sound = false;
            }
            per.map(|per| Rate { runs, per })
        }
    };
    let (dedup, rate) = (dedup?, rate?);
    sound.then_some(Trigger {
        name: name.value,
        description,
        file: path.to_owned(),
        script: script.value,
        machines,
        format,
        machine: machine_path,
        map: map.into_iter().map(|(k, v)| (k, v.value)).collect(),
        params: params.into_iter().map(|(k, v)| (k, v.value)).collect(),
        auth,
        secret: secret.map(|s| s.value),
        dedup,
        rate,
        dry_run,
    })
}
