//! A script asked to run — by hand through the API, again on retry, by a
//! run-request's file or a declared state's — resolved against the catalog
//! and the inventory: which script, with which values, on which targets.
//! Every way in resolves an ask here, so each refuses the same things.

use std::collections::BTreeMap;

use crate::machine::Machine;
use crate::rollout::Rollout;
use crate::script::{ParamType, ParamValue, Script, Targets};
use crate::secret::Secret;

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
    /// The secrets its `secret` parameters name, by parameter name: each may
    /// be used by the script on every machine the targets select.
    pub secrets: BTreeMap<String, &'a Secret>,
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
    /// Resolves the ask against `scripts`, the inventory `machines` and the
    /// repository's `secrets`; every problem found, in the order of the ask's
    /// parts, when it cannot run.
    pub fn resolve<'a>(
        &self,
        scripts: &'a BTreeMap<String, Script>,
        machines: &[Machine],
        secrets: &'a BTreeMap<String, Secret>,
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
        let mut used = BTreeMap::new();
        let secret_params = (script.params.iter()).filter(|spec| spec.kind == ParamType::Secret);
        // Where facts narrow the targets, every machine they could choose
        // must be within the secret's limits: which ones they choose is not
        // known before the run starts.
        let could = Targets {
            where_: BTreeMap::new(),
            ..targets.clone()
        };
        let selected: std::collections::BTreeSet<String> = match secret_params.clone().next() {
            None => Default::default(),
            Some(_) if could.is_empty() => machines.iter().map(|m| m.id.clone()).collect(),
            Some(_) => could.select(machines).into_iter().collect(),
        };
        let on = || machines.iter().filter(|m| selected.contains(&m.id));
        for spec in secret_params {
            let Some(ParamValue::String(name)) = params.get(&spec.name) else {
                continue;
            };
            let refusal = match secrets.get(name) {
                None => Some(format!(
                    "no secret {name:?}: there is no secrets/{name}.yaml (`linkops secret set {name}` writes one)"
                )),
                Some(secret) => secret.refusal(&script.id, on()).or_else(|| {
                    used.insert(spec.name.clone(), secret);
                    None
                }),
            };
            if let Some(message) = refusal {
                problems.push(Problem::Param {
                    name: spec.name.clone(),
                    message,
                });
            }
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
                secrets: used,
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
                where_: Default::default(),
            },
            rollout: None,
        }
    }

    #[test]
    fn an_ask_resolves_to_its_script_values_and_targets_or_names_every_problem() {
        let (scripts, machines) = (catalog(), machines());
        let fields = |ask: Ask| match ask.resolve(&scripts, &machines, &BTreeMap::new()) {
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
    fn a_secret_must_exist_and_may_go_only_where_its_limits_say() {
        let mut backup = fixtures::script("backup", "pg_dump");
        backup.params = vec![ParamSpec {
            kind: ParamType::Secret,
            ..param("PASSWORD", None)
        }];
        let scripts = BTreeMap::from([("backup".to_owned(), backup)]);
        let secret = Secret {
            name: "db-password".into(),
            description: String::new(),
            file: "secrets/db-password.yaml".into(),
            scripts: vec!["backup".into()],
            targets: Targets {
                machines: Vec::new(),
                tags: vec!["db".into()],
                where_: Default::default(),
            },
            sealed: String::new(),
        };
        let secrets = BTreeMap::from([("db-password".to_owned(), secret)]);
        let resolve = |value: &str, tag: &str| {
            ask("backup", &[("PASSWORD", value)], &[tag])
                .resolve(&scripts, &machines(), &secrets)
                .map(|resolved| resolved.secrets.keys().cloned().collect::<Vec<_>>())
                .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            resolve("db-password", "db"),
            Ok(vec!["PASSWORD".to_owned()])
        );
        assert_eq!(
            resolve("db-password", "web"),
            Err(vec!["parameter PASSWORD: secret \"db-password\" may reach machines tagged db only; web1 is not among them (secrets/db-password.yaml)".to_owned()])
        );
        assert_eq!(
            resolve("nope", "db"),
            Err(vec!["parameter PASSWORD: no secret \"nope\": there is no secrets/nope.yaml (`linkops secret set nope` writes one)".to_owned()])
        );
        // A secret parameter takes a secret's name, never a value.
        let refused = resolve("hunter2 !", "db").unwrap_err();
        assert!(refused[0].contains("the name of a secret"), "{refused:?}");
    }

    #[test]
    fn a_resolved_ask_carries_the_defaults_filled_in() {
        let (scripts, secrets) = (catalog(), BTreeMap::new());
        let resolved = ask("restart", &[("SERVICE", "nginx")], &["web"])
            .resolve(&scripts, &machines(), &secrets)
            .unwrap();
        assert_eq!(resolved.script.id, "restart");
        assert_eq!(
            resolved.params.get("SIGNAL"),
            Some(&ParamValue::String("HUP".into()))
        );
    }
}
