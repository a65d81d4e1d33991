//! Suspensions: an operator holds reconciliation of the whole fleet or of one
//! machine, and what a held scope means for each decision.

use crate::desired::DesiredState;

/// What a suspension holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Fleet,
    Machine(String),
}

impl Scope {
    /// The fleet's scope when no machine is named.
    pub fn of(machine: Option<String>) -> Scope {
        machine.map_or(Scope::Fleet, Scope::Machine)
    }

    pub fn machine(&self) -> Option<&str> {
        match self {
            Scope::Fleet => None,
            Scope::Machine(id) => Some(id),
        }
    }
}

/// The suspensions in force: the configuration's (which holds everything) and
/// the operators' scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub by_config: bool,
    pub scopes: Vec<Scope>,
}

impl Held {
    /// Whether reconciliation of `machine` (with `None`, of the fleet's own objects) is held.
    pub fn holds(&self, machine: Option<&str>) -> bool {
        self.by_config || holds(&self.scopes, machine)
    }

    /// The one rule for every start — a manual run, a retry, a run-request,
    /// a state's apply: nothing starts on a held `machine` (with `None`,
    /// nothing of the fleet's own). Names the suspension and how it is lifted.
    pub fn refusal(&self, machine: Option<&str>) -> Option<String> {
        if self.by_config {
            return Some(
                "reconciliation is suspended by the configuration ([reconcile] suspended = true)"
                    .into(),
            );
        }
        if holds(&self.scopes, None) {
            return Some(
                "reconciliation of the fleet is suspended (POST /api/reconcile/resume {} lifts it)"
                    .into(),
            );
        }
        let machine = machine.filter(|id| holds(&self.scopes, Some(id)))?;
        Some(format!(
            "reconciliation of machine {machine} is suspended \
             (POST /api/reconcile/resume {{\"machine\": {machine:?}}} lifts it)"
        ))
    }
}

/// Whether `held` stops reconciling `machine`, or with `None`, what belongs to
/// the fleet as a whole (run-requests): a fleet-wide hold stops everything, a
/// machine's only that machine.
pub fn holds(held: &[Scope], machine: Option<&str>) -> bool {
    held.iter().any(|scope| match scope {
        Scope::Fleet => true,
        Scope::Machine(id) => Some(id.as_str()) == machine,
    })
}

/// What a resume lets go: the machines to reconcile again, the
/// run-requests to look at again (only the fleet's resume holds those) and
/// the states on the machines it released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub machines: Vec<String>,
    pub runs: Vec<String>,
    pub states: Vec<String>,
    /// Schedules whose fire a suspension held (it starts now, on time or caught up).
    pub schedules: Vec<String>,
}

pub fn released(scope: &Scope, desired: &DesiredState) -> Released {
    let machines = desired
        .machines
        .iter()
        .filter(|m| scope.machine().is_none_or(|id| id == m.id))
        .map(|m| m.id.clone())
        .collect();
    // What targets the released scope: a run-request waits while any machine
    // it targets is held, a state holds its applies there.
    let released = |targets: &crate::script::Targets| match scope {
        Scope::Fleet => true,
        Scope::Machine(id) => targets.select(&desired.machines).contains(id),
    };
    let runs = desired
        .runs
        .values()
        .filter(|run| released(&run.targets))
        .map(|run| run.id.clone())
        .collect();
    let states = desired
        .states
        .values()
        .filter(|state| released(&state.targets))
        .map(|state| state.id.clone())
        .collect();
    let schedules = desired
        .schedules
        .values()
        .filter(|schedule| released(&schedule.targets))
        .map(|schedule| schedule.name.clone())
        .collect();
    Released {
        machines,
        runs,
        states,
        schedules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_releases_its_scope() {
        use crate::fixtures::{machine, run_request, schedule};
        let once = run_request("once", "uptime", Default::default());
        let on_db1 = crate::script::Targets {
            machines: vec!["db1".into()],
            ..Default::default()
        };
        let nightly = schedule("nightly", "backup", on_db1);
        let desired = DesiredState {
            machines: vec![machine("web1", &[]), machine("db1", &[])],
            runs: [("once".to_owned(), once)].into(),
            schedules: [("nightly".to_owned(), nightly)].into(),
            ..DesiredState::default()
        };
        assert_eq!(
            released(&Scope::Fleet, &desired),
            Released {
                machines: vec!["web1".into(), "db1".into()],
                runs: vec!["once".into()],
                states: vec![],
                schedules: vec!["nightly".into()],
            }
        );
        assert_eq!(
            released(&Scope::Machine("db1".into()), &desired),
            Released {
                machines: vec!["db1".into()],
                runs: vec![],
                states: vec![],
                schedules: vec!["nightly".into()],
            }
        );
        assert_eq!(
            released(&Scope::Machine("gone".into()), &desired),
            Released::default()
        );
    }

    #[test]
    fn a_machine_named_fleet_is_a_machine() {
        let fleet = Scope::Machine("fleet".into());
        let cases: &[(&[Scope], Option<&str>, bool)] = &[
            (&[], Some("web1"), false),
            (&[], None, false),
            (&[Scope::Fleet], Some("web1"), true),
            (&[Scope::Fleet], None, true),
            (std::slice::from_ref(&fleet), Some("fleet"), true),
            // Holding the machine called "fleet" holds neither the fleet nor another machine.
            (std::slice::from_ref(&fleet), None, false),
            (std::slice::from_ref(&fleet), Some("web1"), false),
        ];
        for (held, machine, expected) in cases {
            assert_eq!(holds(held, *machine), *expected, "{held:?} {machine:?}");
        }
    }
}
