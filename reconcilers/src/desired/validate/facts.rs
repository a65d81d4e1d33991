//! Custom facts (`facts/*.yaml`): a name that can prefix facts, a bounded
//! script and timeout, and the machines each is gathered on.

use super::*;
use crate::facts::{
    CUSTOM_NAME_PATTERN, CustomFact, DEFAULT_CUSTOM_TIMEOUT, MAX_CUSTOM_SCRIPT_BYTES,
    MAX_CUSTOM_TIMEOUT,
};

static CUSTOM_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(CUSTOM_NAME_PATTERN).expect("a valid pattern"));

pub(super) fn check_custom_fact(
    file: CustomFactFile,
    path: &str,
    known: &Known,
    report: &mut Report,
) -> Option<CustomFact> {
    let CustomFactFile {
        name,
        description,
        script,
        targets,
        timeout,
    } = file;
    let rule = "use lower-case letters, digits and '_', starting with a letter, at most 32 characters: its facts are named <name>.<key>";
    let mut sound = conforms(report, "custom fact name", &name, &CUSTOM_NAME, rule);
    sound = sound && in_its_file(&name, path, super::super::FACTS_DIR, "custom fact", report);
    if script.value.trim().is_empty() {
        report.at(&script, "the script is empty: it prints one JSON object");
        sound = false;
    } else if script.value.len() > MAX_CUSTOM_SCRIPT_BYTES {
        report.at(
            &script,
            format!(
                "the script is {} bytes; a custom fact's is at most {MAX_CUSTOM_SCRIPT_BYTES} (it runs on every machine at every gathering)",
                script.value.len()
            ),
        );
        sound = false;
    }
    let timeout = match timeout {
        None => DEFAULT_CUSTOM_TIMEOUT,
        Some(given) => match duration(&given, report) {
            Some(timeout) if timeout <= MAX_CUSTOM_TIMEOUT => timeout,
            Some(_) => {
                report.at(
                    &given,
                    format!(
                        "a custom fact may take at most {}s",
                        MAX_CUSTOM_TIMEOUT.as_secs()
                    ),
                );
                return None;
            }
            None => return None,
        },
    };
    let targets = match targets {
        Some(targets) => {
            known.no_facts(&targets, "custom facts", report);
            known.check_targets(&targets, report)
        }
        None => Targets::default(),
    };
    sound.then_some(CustomFact {
        name: name.value,
        description,
        targets,
        script: script.value,
        timeout,
    })
}
