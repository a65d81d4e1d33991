//! `scripts.yaml`: the catalog, its parameters and script files.

use super::*;

pub(super) fn check_scripts(
    catalog: ScriptsFile,
    files: &RepoFiles,
    known: &Known,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, Script> {
    let mut report = Report {
        file: SCRIPTS_FILE,
        problems,
    };
    let mut scripts = BTreeMap::new();
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for entry in catalog.scripts {
        let at = entry.referenced;
        let ScriptEntry {
            id,
            name,
            description,
            body,
            file,
            check,
            check_file,
            interpreter,
            params,
            timeout,
            max_parallel,
            targets,
        } = entry.value;
        if !conforms(&mut report, "script id", &id, &ID, ID_RULE) {
            continue;
        }
        if let Some(line) = lines.get(&id.value) {
            report.at(
                &id,
                format!("duplicate script id {:?} (first at line {line})", id.value),
            );
            continue;
        }
        lines.insert(id.value.clone(), id.referenced.line());
        let body = match (body, file) {
            (Some(body), None) if body.len() > MAX_SCRIPT_BYTES => {
                report.at(
                    &id,
                    format!(
                        "script {:?} is {} bytes; a script may have at most {MAX_SCRIPT_BYTES}",
                        id.value,
                        body.len()
                    ),
                );
                None
            }
            (Some(body), None) => Some(body),
            (None, Some(file)) => script_file(&file, files, &mut report),
            (Some(_), Some(file)) => {
                report.at(
                    &file,
                    format!("script {:?} has both body and file; keep one", id.value),
                );
                None
            }
            (None, None) => {
                report.at(
                    &Spanned::new((), at, at),
                    format!("script {:?} needs a body or a file", id.value),
                );
                None
            }
        };
        let check = match (check, check_file) {
            (Some(check), None) if check.len() > MAX_SCRIPT_BYTES => {
                report.at(
                    &id,
                    format!(
                        "the check of script {:?} is {} bytes; a check may have at most {MAX_SCRIPT_BYTES}",
                        id.value,
                        check.len()
                    ),
                );
                None
            }
            (Some(check), None) => Some(check),
            (None, Some(file)) => script_file(&file, files, &mut report),
            (Some(_), Some(file)) => {
                report.at(
                    &file,
                    format!(
                        "script {:?} has both check and check_file; keep one",
                        id.value
                    ),
                );
                None
            }
            (None, None) => None,
        };
        let params = check_params(params, &known.secrets, &mut report);
        let timeout = timeout.and_then(|t| duration(&t, &mut report));
        let targets = targets
            .map(|t| {
                known.no_facts(&t, "a script's default targets", &mut report);
                known.check_targets(&t, &mut report)
            })
            .unwrap_or_default();
        // Kept even when broken (the revision is rejected anyway), so that runs
        // naming it are checked against it rather than called unknown.
        scripts.insert(
            id.value.clone(),
            Script {
                id: id.value,
                name,
                description,
                body: body.unwrap_or_default(),
                check,
                interpreter,
                params,
                timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
                max_parallel,
                targets,
            },
        );
    }
    scripts
}

pub(super) fn script_file(
    file: &Spanned<String>,
    files: &RepoFiles,
    report: &mut Report,
) -> Option<String> {
    let path = file.value.trim_start_matches("./");
    match files.get(path) {
        None => {
            report.at(
                file,
                format!("script file {path:?} is not in the repository"),
            );
            None
        }
        Some(bytes) if bytes.len() > MAX_SCRIPT_BYTES => {
            report.at(
                file,
                format!(
                    "script file {path:?} is {} bytes; a script may have at most {MAX_SCRIPT_BYTES}",
                    bytes.len()
                ),
            );
            None
        }
        Some(bytes) => match String::from_utf8(bytes.clone()) {
            Ok(text) => Some(text),
            Err(_) => {
                report.at(
                    file,
                    format!("script file {path:?} is not valid UTF-8 text"),
                );
                None
            }
        },
    }
}

pub(super) fn check_params(
    params: Vec<Spanned<ParamEntry>>,
    // The names of the repository's secrets, for `secret` parameters' defaults.
    secrets: &BTreeSet<String>,
    report: &mut Report,
) -> Vec<ParamSpec> {
    let mut names = BTreeSet::new();
    let mut specs = Vec::new();
    for param in params {
        let ParamEntry {
            name,
            kind,
            description,
            required,
            default,
            values,
            pattern,
        } = param.value;
        if !conforms(
            report,
            "parameter name",
            &name,
            &PARAM_NAME,
            "it becomes LINKOPS_PARAM_<NAME>: letters, digits and '_', not starting with a digit, at most 64 characters",
        ) {
            continue;
        }
        if !names.insert(name.value.to_ascii_uppercase()) {
            // Names become LINKOPS_PARAM_<NAME>: they must differ in more than case.
            report.at(&name, format!("duplicate parameter {:?}", name.value));
            continue;
        }
        if kind == ParamType::Enum && values.is_empty() {
            report.at(
                &name,
                format!("enum parameter {:?} needs `values`", name.value),
            );
        }
        if let Some(pattern) = &pattern
            && let Err(error) = anchored(&pattern.value)
        {
            // regex renders a multi-line diagram; its last line is the reason.
            let reason = error.to_string();
            let reason = reason
                .lines()
                .last()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned();
            report.at(
                pattern,
                format!("invalid pattern {:?}: {reason}", pattern.value),
            );
        }
        let spec = ParamSpec {
            name: name.value,
            kind,
            description,
            required,
            default: default.as_ref().map(|d| d.value.clone()),
            values,
            pattern: pattern.map(|p| p.value),
        };
        if let Some(default) = &default
            && let Err(message) = spec.check(&default.value)
        {
            report.at(default, format!("default of {}: {message}", spec.name));
        } else if let Some(default) = &default
            && spec.kind == ParamType::Secret
            && !secrets.contains(&default.value.to_string())
        {
            let name = default.value.to_string();
            report.at(
                default,
                format!(
                    "default of {}: no secret {name:?}: there is no secrets/{name}.yaml",
                    spec.name
                ),
            );
        }
        specs.push(spec);
    }
    specs
}
