//! Scripts of the catalog, their typed parameters, and targets (which machines).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::machine::Machine;

/// A script of the catalog, with its body resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Script {
    pub id: String,
    pub name: String,
    pub description: String,
    pub body: String,
    /// What proves a declared state holds: exit 0 holds, 1 drifted, anything
    /// else an error. Same interpreter, parameters and timeout as the body.
    #[serde(default)]
    pub check: Option<String>,
    pub interpreter: String,
    pub params: Vec<ParamSpec>,
    #[schema(value_type = crate::DurationSchema)]
    pub timeout: Duration,
    pub max_parallel: Option<u32>,
    pub targets: Targets,
}

/// The type of a script parameter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Int,
    Bool,
    Enum,
    /// The name of a secret (`secrets/<name>.yaml`); the script gets its value.
    Secret,
}

/// A parameter value as written in YAML: a string, an integer or a boolean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    String(String),
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ParamValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, an integer or a boolean (quote decimals such as \"1.5\")")
            }
            fn visit_bool<E>(self, v: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ParamValue, E> {
                Ok(ParamValue::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ParamValue, E> {
                i64::try_from(v)
                    .map(ParamValue::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E>(self, v: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::String(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for ParamValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ParamValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A parameter value: a string, an integer or a boolean.",
            "type": ["string", "integer", "boolean"]
        })
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::String(v) => f.write_str(v),
        }
    }
}

/// Longest value of one parameter, in bytes.
pub const MAX_PARAM_VALUE_BYTES: usize = 32 << 10;
/// Most bytes all of a run's parameters may take (`NAME=value`, summed). The
/// remote shell gets the whole command as one argument, and Linux caps one
/// argument at 131,072 bytes (MAX_ARG_STRLEN): quoting and the command's frame
/// fit in the rest.
pub const MAX_PARAMS_BYTES: usize = 96 << 10;

/// A typed parameter of a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamType,
    pub description: String,
    pub required: bool,
    pub default: Option<ParamValue>,
    pub values: Vec<String>,
    /// Anchored when checked: the whole value must match.
    pub pattern: Option<String>,
}

impl ParamSpec {
    /// Checks one value against the parameter's type, values and pattern;
    /// returns it as its declared type (an int given as `"2"` is the int 2;
    /// anything given for a string is its text), so records and answers keep
    /// the type the catalog declares.
    pub fn check(&self, value: &ParamValue) -> Result<ParamValue, String> {
        let checked = self.check_type(value)?;
        let bytes = checked.to_string().len();
        if bytes > MAX_PARAM_VALUE_BYTES {
            return Err(format!(
                "the value is {bytes} bytes; a parameter value may have at most {MAX_PARAM_VALUE_BYTES}"
            ));
        }
        Ok(checked)
    }

    fn check_type(&self, value: &ParamValue) -> Result<ParamValue, String> {
        match (self.kind, value) {
            (ParamType::Bool, ParamValue::Bool(b)) => Ok(ParamValue::Bool(*b)),
            (ParamType::Int, ParamValue::Int(i)) => Ok(ParamValue::Int(*i)),
            (ParamType::Int, ParamValue::String(s)) => s
                .trim()
                .parse()
                .map(ParamValue::Int)
                .map_err(|_| format!("expected an integer, got {s:?}")),
            (ParamType::Enum, ParamValue::String(s)) => {
                if self.values.contains(s) {
                    Ok(ParamValue::String(s.clone()))
                } else {
                    Err(format!("{s:?} is not one of {}", self.values.join(", ")))
                }
            }
            (ParamType::Secret, ParamValue::String(s)) if crate::desired::is_id(s) => {
                Ok(ParamValue::String(s.clone()))
            }
            (ParamType::String, value) => {
                let text = value.to_string();
                match &self.pattern {
                    Some(pattern) if !anchored(pattern).is_ok_and(|re| re.is_match(&text)) => {
                        Err(format!("{text:?} does not match the pattern {pattern}"))
                    }
                    _ => Ok(ParamValue::String(text)),
                }
            }
            (kind, ParamValue::String(s)) => {
                Err(format!("expected {}, got {s:?}", kind_name(kind)))
            }
            (kind, value) => Err(format!("expected {}, got {value}", kind_name(kind))),
        }
    }
}

/// `pattern` compiled to match the whole value.
pub fn anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

fn kind_name(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "a string",
        ParamType::Int => "an integer",
        ParamType::Bool => "true or false",
        ParamType::Enum => "one of the listed values",
        ParamType::Secret => "the name of a secret in secrets/",
    }
}

impl Script {
    /// The machines a run asks for, or the script's default targets when it names none.
    pub fn targets_or_default(&self, given: Targets) -> Targets {
        if given.is_empty() {
            self.targets.clone()
        } else {
            given
        }
    }

    /// Checks the values given for a run against the parameters and fills in
    /// defaults. Every problem is reported, by parameter name.
    pub fn resolve_params(
        &self,
        given: &BTreeMap<String, ParamValue>,
    ) -> Result<BTreeMap<String, ParamValue>, Vec<(String, String)>> {
        let mut resolved = BTreeMap::new();
        let mut problems = Vec::new();
        for name in given.keys() {
            if !self.params.iter().any(|p| &p.name == name) {
                problems.push((
                    name.clone(),
                    format!("script {} has no parameter {name:?}", self.id),
                ));
            }
        }
        for spec in &self.params {
            match given.get(&spec.name).or(spec.default.as_ref()) {
                Some(value) => match spec.check(value) {
                    Ok(checked) => {
                        resolved.insert(spec.name.clone(), checked);
                    }
                    Err(message) => problems.push((spec.name.clone(), message)),
                },
                None if spec.required => {
                    problems.push((
                        spec.name.clone(),
                        format!("parameter {} is required", spec.name),
                    ));
                }
                None => {}
            }
        }
        let total: usize = resolved
            .iter()
            .map(|(name, value)| name.len() + value.to_string().len() + "LINKOPS_PARAM_=".len())
            .sum();
        if problems.is_empty() && total > MAX_PARAMS_BYTES {
            let first = resolved.keys().next().cloned().unwrap_or_default();
            problems.push((
                first,
                format!(
                    "the parameters take {total} bytes; at most {MAX_PARAMS_BYTES} fit, because the remote shell receives the command as one argument, which Linux caps at 131072 bytes (MAX_ARG_STRLEN)"
                ),
            ));
        }
        if problems.is_empty() {
            Ok(resolved)
        } else {
            Err(problems)
        }
    }
}

/// Which machines: named ones, and those with any of the tags — of those
/// (or of every machine, when neither is given), the ones whose facts match
/// every one of `where` (`reboot_required: true`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Targets {
    pub machines: Vec<String>,
    pub tags: Vec<String>,
    /// Facts a machine must have, by name (a machine whose facts are not
    /// known yet matches none).
    #[serde(default, rename = "where", skip_serializing_if = "BTreeMap::is_empty")]
    pub where_: BTreeMap<String, ParamValue>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty() && self.tags.is_empty() && self.where_.is_empty()
    }

    /// Whether the selector asks about facts: then it is resolved against
    /// them ([`Targets::on_facts`]) before anything selects with it.
    pub fn asks_facts(&self) -> bool {
        !self.where_.is_empty()
    }

    /// The machines this selects now, named: what a run decided by hand or a
    /// run-request's start records, given each machine's facts (`facts_of`).
    pub fn on_facts<'a>(
        &self,
        machines: &[Machine],
        facts_of: impl Fn(&str) -> Option<&'a crate::facts::Facts>,
    ) -> Targets {
        let named_or_tagged = Targets {
            where_: BTreeMap::new(),
            ..self.clone()
        };
        let candidates: Vec<&Machine> = match named_or_tagged.is_empty() {
            true => machines.iter().collect(),
            false => {
                let chosen: BTreeSet<String> =
                    named_or_tagged.select(machines).into_iter().collect();
                machines.iter().filter(|m| chosen.contains(&m.id)).collect()
            }
        };
        let matching = candidates
            .into_iter()
            .filter(|m| facts_of(&m.id).is_some_and(|facts| self.facts_match(facts)))
            .map(|m| m.id.clone())
            .collect();
        Targets {
            machines: matching,
            tags: Vec::new(),
            where_: BTreeMap::new(),
        }
    }

    /// Whether `facts` hold every fact `where` asks for (a number or a flag
    /// given as text, `"true"`, `"3"`, matches its value).
    pub fn facts_match(&self, facts: &crate::facts::Facts) -> bool {
        use crate::facts::FactValue;
        self.where_
            .iter()
            .all(|(name, wanted)| match (facts.get(name), wanted) {
                (Some(FactValue::Bool(have)), ParamValue::Bool(want)) => have == want,
                (Some(FactValue::Int(have)), ParamValue::Int(want)) => have == want,
                (Some(have), wanted) => have.to_string() == wanted.to_string(),
                (None, _) => false,
            })
    }

    /// A tag of the selector that no machine has: a typo, not an empty selection.
    pub fn unmatched_tag<'a>(&'a self, machines: &[Machine]) -> Option<&'a str> {
        self.tags
            .iter()
            .find(|tag| !machines.iter().any(|m| m.tags.contains(tag)))
            .map(String::as_str)
    }

    /// Ids of the machines selected, in inventory order, each once.
    /// Unknown ids are not in the result (validation reports them).
    pub fn select<'a>(&self, machines: impl IntoIterator<Item = &'a Machine>) -> Vec<String> {
        let tags: BTreeSet<&str> = self.tags.iter().map(String::as_str).collect();
        machines
            .into_iter()
            .filter(|m| {
                self.machines.contains(&m.id) || m.tags.iter().any(|t| tags.contains(t.as_str()))
            })
            .map(|m| m.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ParamType) -> ParamSpec {
        ParamSpec {
            name: "p".into(),
            kind,
            description: String::new(),
            required: false,
            default: None,
            values: vec!["fast".into(), "safe".into()],
            pattern: None,
        }
    }

    #[test]
    fn values_are_checked_and_kept_as_their_declared_type() {
        let s = |v: &str| ParamValue::String(v.into());
        assert_eq!(
            spec(ParamType::Int).check(&ParamValue::Int(3)).unwrap(),
            ParamValue::Int(3)
        );
        assert_eq!(
            spec(ParamType::Int).check(&s(" 42 ")).unwrap(),
            ParamValue::Int(42)
        );
        assert!(spec(ParamType::Int).check(&s("4x")).is_err());
        assert!(spec(ParamType::Bool).check(&s("yes")).is_err());
        assert_eq!(spec(ParamType::Enum).check(&s("safe")).unwrap(), s("safe"));
        assert!(
            spec(ParamType::Enum)
                .check(&s("slow"))
                .unwrap_err()
                .contains("fast, safe")
        );
        assert_eq!(
            spec(ParamType::String).check(&ParamValue::Int(7)).unwrap(),
            s("7")
        );
    }

    #[test]
    fn pattern_must_match_the_whole_value() {
        let mut p = spec(ParamType::String);
        p.pattern = Some("[a-z]+".into());
        assert!(p.check(&ParamValue::String("nginx".into())).is_ok());
        assert!(
            p.check(&ParamValue::String("nginx; rm -rf /".into()))
                .is_err()
        );
    }

    #[test]
    fn resolve_fills_defaults_and_reports_every_problem() {
        let mut required = spec(ParamType::String);
        required.name = "package".into();
        required.required = true;
        let mut defaulted = spec(ParamType::Enum);
        defaulted.name = "mode".into();
        defaulted.default = Some(ParamValue::String("safe".into()));
        let script = Script {
            id: "install".into(),
            name: "Install".into(),
            description: String::new(),
            body: String::new(),
            check: None,
            interpreter: "/bin/sh".into(),
            params: vec![required, defaulted],
            timeout: Duration::from_secs(60),
            max_parallel: None,
            targets: Targets::default(),
        };
        let given = BTreeMap::from([("package".to_owned(), ParamValue::String("htop".into()))]);
        let resolved = script.resolve_params(&given).unwrap();
        assert_eq!(resolved["mode"], ParamValue::String("safe".into()));
        assert_eq!(resolved["package"], ParamValue::String("htop".into()));

        let given = BTreeMap::from([("colour".to_owned(), ParamValue::Bool(true))]);
        let problems = script.resolve_params(&given).unwrap_err();
        let names: Vec<&str> = problems.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["colour", "package"]);
    }

    #[test]
    fn values_and_all_parameters_together_are_bounded() {
        let long = ParamValue::String("x".repeat(MAX_PARAM_VALUE_BYTES + 1));
        let refused = spec(ParamType::String).check(&long).unwrap_err();
        assert!(refused.contains("at most 32768"), "{refused}");

        let params: Vec<ParamSpec> = (0..4)
            .map(|i| ParamSpec {
                name: format!("p{i}"),
                ..spec(ParamType::String)
            })
            .collect();
        let script = Script {
            id: "big".into(),
            name: "Big".into(),
            description: String::new(),
            body: String::new(),
            check: None,
            interpreter: "/bin/sh".into(),
            params,
            timeout: Duration::from_secs(60),
            max_parallel: None,
            targets: Targets::default(),
        };
        let value = ParamValue::String("x".repeat(30 << 10));
        let given = (0..4).map(|i| (format!("p{i}"), value.clone())).collect();
        let problems = script.resolve_params(&given).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("MAX_ARG_STRLEN"), "{problems:?}");
        let three = (0..3).map(|i| (format!("p{i}"), value.clone())).collect();
        assert!(script.resolve_params(&three).is_ok());
    }

    #[test]
    fn where_narrows_the_named_and_tagged_or_the_whole_fleet_to_the_facts_asked() {
        use crate::facts::{FactValue, Facts};
        use crate::fixtures::machine;
        let machines = vec![
            machine("web1", &["web"]),
            machine("web2", &["web"]),
            machine("db1", &["db"]),
        ];
        let facts: BTreeMap<&str, Facts> = BTreeMap::from([
            (
                "web1",
                Facts::from([
                    ("reboot_required".to_owned(), FactValue::Bool(true)),
                    ("updates".to_owned(), FactValue::Int(3)),
                ]),
            ),
            (
                "web2",
                Facts::from([("reboot_required".to_owned(), FactValue::Bool(false))]),
            ),
            (
                "db1",
                Facts::from([
                    ("reboot_required".to_owned(), FactValue::Bool(true)),
                    ("os".to_owned(), FactValue::Text("debian-12".into())),
                ]),
            ),
        ]);
        let chosen = |tags: &[&str], wanted: &[(&str, ParamValue)]| -> Vec<String> {
            let targets = Targets {
                machines: Vec::new(),
                tags: tags.iter().map(|t| (*t).into()).collect(),
                where_: wanted
                    .iter()
                    .map(|(k, v)| ((*k).into(), v.clone()))
                    .collect(),
            };
            assert!(targets.asks_facts());
            targets.on_facts(&machines, |id| facts.get(id)).machines
        };
        assert_eq!(
            chosen(&[], &[("reboot_required", ParamValue::Bool(true))]),
            ["web1", "db1"]
        );
        assert_eq!(
            chosen(&["web"], &[("reboot_required", ParamValue::Bool(true))]),
            ["web1"]
        );
        // Every fact asked must hold; a number or a flag given as text matches too.
        assert_eq!(
            chosen(
                &[],
                &[
                    ("reboot_required", ParamValue::String("true".into())),
                    ("updates", ParamValue::String("3".into()))
                ]
            ),
            ["web1"]
        );
        assert_eq!(
            chosen(&[], &[("os", ParamValue::String("debian-12".into()))]),
            ["db1"]
        );
        // A fact a machine does not have matches nothing.
        assert!(chosen(&[], &[("kernel", ParamValue::String("6.1".into()))]).is_empty());
    }
}
