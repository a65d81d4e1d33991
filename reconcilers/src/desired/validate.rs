//! Parsing and cross-checking the files of a revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

use super::format::{
    ID_PATTERN, KEY_PATTERN, LinksFile, MachineEntry, PARAM_NAME_PATTERN, ParamEntry,
    RunRequestFile, ScriptEntry, ScriptsFile, StateFile, TargetsEntry, WindowEntry,
};
use super::{
    DesiredState, LINKS_FILE, Problem, RepoFiles, SCRIPTS_FILE, is_run_request, is_state_file,
};
use crate::machine::Machine;
use crate::rollout::Rollout;
use crate::run::RunRequest;
use crate::script::{ParamSpec, ParamType, ParamValue, Script, Targets, anchored};
use crate::state::{self, DeclaredState, Window};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Budgets for one revision's YAML, far above what a real fleet writes (an
/// inventory of 10,000 machines is about 3 MiB and 200,000 nodes) and far below
/// what would hurt the daemon: without them a few MiB of anchors and aliases
/// expand into gigabytes.
pub const MAX_YAML_FILE_BYTES: usize = 4 << 20;
/// All YAML files of a revision together.
pub const MAX_YAML_REVISION_BYTES: usize = 16 << 20;
/// Problems reported for one revision (in file order); the rest are counted.
pub const MAX_REPORTED_PROBLEMS: usize = 200;
/// One script's text (inline or from its file).
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;

/// serde-saphyr's limits for one file, within [`MAX_YAML_FILE_BYTES`].
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_depth: 32,
            max_nodes: 500_000,
            max_events: 2_000_000,
            max_total_scalar_bytes: MAX_YAML_FILE_BYTES,
            max_anchors: 1_000,
            max_aliases: 1_000,
            max_recorded_anchor_bytes: 1 << 20,
            max_recorded_anchor_events: 50_000,
            max_merge_keys: 1_000,
        },
    }
}

/// The schema's patterns, compiled once.
static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(ID_PATTERN).expect("a valid pattern"));
static KEY: LazyLock<Regex> = LazyLock::new(|| Regex::new(KEY_PATTERN).expect("a valid pattern"));
static PARAM_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(PARAM_NAME_PATTERN).expect("a valid pattern"));

/// Reports `value` unless it matches `pattern`; whether it did.
fn conforms(
    report: &mut Report,
    what: &str,
    value: &Spanned<String>,
    pattern: &Regex,
    rule: &str,
) -> bool {
    let ok = pattern.is_match(&value.value);
    if !ok {
        report.at(
            value,
            format!("{what} {:?} is not allowed: {rule}", value.value),
        );
    }
    ok
}

const ID_RULE: &str = "use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters";

/// Collects problems for one file.
struct Report<'a> {
    file: &'a str,
    problems: &'a mut Vec<Problem>,
}

impl Report<'_> {
    fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
            message: message.into(),
        });
    }

    fn at_start(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: 1,
            column: 1,
            message: message.into(),
        });
    }
}

pub fn load(revision: &str, files: &RepoFiles) -> Result<DesiredState, Vec<Problem>> {
    let mut problems = Vec::new();
    let yaml = files.iter().filter(|(path, _)| {
        *path == LINKS_FILE || *path == SCRIPTS_FILE || is_run_request(path) || is_state_file(path)
    });
    let mut total = 0;
    for (path, bytes) in yaml {
        total += bytes.len();
        if total > MAX_YAML_REVISION_BYTES {
            Report { file: path, problems: &mut problems }.at_start(format!(
                "the revision's YAML files reach {MAX_YAML_REVISION_BYTES} bytes here, the most one revision may hold"
            ));
            return Err(problems);
        }
    }

    let links = parse::<LinksFile>(files, LINKS_FILE, Some("machines"), &mut problems);
    let inventory_read = links.as_ref().is_some_and(|links| links.whole);
    let machines = match links {
        Some(links) => check_machines(links.value, &mut problems),
        None => {
            if !files.contains_key(LINKS_FILE) {
                Report { file: LINKS_FILE, problems: &mut problems }
                    .at_start("the repository has no links.yaml (the machine inventory); add one, even with `machines: []`");
            }
            Vec::new()
        }
    };
    let tags: BTreeSet<&str> = machines
        .iter()
        .flat_map(|m| m.tags.iter().map(String::as_str))
        .collect();
    let ids: BTreeSet<&str> = machines.iter().map(|m| m.id.as_str()).collect();
    let known = Known {
        ids,
        tags,
        inventory_read,
    };

    let (scripts, catalog_read) = if files.contains_key(SCRIPTS_FILE) {
        match parse::<ScriptsFile>(files, SCRIPTS_FILE, Some("scripts"), &mut problems) {
            Some(catalog) => (
                check_scripts(catalog.value, files, &known, &mut problems),
                catalog.whole,
            ),
            None => (BTreeMap::new(), false),
        }
    } else {
        (BTreeMap::new(), true)
    };

    let runs = per_file(
        files,
        is_run_request,
        "run-request",
        |request: &RunRequestFile| &request.id,
        &mut problems,
        |request, path, report| check_run(request, path, &scripts, catalog_read, &known, report),
    );
    let states = per_file(
        files,
        is_state_file,
        "state",
        |declared: &StateFile| &declared.id,
        &mut problems,
        |declared, path, report| {
            check_state(declared, path, &scripts, catalog_read, &known, report)
        },
    );

    if problems.is_empty() {
        return Ok(DesiredState {
            revision: revision.to_owned(),
            machines,
            scripts,
            runs,
            states,
            ..DesiredState::default()
        });
    }
    // Files in reading order, and top to bottom within each.
    let rank = |file: &str| match file {
        LINKS_FILE => 0,
        SCRIPTS_FILE => 1,
        file if is_run_request(file) => 2,
        _ => 3,
    };
    problems.sort_by(|a, b| {
        (rank(&a.file), &a.file, a.line, a.column).cmp(&(rank(&b.file), &b.file, b.line, b.column))
    });
    // Every sync record keeps its problems: a revision breaking every one of
    // thousands of entries must not write megabytes per attempt.
    if problems.len() > MAX_REPORTED_PROBLEMS {
        let more = problems.len() - MAX_REPORTED_PROBLEMS;
        problems.truncate(MAX_REPORTED_PROBLEMS);
        let last = problems.last().cloned().expect("more than none");
        problems.push(Problem {
            message: format!(
                "and {more} more problem(s) after this one: at most {MAX_REPORTED_PROBLEMS} are reported per revision"
            ),
            ..last
        });
    }
    Err(problems)
}

/// Reads the files that each hold one object (run-requests, states): each
/// id conforming and unique across the files, then `check`ed into what the
/// revision holds, by id.
fn per_file<F: DeserializeOwned, T>(
    files: &RepoFiles,
    holds_one: fn(&str) -> bool,
    what: &str,
    id: fn(&F) -> &Spanned<String>,
    problems: &mut Vec<Problem>,
    mut check: impl FnMut(F, &str, &mut Report) -> Option<T>,
) -> BTreeMap<String, T> {
    let mut read = BTreeMap::new();
    let mut first_in: BTreeMap<String, String> = BTreeMap::new();
    for path in files.keys().filter(|p| holds_one(p)) {
        let Some(Read { value, .. }) = parse::<F>(files, path, None, problems) else {
            continue;
        };
        let mut report = Report {
            file: path,
            problems,
        };
        let given = id(&value);
        if !conforms(&mut report, &format!("{what} id"), given, &ID, ID_RULE) {
            continue;
        }
        if let Some(first) = first_in.get(&given.value) {
            let message = format!("duplicate {what} id {:?} (also in {first})", given.value);
            report.at(given, message);
            continue;
        }
        let key = given.value.clone();
        first_in.insert(key.clone(), path.clone());
        if let Some(checked) = check(value, path, &mut report) {
            read.insert(key, checked);
        }
    }
    read
}

/// A file as read: whole, or only its good entries (the broken ones reported).
struct Read<T> {
    value: T,
    whole: bool,
}

/// Parses one YAML file; a syntax or schema error becomes a problem at its
/// location. For a file that is one list (`list`: its key), every broken
/// entry is reported, not only the first, and the rest is still read, so
/// its later checks report their problems too.
fn parse<T: DeserializeOwned>(
    files: &RepoFiles,
    path: &str,
    list: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Read<T>> {
    let bytes = files.get(path)?;
    let mut report = Report {
        file: path,
        problems,
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        report.at_start("not valid UTF-8");
        return None;
    };
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        report.at_start("the file is empty");
        return None;
    }
    if bytes.len() > MAX_YAML_FILE_BYTES {
        report.at_start(format!(
            "the file is {} bytes; a config file may have at most {MAX_YAML_FILE_BYTES}",
            bytes.len()
        ));
        return None;
    }
    let error = match serde_saphyr::from_str_with_options::<T>(text, yaml_options()) {
        Ok(value) => return Some(Read { value, whole: true }),
        Err(error) => error,
    };
    let first = yaml_problem(path, 0, &error);
    let cut = match list {
        Some(key) => entries::<T>(path, text, key),
        None => fields::<T>(path, text),
    };
    let Some(Entries { mut broken, rest }) = cut else {
        problems.push(first);
        return None;
    };
    if !broken.contains(&first) {
        broken.push(first);
    }
    problems.extend(broken);
    // The good entries, at their own lines: later problems point at the file.
    serde_saphyr::from_str_with_options::<T>(&rest, yaml_options())
        .ok()
        .map(|value| Read {
            value,
            whole: false,
        })
}

/// A YAML error as a problem, `offset` lines further down the file.
fn yaml_problem(path: &str, offset: u64, error: &serde_saphyr::Error) -> Problem {
    let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
    let rendered = error.without_snippet().to_string();
    // The crate appends the location to its message; we print it in front.
    let suffix = format!(" at line {line}, column {column}");
    let message = rendered
        .strip_suffix(&suffix)
        .unwrap_or(&rendered)
        .to_owned();
    Problem {
        file: path.to_owned(),
        line: line + offset,
        column,
        message,
    }
}

/// A list file taken entry by entry.
struct Entries {
    /// The problem of each entry that does not parse.
    broken: Vec<Problem>,
    /// The file with the broken entries' lines emptied: the same line numbers.
    rest: String,
}

/// Parses each entry of a file that is one block list under `key` on its
/// own (its lines under a `key:` line, so columns and messages are the
/// file's). None when the file cannot be cut that way: it is not one list,
/// the list is in flow style, or it has anchors (an alias may refer to
/// another entry).
fn entries<T: DeserializeOwned>(path: &str, text: &str, key: &str) -> Option<Entries> {
    let mut options = yaml_options();
    if let Some(budget) = options.budget.as_mut() {
        budget.max_anchors = 0;
    }
    let outline: BTreeMap<String, Vec<Spanned<serde::de::IgnoredAny>>> =
        serde_saphyr::from_str_with_options(text, options).ok()?;
    let [(only, entries)] = <[_; 1]>::try_from(outline.into_iter().collect::<Vec<_>>()).ok()?;
    let starts: Vec<usize> = entries
        .iter()
        .map(|entry| usize::try_from(entry.referenced.line()).unwrap_or(usize::MAX))
        .collect();
    let mut lines: Vec<&str> = text.lines().collect();
    // Block style: each entry starts at its own `-`, below the one before.
    let dashed = |start: &usize| {
        *start >= 2
            && lines
                .get(start - 1)
                .is_some_and(|line| line.trim_start().starts_with('-'))
    };
    if only != key || !starts.iter().all(dashed) || !starts.is_sorted_by(|a, b| a < b) {
        return None;
    }
    let mut broken = Vec::new();
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(lines.len(), |next| next - 1);
        let alone = format!("{key}:\n{}\n", lines[start - 1..end].join("\n"));
        if let Err(error) = serde_saphyr::from_str_with_options::<T>(&alone, yaml_options()) {
            // Line 1 of `alone` is the key; line 2 is the entry's first.
            broken.push(yaml_problem(path, *start as u64 - 2, &error));
            lines[start - 1..end].fill("");
        }
    }
    Some(Entries {
        broken,
        rest: lines.join("\n"),
    })
}

/// Parses a file that is one mapping (a run-request, a state) again and
/// again, each time without the top-level key whose lines the last error
/// was in, so that every broken field is reported at once — not one per
/// commit. Stops at an error no single key holds (or a required key gone:
/// its own error is reported already). None when the first error is not
/// within a top-level key.
fn fields<T: DeserializeOwned>(path: &str, text: &str) -> Option<Entries> {
    // A file is parsed at most this often: a state has a dozen fields, and a
    // file of thousands of unknown keys must not be parsed thousands of times.
    const MOST_PARSES: usize = 32;
    let mut lines: Vec<&str> = text.lines().collect();
    // Each top-level key's lines: from its line to the next top-level key.
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| {
            line.starts_with(|c: char| !c.is_whitespace() && c != '#' && c != '-')
                && line.contains(':')
        })
        .map(|(index, _)| index)
        .collect();
    let blocks: Vec<(usize, usize, String)> = starts
        .iter()
        .enumerate()
        .map(|(at, start)| {
            let end = starts.get(at + 1).copied().unwrap_or(lines.len());
            let key = lines[*start].split(':').next().unwrap_or_default().trim();
            (*start, end, key.to_owned())
        })
        .collect();
    // The block holding 1-based `line`.
    let block_of = |line: usize| {
        blocks
            .iter()
            .find(|(start, end, _)| (start + 1..=*end).contains(&line))
            .cloned()
    };
    let mut broken: Vec<Problem> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..=blocks.len().min(MOST_PARSES) {
        let Err(error) =
            serde_saphyr::from_str_with_options::<T>(&lines.join("\n"), yaml_options())
        else {
            break;
        };
        let problem = yaml_problem(path, 0, &error);
        if removed
            .iter()
            .any(|key| problem.message.contains(&format!("missing field `{key}`")))
        {
            break;
        }
        let Some((start, end, key)) = block_of(usize::try_from(problem.line).unwrap_or(0)) else {
            break;
        };
        if removed.contains(&key) {
            break;
        }
        broken.push(problem);
        lines[start..end].fill("");
        removed.push(key);
    }
    (!broken.is_empty()).then(|| Entries {
        broken,
        rest: lines.join("\n"),
    })
}

/// Machine ids and tags of the inventory, for checking references.
struct Known<'a> {
    ids: BTreeSet<&'a str>,
    tags: BTreeSet<&'a str>,
    /// False when links.yaml could not be read: references to machines are
    /// then not checked, rather than all reported as unknown.
    inventory_read: bool,
}

impl Known<'_> {
    /// Reports ids that are not in the inventory and tags no machine has.
    fn check_targets(&self, targets: &TargetsEntry, report: &mut Report) -> Targets {
        let selected = Targets {
            machines: targets.machines.iter().map(|s| s.value.clone()).collect(),
            tags: targets.tags.iter().map(|s| s.value.clone()).collect(),
        };
        if !self.inventory_read {
            return selected;
        }
        for id in &targets.machines {
            if !self.ids.contains(id.value.as_str()) {
                report.at(
                    id,
                    format!("unknown machine {:?}: it is not in links.yaml", id.value),
                );
            }
        }
        for tag in &targets.tags {
            if !self.tags.contains(tag.value.as_str()) {
                report.at(
                    tag,
                    format!("tag {:?} matches no machine in links.yaml", tag.value),
                );
            }
        }
        Targets {
            machines: targets.machines.iter().map(|s| s.value.clone()).collect(),
            tags: targets.tags.iter().map(|s| s.value.clone()).collect(),
        }
    }
}

fn check_machines(links: LinksFile, problems: &mut Vec<Problem>) -> Vec<Machine> {
    let mut report = Report {
        file: LINKS_FILE,
        problems,
    };
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut uuids: BTreeMap<String, String> = BTreeMap::new();
    let mut machines = Vec::new();
    for entry in links.machines {
        let MachineEntry {
            id,
            name,
            host,
            port,
            user,
            key,
            uuid,
            tags,
            labels,
            host_key,
            health_interval,
            concurrency,
        } = entry.value;
        if !conforms(&mut report, "machine id", &id, &ID, ID_RULE) {
            continue;
        }
        if let Some(key) = &key {
            conforms(
                &mut report,
                "key name",
                key,
                &KEY,
                "a key is a plain file name in the daemon's keys directory: letters, digits, '.', '_' and '-', not starting with a dot",
            );
        }
        if let Some(line) = ids.get(&id.value) {
            report.at(
                &id,
                format!("duplicate machine id {:?} (first at line {line})", id.value),
            );
            continue;
        }
        ids.insert(id.value.clone(), id.referenced.line());
        let uuid_text = uuid.value.trim().to_ascii_lowercase();
        if uuid::Uuid::parse_str(&uuid_text).is_err() {
            report.at(
                &uuid,
                format!(
                    "uuid {:?} is not a UUID (like 6f1c1c9e-1f7b-4a3e-9c55-0d2a9a1b7e42)",
                    uuid.value
                ),
            );
        } else if let Some(other) = uuids.insert(uuid_text.clone(), id.value.clone()) {
            report.at(&uuid, format!("uuid {uuid_text} is also the uuid of machine {other:?}; enrollment ids must be unique"));
        }
        if let Some(key) = &host_key {
            let mut fields = key.value.split_whitespace();
            let looks_right = matches!((fields.next(), fields.next()), (Some(alg), Some(_)) if alg.starts_with("ssh-") || alg.starts_with("ecdsa-"));
            if !looks_right {
                report.at(
                    key,
                    "host_key must be an OpenSSH public key line such as `ssh-ed25519 AAAA…`",
                );
            }
        }
        let health_interval = health_interval.and_then(|d| duration(&d, &mut report));
        machines.push(Machine {
            id: id.value,
            name,
            host,
            port,
            user,
            key: key.map(|key| key.value),
            uuid: uuid_text,
            tags,
            labels,
            host_key: host_key.map(|k| k.value.trim().to_owned()),
            health_interval,
            concurrency,
        });
    }
    machines
}

fn check_scripts(
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
        let params = check_params(params, &mut report);
        let timeout = timeout.and_then(|t| duration(&t, &mut report));
        let targets = targets
            .map(|t| known.check_targets(&t, &mut report))
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

fn script_file(file: &Spanned<String>, files: &RepoFiles, report: &mut Report) -> Option<String> {
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

fn check_params(params: Vec<Spanned<ParamEntry>>, report: &mut Report) -> Vec<ParamSpec> {
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
        }
        specs.push(spec);
    }
    specs
}

fn check_run(
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
fn resolve_params(
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

fn check_state(
    declared: StateFile,
    path: &str,
    scripts: &BTreeMap<String, Script>,
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
        rollout,
    } = declared;
    let Some(catalog_script) = scripts.get(&script.value) else {
        if catalog_read {
            report.at(
                &script,
                format!(
                    "unknown script {:?}: it is not in scripts.yaml",
                    script.value
                ),
            );
        }
        return None;
    };
    if catalog_script.check.is_none() {
        report.at(
            &script,
            format!(
                "script {:?} has no check: a declared state needs one to know whether it holds (add `check:` or `check_file:` to it in scripts.yaml)",
                script.value
            ),
        );
    }
    let given = targets.map_or_else(Targets::default, |targets| {
        known.check_targets(&targets, report)
    });
    let targets = catalog_script.targets_or_default(given);
    if targets.is_empty() {
        report.at(
            &id,
            format!(
                "state {:?} has no targets, and script {:?} has no default targets",
                id.value, script.value
            ),
        );
    }
    let resolved = resolve_params(catalog_script, &params, &id, report);
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
    Some(DeclaredState {
        id: id.value,
        file: path.to_owned(),
        description,
        script: script.value,
        targets,
        params: resolved?,
        mode,
        interval: interval?,
        windows: windows.into_iter().collect::<Option<_>>()?,
        rollout: rollout?,
    })
}

/// A rollout as given, if its numbers can work.
fn check_rollout(rollout: &Spanned<Rollout>, report: &mut Report) -> Option<Rollout> {
    match rollout.value.problem() {
        Some(problem) => {
            report.at(rollout, problem);
            None
        }
        None => Some(rollout.value),
    }
}

fn check_window(window: &Spanned<WindowEntry>, report: &mut Report) -> Option<Window> {
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

/// Parses `30s`, `5m`, `1h30m`.
fn duration(text: &Spanned<String>, report: &mut Report) -> Option<Duration> {
    let parsed = text
        .value
        .parse::<jiff::SignedDuration>()
        .ok()
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero());
    if parsed.is_none() {
        report.at(
            text,
            format!(
                "{:?} is not a positive duration such as 30s, 5m or 1h30m",
                text.value
            ),
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::ParamValue;

    #[test]
    fn a_revision_reports_at_most_so_many_problems_and_counts_the_rest() {
        let mut links = String::from("machines:\n");
        for i in 0..MAX_REPORTED_PROBLEMS + 50 {
            links.push_str(&format!("  - {{id: m{i}, name: M, host: h, uuid: nope}}\n"));
        }
        let files: RepoFiles = [("links.yaml".to_owned(), links.into_bytes())].into();
        let problems = load("r1", &files).unwrap_err();
        assert_eq!(problems.len(), MAX_REPORTED_PROBLEMS + 1);
        let last = problems.last().unwrap();
        assert!(
            last.message.starts_with("and 50 more problem(s)"),
            "{}",
            last.message
        );
    }

    #[test]
    fn a_run_request_carries_its_parameters_resolved_once() {
        let files: RepoFiles = [
            (
                "links.yaml",
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
            ),
            (
                "scripts.yaml",
                "scripts:\n  - id: greet\n    name: Greet\n    body: echo\n    params:\n      - {name: name, type: string, default: world}\n      - {name: times, type: int, required: true}\n",
            ),
            (
                "runs/once.yaml",
                "id: once\nscript: greet\ntargets: {tags: [web]}\nparams: {times: \"2\"}\n",
            ),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
        .collect();
        let desired = load("r1", &files).unwrap();
        let run = &desired.runs["once"];
        // As written, for telling an edit after the run…
        assert_eq!(run.params["times"], ParamValue::String("2".into()));
        assert!(!run.params.contains_key("name"));
        // …and what the script gets: typed, defaults filled in.
        assert_eq!(run.resolved["times"], ParamValue::Int(2));
        assert_eq!(run.resolved["name"], ParamValue::String("world".into()));
    }

    #[test]
    fn run_requests_and_states_carry_their_rollouts() {
        let files: RepoFiles = [
            (
                "links.yaml",
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
            ),
            (
                "scripts.yaml",
                "scripts:\n  - {id: motd, name: Motd, body: 'echo hi > /etc/motd', check: 'test -f /etc/motd'}\n",
            ),
            (
                "runs/once.yaml",
                "id: once\nscript: motd\ntargets: {tags: [web]}\nrollout: {canary: 2}\n",
            ),
            ("states/motd.yaml", "id: motd\nscript: motd\ntargets: {tags: [web]}\n"),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
        .collect();
        let desired = load("r1", &files).unwrap();
        let given = Rollout {
            batch: 5,
            canary: 2,
            max_failures: 1,
        };
        assert_eq!(desired.runs["once"].rollout, Some(given));
        let state = &desired.states["motd"];
        assert_eq!(state.rollout, Rollout::default());
        assert_eq!(state.interval, crate::state::DEFAULT_INTERVAL);
        assert_eq!(state.mode, crate::state::Mode::Enforce);
        assert!(state.windows.is_empty());
    }

    #[test]
    fn every_broken_field_of_a_state_file_is_reported_at_once() {
        let files: RepoFiles = [
            (
                "links.yaml",
                "machines:\n  - {id: web1, name: Web, host: 10.0.0.1, uuid: 7d41e0a2-93c8-4b5f-a6d2-0e8b17c4f935, tags: [web]}\n",
            ),
            (
                "scripts.yaml",
                "scripts:\n  - {id: motd, name: Motd, body: 'echo hi > /etc/motd', check: 'test -f /etc/motd'}\n",
            ),
            (
                "states/motd.yaml",
                "id: motd\nscript: motd\nmode: enforced\ntargets: {tags: [web]}\nrollout:\n  canary: many\nwindows:\n  - {days: [funday], from: \"01:00\", to: \"02:00\"}\n",
            ),
        ]
        .into_iter()
        .map(|(path, text)| (path.to_owned(), text.as_bytes().to_vec()))
        .collect();
        let problems = load("r1", &files).unwrap_err();
        let lines: Vec<(u64, bool)> = problems
            .iter()
            .map(|p| (p.line, p.file == "states/motd.yaml"))
            .collect();
        assert_eq!(lines, [(3, true), (6, true), (8, true)], "{problems:?}");
        assert!(problems[0].message.contains("enforced"), "{problems:?}");
    }
}
