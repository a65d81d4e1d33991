//! Facts: what a machine is — its OS, kernel, memory, disk, pending updates,
//! whether it waits for a reboot — gathered on an interval of its own and
//! kept with a bounded history of what changed. Here: reading the gatherer's
//! output, when facts are due, what changed, and whether a machine matches a
//! selector on them (`where: {reboot_required: true}`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::script::ParamValue;

/// A fact's value: text, a whole number or a flag. A fact the machine could
/// not tell (no package manager the gatherer knows) is absent, not an error.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(untagged)]
pub enum FactValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl std::fmt::Display for FactValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FactValue::Bool(v) => write!(f, "{v}"),
            FactValue::Int(v) => write!(f, "{v}"),
            FactValue::Text(v) => f.write_str(v),
        }
    }
}

/// A machine's facts by name.
pub type Facts = BTreeMap<String, FactValue>;

/// What the daemon last gathered from a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineFacts {
    pub machine_id: String,
    /// When they were last gathered, or tried (Unix ms).
    pub gathered_at_ms: i64,
    pub facts: Facts,
    /// What went wrong in the last gathering, if anything: all of it (the
    /// facts are the last good ones) or a custom fact (its values are).
    #[serde(default)]
    pub error: Option<String>,
}

/// One gathering that changed something: each fact's value before and after
/// (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FactChange {
    pub at_ms: i64,
    pub changed: BTreeMap<String, (Option<FactValue>, Option<FactValue>)>,
}

/// Facts are gathered this often by default (`[facts] interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// Most bytes the gatherer's output may have (more is an error, not a truncation).
pub const MAX_OUTPUT_BYTES: usize = 64 << 10;
/// Most facts one machine may have; a name's longest (bytes) and a text
/// value's (characters: a longer one is cut).
pub const MAX_FACTS: usize = 256;
pub const MAX_NAME_BYTES: usize = 64;
pub const MAX_TEXT_CHARS: usize = 1024;
/// Changes kept per machine; older ones go.
pub const MAX_CHANGES: usize = 100;

/// The facts whose values are whole numbers, and those that are flags; every
/// other fact is text.
const NUMBERS: &[&str] = &[
    "uptime_s",
    "booted_at_ms",
    "cpus",
    "memory_bytes",
    "root_size_bytes",
    "root_used_bytes",
    "root_used_pct",
    "updates",
    "security_updates",
];
const FLAGS: &[&str] = &["reboot_required"];

/// The gatherer's output, `name=value` per line (`unknown` or empty: not
/// told), read into facts; `now_ms` turns the uptime into a boot time. Lines
/// that are not `name=value` are ignored (a login banner, a shell's warning).
pub fn parse(output: &str, now_ms: i64) -> Result<Facts, String> {
    if output.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "the facts' output is {} bytes; at most {MAX_OUTPUT_BYTES}",
            output.len()
        ));
    }
    let mut facts = Facts::new();
    for line in output.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        let named = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !named || value.is_empty() || value == "unknown" {
            continue;
        }
        let value = if NUMBERS.contains(&name) {
            match value.parse::<i64>() {
                Ok(number) => FactValue::Int(number),
                Err(_) => continue,
            }
        } else if FLAGS.contains(&name) {
            match value {
                "true" => FactValue::Bool(true),
                "false" => FactValue::Bool(false),
                _ => continue,
            }
        } else {
            FactValue::Text(value.chars().take(MAX_TEXT_CHARS).collect())
        };
        facts.insert(name.to_owned(), value);
        if facts.len() > MAX_FACTS {
            return Err(format!("more than {MAX_FACTS} facts"));
        }
    }
    if let Some(FactValue::Int(uptime)) = facts.get("uptime_s") {
        let booted = now_ms - uptime.saturating_mul(1000);
        facts.insert("booted_at_ms".into(), FactValue::Int(booted));
    }
    if let (Some(FactValue::Int(size)), Some(FactValue::Int(used))) =
        (facts.get("root_size_bytes"), facts.get("root_used_bytes"))
        && *size > 0
    {
        let percent = used.saturating_mul(100) / size;
        facts.insert("root_used_pct".into(), FactValue::Int(percent));
    }
    Ok(facts)
}

/// A custom fact declared in the config repository (`facts/<name>.yaml`),
/// like Salt's custom grains: a small `sh` script printing a JSON object
/// whose values become facts named `<name>.<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomFact {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The machines it is gathered on; every machine when empty.
    #[serde(default)]
    pub targets: crate::script::Targets,
    pub script: String,
    #[schema(value_type = crate::DurationSchema)]
    pub timeout: Duration,
}

/// A custom fact's name: lower-case letters, digits and `_`.
pub const CUSTOM_NAME_PATTERN: &str = "^[a-z][a-z0-9_]{0,31}$";
/// Most custom facts one repository may declare (each is one more command
/// per machine and gathering).
pub const MAX_CUSTOM_FACTS: usize = 32;
/// A custom fact's script, and its output.
pub const MAX_CUSTOM_SCRIPT_BYTES: usize = 16 << 10;
pub const MAX_CUSTOM_OUTPUT_BYTES: usize = 16 << 10;
/// How long a custom fact may take unless it says (and the most it may say).
pub const DEFAULT_CUSTOM_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CUSTOM_TIMEOUT: Duration = Duration::from_secs(60);

/// A custom fact's output (a JSON object of keys — lower-case letters,
/// digits, `_` — to strings, numbers or booleans; `null`: not told) as
/// facts named `<fact>.<key>`.
pub fn parse_custom(fact: &str, output: &str) -> Result<Facts, String> {
    if output.len() > MAX_CUSTOM_OUTPUT_BYTES {
        return Err(format!(
            "custom fact {fact}: {} bytes of output; at most {MAX_CUSTOM_OUTPUT_BYTES}",
            output.len()
        ));
    }
    let object: BTreeMap<String, serde_json::Value> = serde_json::from_str(output.trim())
        .map_err(|error| format!("custom fact {fact}: not a JSON object of values: {error}"))?;
    let mut facts = Facts::new();
    for (key, value) in object {
        let name = format!("{fact}.{key}");
        let named = !key.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && (key.bytes()).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !named {
            return Err(format!(
                "custom fact {fact}: key {key:?} is not lower-case letters, digits and `_` (at most {MAX_NAME_BYTES} bytes with the fact's name)"
            ));
        }
        let value = match value {
            serde_json::Value::Bool(v) => FactValue::Bool(v),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(v) => FactValue::Int(v),
                None => FactValue::Text(n.to_string()),
            },
            serde_json::Value::String(s) => {
                FactValue::Text(s.chars().take(MAX_TEXT_CHARS).collect())
            }
            serde_json::Value::Null => continue,
            _ => {
                return Err(format!(
                    "custom fact {fact}: {key:?} is not a string, a number or a boolean"
                ));
            }
        };
        facts.insert(name, value);
    }
    if facts.len() > MAX_FACTS {
        return Err(format!("custom fact {fact}: more than {MAX_FACTS} values"));
    }
    Ok(facts)
}

/// One gathering's facts: the gatherer's (`builtin`, already parsed) and
/// each custom fact's output or why it failed. A custom fact that failed
/// keeps its last values (from `last`) and says why in `error`; a whole
/// gathering is never lost to one custom fact.
pub fn gathered(
    machine_id: &str,
    builtin: Facts,
    custom: Vec<(String, Result<String, String>)>,
    last: Option<&MachineFacts>,
    now_ms: i64,
) -> MachineFacts {
    let mut facts = builtin;
    let mut errors = Vec::new();
    for (fact, output) in custom {
        match output.and_then(|output| parse_custom(&fact, &output)) {
            Ok(found) => facts.extend(found),
            Err(error) => {
                let prefix = format!("{fact}.");
                let kept = (last.into_iter())
                    .flat_map(|last| &last.facts)
                    .filter(|(name, _)| name.starts_with(&prefix))
                    .map(|(name, value)| (name.clone(), value.clone()));
                facts.extend(kept);
                errors.push(error);
            }
        }
        if facts.len() > MAX_FACTS {
            errors.push(format!(
                "more than {MAX_FACTS} facts: the rest are left out"
            ));
            while facts.len() > MAX_FACTS {
                facts.pop_last();
            }
            break;
        }
    }
    MachineFacts {
        machine_id: machine_id.to_owned(),
        gathered_at_ms: now_ms,
        facts,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// Longest selector text a query may give (`os=debian-12,reboot_required=true`).
pub const MAX_SELECTOR_BYTES: usize = 1024;

/// A selector written `fact=value[,fact=value…]` (a query string's `where`),
/// as [`crate::script::Targets::where_`] holds it: `true`/`false` are flags,
/// whole numbers numbers, anything else text.
pub fn selector(text: &str) -> Result<BTreeMap<String, ParamValue>, String> {
    if text.len() > MAX_SELECTOR_BYTES {
        return Err(format!(
            "{} bytes; a selector is at most {MAX_SELECTOR_BYTES}",
            text.len()
        ));
    }
    let mut wanted = BTreeMap::new();
    for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?}: write each as fact=value"));
        };
        let name = name.trim();
        let named = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && (name.bytes())
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !named {
            return Err(format!("{name:?} is not a fact's name"));
        }
        let value = value.trim();
        let value = match value {
            "true" => ParamValue::Bool(true),
            "false" => ParamValue::Bool(false),
            _ => match value.parse::<i64>() {
                Ok(number) => ParamValue::Int(number),
                Err(_) => ParamValue::String(value.to_owned()),
            },
        };
        wanted.insert(name.to_owned(), value);
    }
    match wanted.is_empty() {
        true => Err("no fact=value in it".to_owned()),
        false => Ok(wanted),
    }
}

/// How long until a machine's facts are due: now (`Duration::ZERO`) when it
/// has none or was `just_enrolled`, else once `interval` (spread by the
/// machine's own jitter, up to a tenth, so that a fleet's gatherings do not
/// all fall in one minute) has passed since the last gathering.
pub fn due(
    machine_id: &str,
    last: Option<&MachineFacts>,
    just_enrolled: bool,
    interval: Duration,
    now_ms: i64,
) -> Duration {
    let Some(last) = last.filter(|_| !just_enrolled) else {
        return Duration::ZERO;
    };
    let spread = u64::try_from(interval.as_millis() / 10).unwrap_or(u64::MAX);
    let jitter = match spread {
        0 => 0,
        spread => {
            let hash = (machine_id.bytes())
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            hash % spread
        }
    };
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let due_at = (last.gathered_at_ms as u64)
        .saturating_add(interval_ms)
        .saturating_add(jitter);
    Duration::from_millis(due_at.saturating_sub(u64::try_from(now_ms).unwrap_or(0)))
}

/// What changed from `before` to `after`, by fact; empty when nothing did.
/// The uptime and boot time change at every gathering or with a reboot only:
/// the boot time is the change kept.
pub fn changes(
    before: &Facts,
    after: &Facts,
) -> BTreeMap<String, (Option<FactValue>, Option<FactValue>)> {
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| name.as_str() != "uptime_s")
        .filter(|name| before.get(*name) != after.get(*name))
        .filter(
            |name| match (name.as_str(), before.get(*name), after.get(*name)) {
                // The boot time read from the uptime drifts by a second or so: a reboot moves it far.
                ("booted_at_ms", Some(FactValue::Int(a)), Some(FactValue::Int(b))) => {
                    (a - b).abs() > 60_000
                }
                _ => true,
            },
        )
        .map(|name| {
            (
                name.clone(),
                (before.get(name).cloned(), after.get(name).cloned()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn the_gatherer_s_lines_become_typed_facts_and_unknowns_are_left_out() {
        let output = "os=debian-12\nos_name=Debian GNU/Linux 12 (bookworm)\nkernel=6.1.0-18-amd64\n\
            uptime_s=3600\ncpus=4\nmemory_bytes=unknown\nroot_size_bytes=1000\nroot_used_bytes=250\n\
            updates=3\nsecurity_updates=1\nreboot_required=true\nbanner without an equals sign\n\
            BAD NAME=x\ncpus_extra=\n";
        let facts = parse(output, NOW).unwrap();
        let text = |v: &str| FactValue::Text(v.into());
        assert_eq!(facts["os"], text("debian-12"));
        assert_eq!(facts["os_name"], text("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(facts["cpus"], FactValue::Int(4));
        assert_eq!(facts["updates"], FactValue::Int(3));
        assert_eq!(facts["reboot_required"], FactValue::Bool(true));
        assert_eq!(facts["booted_at_ms"], FactValue::Int(NOW - 3_600_000));
        assert_eq!(facts["root_used_pct"], FactValue::Int(25));
        for absent in ["memory_bytes", "BAD NAME", "cpus_extra"] {
            assert!(!facts.contains_key(absent), "{absent}");
        }
        let too_long = "x=y\n".repeat(MAX_OUTPUT_BYTES);
        assert!(parse(&too_long, NOW).unwrap_err().contains("at most"));
    }

    #[test]
    fn custom_facts_are_a_json_object_of_plain_values() {
        let facts = parse_custom(
            "nginx",
            r#"{"version": "1.22.1", "workers": 4, "ok": true, "gone": null}"#,
        )
        .unwrap();
        assert_eq!(facts["nginx.version"], FactValue::Text("1.22.1".into()));
        assert_eq!(facts["nginx.workers"], FactValue::Int(4));
        assert_eq!(facts.len(), 3);
        assert!(parse_custom("nginx", r#"{"nested": {"a": 1}}"#).is_err());
        assert!(parse_custom("nginx", "not json").is_err());
    }

    #[test]
    fn a_failing_custom_fact_keeps_its_last_values_and_says_why_beside_the_rest() {
        let text = |v: &str| FactValue::Text(v.into());
        let last = MachineFacts {
            machine_id: "web1".into(),
            gathered_at_ms: NOW - 1000,
            facts: Facts::from([
                ("os".into(), text("debian-11")),
                ("nginx.version".into(), text("1.22.1")),
                ("raid.ok".into(), FactValue::Bool(true)),
            ]),
            error: None,
        };
        let builtin = Facts::from([("os".into(), text("debian-12"))]);
        let custom = vec![
            (
                "nginx".into(),
                Err("custom fact nginx: exited with 127".into()),
            ),
            ("raid".into(), Ok(r#"{"ok": false}"#.into())),
            ("bad".into(), Ok(r#"{"Has Space": 1}"#.into())),
        ];
        let now = gathered("web1", builtin, custom, Some(&last), NOW);
        assert_eq!(now.facts["os"], text("debian-12"));
        assert_eq!(now.facts["nginx.version"], text("1.22.1"));
        assert_eq!(now.facts["raid.ok"], FactValue::Bool(false));
        assert!(!now.facts.keys().any(|k| k.starts_with("bad.")));
        let error = now.error.unwrap();
        assert!(error.contains("exited with 127"), "{error}");
        assert!(error.contains("\"Has Space\""), "{error}");
        let clean = gathered("web1", Facts::new(), Vec::new(), None, NOW);
        assert_eq!((clean.error, clean.gathered_at_ms), (None, NOW));
    }

    #[test]
    fn a_selector_reads_flags_numbers_and_text_and_refuses_what_names_no_fact() {
        let wanted = selector("os=debian-12, reboot_required=true,updates=0").unwrap();
        assert_eq!(wanted["os"], ParamValue::String("debian-12".into()));
        assert_eq!(wanted["reboot_required"], ParamValue::Bool(true));
        assert_eq!(wanted["updates"], ParamValue::Int(0));
        assert_eq!(selector("nginx.version=1.22").unwrap().len(), 1);
        for bad in [
            "",
            "os",
            "OS=x",
            "a b=1",
            &format!("os={}", "x".repeat(1100)),
        ] {
            assert!(selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn facts_fall_due_on_their_interval_spread_per_machine_and_at_once_after_enrollment() {
        let hour = Duration::from_secs(3600);
        let gathered = |at_ms| MachineFacts {
            machine_id: "web1".into(),
            gathered_at_ms: at_ms,
            facts: Facts::new(),
            error: None,
        };
        assert_eq!(due("web1", None, false, hour, NOW), Duration::ZERO);
        let last = gathered(NOW);
        assert_eq!(due("web1", Some(&last), true, hour, NOW), Duration::ZERO);
        let left = due("web1", Some(&last), false, hour, NOW);
        assert!(left >= hour && left < hour + hour / 10, "{left:?}");
        // Machines spread: not every one at the same instant.
        let spread: std::collections::BTreeSet<Duration> = (0..20)
            .map(|n| due(&format!("m{n}"), Some(&last), false, hour, NOW))
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
        let long_ago = gathered(NOW - 2 * 3_600_000);
        assert_eq!(
            due("web1", Some(&long_ago), false, hour, NOW),
            Duration::ZERO
        );
    }

    #[test]
    fn a_change_is_what_differs_but_the_clock_s_own_drift() {
        let facts = |pairs: &[(&str, FactValue)]| -> Facts {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        let before = facts(&[
            ("kernel", FactValue::Text("6.1".into())),
            ("uptime_s", FactValue::Int(100)),
            ("booted_at_ms", FactValue::Int(NOW)),
            ("updates", FactValue::Int(0)),
        ]);
        let drifted = facts(&[
            ("kernel", FactValue::Text("6.1".into())),
            ("uptime_s", FactValue::Int(3700)),
            ("booted_at_ms", FactValue::Int(NOW + 800)),
            ("updates", FactValue::Int(0)),
        ]);
        assert!(changes(&before, &drifted).is_empty());
        let rebooted = facts(&[
            ("kernel", FactValue::Text("6.2".into())),
            ("booted_at_ms", FactValue::Int(NOW + 7_200_000)),
            ("reboot_required", FactValue::Bool(false)),
        ]);
        let changed = changes(&before, &rebooted);
        let names: Vec<&str> = changed.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["booted_at_ms", "kernel", "reboot_required", "updates"]
        );
        assert_eq!(changed["updates"], (Some(FactValue::Int(0)), None));
    }
}
