//! A script asked to run — by hand through the API, again on retry, by a
//! run-request's file or a declared state's — resolved against the catalog
//! and the inventory: which script, with which values, on which targets.
//! Every way in resolves an ask here, so each refuses the same things.

use std::collections::BTreeMap;

use crate::machine::Machine;
use crate::rollout::Rollout;
use crate::script::{ParamValue, Script, Targets};

/// A run as asked for, unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    pub script: String,
    /// The values given, by parameter name.
    pub params: BTreeMap<String, ParamValue>,
    /// As given: empty means the script's default targets.
    pub targets: Targets,
    pub rollout: Option<Rollout>,
}

/// An ask that can run: the catalog's script, its values checked with the
/// defaults filled in, its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub script: &'a Script,
    pub params: BTreeMap<String, ParamValue>,
    pub targets: Targets,
    pub rollout: Option<Rollout>,
}

/// What is wrong with an ask, each about one part of it ([`Problem::field`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("no script {0:?} in the catalog")]
    UnknownScript(String),
    #[error("parameter {name}: {message}")]
    Param { name: String, message: String },
    #[error("no targets given, and script {script} has no default targets")]
    NoTargets { script: String },
    /// A tag that matches nothing is a typo, not an empty run.
    #[error("tag {0:?} matches no machine in links.yaml")]
    UnmatchedTag(String),
    #[error("{0}")]
    Rollout(&'static str),
}

impl Problem {
    /// The part of the ask it is about, as a path into the API's body.
    pub fn field(&self) -> String {
        match self {
            Problem::UnknownScript(_) => "script".into(),
            Problem::Param { name, .. } => format!("params.{name}"),
            Problem::NoTargets { .. } => "targets".into(),
            Problem::UnmatchedTag(_) => "targets.tags".into(),
            Problem::Rollout(_) => "rollout".into(),
        }
    }
}

impl Ask {
    /// Resolves the ask against `scripts` and the inventory `machines`;
    /// every problem found, in the order of the ask's parts, when it cannot run.
    pub fn resolve<'a>(
        &self,
        scripts: &'a BTreeMap<String, Script>,
        machines: &[Machine],
    ) -> Result<Resolved<'a>, Vec<Problem>> {
        let Some(script) = scripts.get(&self.script) else {
            return Err(vec![Problem::UnknownScript(self.script.clone())]);
        };
        let mut problems = Vec::new();
        let params = script
            .resolve_params(&self.params)
            .map_err(|params| {
                problems.extend(
                    params
                        .into_iter()
                        .map(|(name, message)| Problem::Param { name, message }),
                );
            })
            .unwrap_or_default();
        let targets = script.targets_or_default(self.targets.clone());
        if targets.is_empty() {
            problems.push(Problem::NoTargets {
                script: script.id.clone(),
            });
        } else if let Some(tag) = targets.unmatched_tag(machines) {
            problems.push(Problem::UnmatchedTag(tag.to_owned()));
        }
        if let Some(problem) = self.rollout.and_then(|rollout| rollout.problem()) {
            problems.push(Problem::Rollout(problem));
        }
        match problems.is_empty() {
            true => Ok(Resolved {
                script,
                params,
                targets,
                rollout: self.rollout,
            }),
            false => Err(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use crate::script::{ParamSpec, ParamType};

    fn param(name: &str, default: Option<&str>) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            kind: ParamType::String,
            description: String::new(),
            required: default.is_none(),
            default: default.map(|value| ParamValue::String(value.into())),
            values: Vec::new(),
            pattern: None,
        }
    }

    fn catalog() -> BTreeMap<String, Script> {
        let mut restart = fixtures::script("restart", "systemctl restart \"$SERVICE\"");
        restart.params = vec![param("SERVICE", None), param("SIGNAL", Some("HUP"))];
        let mut everywhere = fixtures::script("everywhere", "true");
        everywhere.targets.tags = vec!["web".into()];
        [restart, everywhere]
            .into_iter()
            .map(|script| (script.id.clone(), script))
            .collect()
    }

    fn machines() -> Vec<Machine> {
        vec![
            fixtures::machine("web1", &["web"]),
            fixtures::machine("db1", &["db"]),
        ]
    }

    fn ask(script: &str, params: &[(&str, &str)], tags: &[&str]) -> Ask {
        Ask {
            script: script.into(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).into(), ParamValue::String((*v).into())))
                .collect(),
            targets: Targets {
                machines: Vec::new(),
                tags: tags.iter().map(|t| (*t).into()).collect(),
            },
            rollout: None,
        }
    }

    #[test]
    fn an_ask_resolves_to_its_script_values_and_targets_or_names_every_problem() {
        let (scripts, machines) = (catalog(), machines());
        let fields = |ask: Ask| match ask.resolve(&scripts, &machines) {
            Ok(resolved) => vec![format!("ok {:?}", resolved.targets.tags)],
            Err(problems) => problems.iter().map(Problem::field).collect(),
        };
        let table: [(Ask, &[&str]); 7] = [
            (
                ask("restart", &[("SERVICE", "nginx")], &["db"]),
                &["ok [\"db\"]"],
            ),
            // No targets given: the script's defaults.
            (ask("everywhere", &[], &[]), &["ok [\"web\"]"]),
            (ask("nope", &[], &["db"]), &["script"]),
            (ask("restart", &[], &["db"]), &["params.SERVICE"]),
            (ask("restart", &[("SERVICE", "x")], &[]), &["targets"]),
            (
                ask("restart", &[("SERVICE", "x"), ("EXTRA", "y")], &["typo"]),
                &["params.EXTRA", "targets.tags"],
            ),
            (
                Ask {
                    rollout: Some(Rollout {
                        batch: 0,
                        ..Rollout::default()
                    }),
                    ..ask("everywhere", &[], &[])
                },
                &["rollout"],
            ),
        ];
        for (asked, expected) in table {
            assert_eq!(fields(asked.clone()), expected, "{asked:?}");
        }
    }

    #[test]
    fn a_resolved_ask_carries_the_defaults_filled_in() {
        let scripts = catalog();
        let resolved = ask("restart", &[("SERVICE", "nginx")], &["web"])
            .resolve(&scripts, &machines())
            .unwrap();
        assert_eq!(resolved.script.id, "restart");
        assert_eq!(
            resolved.params.get("SIGNAL"),
            Some(&ParamValue::String("HUP".into()))
        );
    }
}
