//! Parsing and cross-checking the files of a revision: one module per kind
//! of file (`machines`, `scripts`, `access`, `runs`, `states`), reading in `parse`.

mod access;
mod facts;
mod machines;
mod parse;
mod runs;
mod schedules;
mod scripts;
mod secrets;
mod states;
#[cfg(test)]
mod tests;
mod triggers;

use access::check_access;
use facts::check_custom_fact;
use machines::check_machines;
pub(crate) use parse::yaml_problem;
use parse::{Read, parse};
use runs::{Asked, check_run};
use schedules::check_schedule;
use scripts::check_scripts;
use secrets::{check_recipients, check_secret, check_secret_scripts};
use states::check_state;
use triggers::check_trigger;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

use super::format::{
    AccessFile, ApprovalEntry, CustomFactFile, GrantEntry, ID_PATTERN, KEY_PATTERN, LinksFile,
    MachineEntry, PARAM_NAME_PATTERN, ParamEntry, RecipientsFile, RunRequestFile, ScheduleFile,
    ScriptEntry, ScriptsFile, SecretFile, StateFile, TargetsEntry, TriggerFile, WindowEntry,
};
use super::{
    ACCESS_FILE, DesiredState, LINKS_FILE, Problem, RECIPIENTS_FILE, RepoFiles, SCRIPTS_FILE,
    is_custom_fact_file, is_run_request, is_schedule_file, is_secret_file, is_state_file,
    is_trigger_file,
};
use crate::ask::{Ask, Problem as AskProblem};
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

/// The schema's patterns, compiled once.
static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(ID_PATTERN).expect("a valid pattern"));
static KEY: LazyLock<Regex> = LazyLock::new(|| Regex::new(KEY_PATTERN).expect("a valid pattern"));
static PARAM_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(PARAM_NAME_PATTERN).expect("a valid pattern"));

/// Whether `value` may be an id in the repository's files ([`ID_PATTERN`]).
pub fn is_id(value: &str) -> bool {
    ID.is_match(value)
}

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
        *path == LINKS_FILE
            || *path == SCRIPTS_FILE
            || *path == ACCESS_FILE
            || *path == RECIPIENTS_FILE
            || is_run_request(path)
            || is_state_file(path)
            || is_secret_file(path)
            || is_custom_fact_file(path)
            || is_schedule_file(path)
            || is_trigger_file(path)
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
    let mut known = Known {
        machines: &machines,
        ids,
        tags,
        inventory_read,
        secrets: BTreeSet::new(),
    };

    let recipients = match parse::<RecipientsFile>(files, RECIPIENTS_FILE, None, &mut problems) {
        Some(read) => {
            let mut report = Report {
                file: RECIPIENTS_FILE,
                problems: &mut problems,
            };
            check_recipients(read.value, &known, &mut report)
        }
        None => Default::default(),
    };
    let secrets_read = per_file(
        files,
        is_secret_file,
        "secret",
        |secret: &SecretFile| &secret.name,
        &mut problems,
        |secret, path, report| Some(check_secret(secret, path, &known, report)),
    );
    known.secrets = secrets_read.keys().cloned().collect();

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

    if catalog_read {
        check_secret_scripts(&secrets_read, &scripts, &mut problems);
    }
    let secrets: BTreeMap<String, crate::secret::Secret> = (secrets_read.into_iter())
        .map(|(name, read)| (name, read.secret))
        .collect();

    let (grants, approvals) =
        match parse::<AccessFile>(files, ACCESS_FILE, Some("grants"), &mut problems) {
            Some(access) => {
                let mut report = Report {
                    file: ACCESS_FILE,
                    problems: &mut problems,
                };
                check_access(access.value, &scripts, catalog_read, &known, &mut report)
            }
            None => (Vec::new(), Vec::new()),
        };

    let runs = per_file(
        files,
        is_run_request,
        "run-request",
        |request: &RunRequestFile| &request.id,
        &mut problems,
        |request, path, report| {
            check_run(
                request,
                path,
                &scripts,
                &secrets,
                catalog_read,
                &known,
                report,
            )
        },
    );
    let states = per_file(
        files,
        is_state_file,
        "state",
        |declared: &StateFile| &declared.id,
        &mut problems,
        |declared, path, report| {
            check_state(
                declared,
                path,
                &scripts,
                &secrets,
                catalog_read,
                &known,
                report,
            )
        },
    );

    let schedules = per_file(
        files,
        is_schedule_file,
        "schedule",
        |schedule: &ScheduleFile| &schedule.name,
        &mut problems,
        |schedule, path, report| {
            check_schedule(
                schedule,
                path,
                schedules::Catalog {
                    scripts: &scripts,
                    secrets: &secrets,
                    states: &states,
                    read: catalog_read,
                },
                &known,
                report,
            )
        },
    );
    let triggers = per_file(
        files,
        is_trigger_file,
        "trigger",
        |trigger: &TriggerFile| &trigger.name,
        &mut problems,
        |trigger, path, report| {
            check_trigger(
                trigger,
                path,
                &scripts,
                &secrets,
                catalog_read,
                &known,
                report,
            )
        },
    );
    let custom_facts = per_file(
        files,
        is_custom_fact_file,
        "custom fact",
        |fact: &CustomFactFile| &fact.name,
        &mut problems,
        |fact, path, report| check_custom_fact(fact, path, &known, report),
    );
    if custom_facts.len() > crate::facts::MAX_CUSTOM_FACTS {
        let last = custom_facts.keys().next_back().expect("more than none");
        let mut report = Report {
            file: super::FACTS_DIR,
            problems: &mut problems,
        };
        report.at_start(format!(
            "{} custom facts (the last {last:?}); at most {}: each is one more command on every machine at every gathering",
            custom_facts.len(),
            crate::facts::MAX_CUSTOM_FACTS
        ));
    }

    if problems.is_empty() {
        return Ok(DesiredState {
            revision: revision.to_owned(),
            machines,
            scripts,
            runs,
            states,
            grants,
            approvals,
            secrets,
            recipients,
            custom_facts,
            schedules,
            triggers,
            ..DesiredState::default()
        });
    }
    // Files in reading order, and top to bottom within each.
    let rank = |file: &str| match file {
        LINKS_FILE => 0,
        SCRIPTS_FILE => 1,
        ACCESS_FILE => 2,
        RECIPIENTS_FILE => 3,
        file if is_secret_file(file) => 4,
        file if is_run_request(file) => 5,
        file if is_state_file(file) => 6,
        _ => 7,
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

/// One secret's file on its own, as `linkops secret` reads it to change it
/// (its references to the inventory and the catalog are left to `load`).
pub fn read_secret(path: &str, bytes: &[u8]) -> Result<crate::secret::Secret, Vec<Problem>> {
    let files = RepoFiles::from([(path.to_owned(), bytes.to_vec())]);
    let known = Known::unread();
    let mut problems = Vec::new();
    let read = parse::<SecretFile>(&files, path, None, &mut problems).map(|read| {
        let mut report = Report {
            file: path,
            problems: &mut problems,
        };
        check_secret(read.value, path, &known, &mut report)
    });
    match (read, problems.is_empty()) {
        (Some(read), true) => Ok(read.secret),
        _ => Err(problems),
    }
}

/// `recipients.yaml` on its own, as `linkops secret` reads it to seal.
pub fn read_recipients(bytes: &[u8]) -> Result<crate::secret::Recipients, Vec<Problem>> {
    let files = RepoFiles::from([(RECIPIENTS_FILE.to_owned(), bytes.to_vec())]);
    let mut problems = Vec::new();
    let read = parse::<RecipientsFile>(&files, RECIPIENTS_FILE, None, &mut problems);
    let recipients = read.map(|read| {
        let mut report = Report {
            file: RECIPIENTS_FILE,
            problems: &mut problems,
        };
        check_recipients(read.value, &Known::unread(), &mut report)
    });
    match (recipients, problems.is_empty()) {
        (Some(recipients), true) => Ok(recipients),
        _ => Err(problems),
    }
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

/// Machine ids and tags of the inventory, for checking references.
struct Known<'a> {
    machines: &'a [Machine],
    ids: BTreeSet<&'a str>,
    tags: BTreeSet<&'a str>,
    /// False when links.yaml could not be read: references to machines are
    /// then not checked, rather than all reported as unknown.
    inventory_read: bool,
    /// The names of the repository's secrets.
    secrets: BTreeSet<String>,
}

impl Known<'_> {
    /// No inventory: references to machines are not checked.
    fn unread() -> Known<'static> {
        Known {
            machines: &[],
            ids: BTreeSet::new(),
            tags: BTreeSet::new(),
            inventory_read: false,
            secrets: BTreeSet::new(),
        }
    }

    /// Reports a `where` given where facts do not select: `what` (a state, a
    /// script's default targets, a secret's limit) names where.
    fn no_facts(&self, targets: &TargetsEntry, what: &str, report: &mut Report) {
        if let Some(value) = targets.where_.values().next() {
            report.at(
                value,
                format!("`where` selects machines by their facts for runs and run-requests only, not for {what}: name tags or machines"),
            );
        }
    }

    /// Reports ids that are not in the inventory, tags no machine has and
    /// fact names that cannot be.
    fn check_targets(&self, targets: &TargetsEntry, report: &mut Report) -> Targets {
        for (name, value) in &targets.where_ {
            let fact = name.len() <= crate::facts::MAX_NAME_BYTES
                && !name.is_empty()
                && (name.bytes()).all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                });
            if !fact {
                report.at(
                    value,
                    format!("{name:?} is not a fact's name (`linkops facts ID` lists them)"),
                );
            }
        }
        let selected = Targets {
            machines: targets.machines.iter().map(|s| s.value.clone()).collect(),
            tags: targets.tags.iter().map(|s| s.value.clone()).collect(),
            where_: (targets.where_.iter())
                .map(|(k, v)| (k.clone(), v.value.clone()))
                .collect(),
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
        selected
    }
}

/// Reports each script of `named` that the catalog has not; whether all are in it.
fn in_catalog(
    named: &[Spanned<String>],
    scripts: &BTreeMap<String, Script>,
    report: &mut Report,
) -> bool {
    let mut all = true;
    for script in named.iter().filter(|s| !scripts.contains_key(&s.value)) {
        let message = format!(
            "unknown script {:?}: it is not in scripts.yaml",
            script.value
        );
        report.at(script, message);
        all = false;
    }
    all
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

/// Whether a file of `dir` holds what it is named for (`schedules/nightly.yaml`
/// the schedule `nightly`); else reported at its name.
fn in_its_file(
    name: &Spanned<String>,
    path: &str,
    dir: &str,
    what: &str,
    report: &mut Report,
) -> bool {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    let stem = file_name.trim_end_matches(".yaml").trim_end_matches(".yml");
    if stem == name.value {
        return true;
    }
    let message = format!(
        "{what} {:?} must be in {dir}/{}.yaml",
        name.value, name.value
    );
    report.at(name, message);
    false
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
