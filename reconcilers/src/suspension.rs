//! Suspensions: an operator holds reconciliation of the whole fleet or of one
//! machine, and what a held scope means for each decision.

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

/// Whether `held` stops reconciling `machine`, or with `None`, what belongs to
/// the fleet as a whole (run-requests): a fleet-wide hold stops everything, a
/// machine's only that machine.
pub fn holds(held: &[Scope], machine: Option<&str>) -> bool {
    held.iter().any(|scope| match scope {
        Scope::Fleet => true,
        Scope::Machine(id) => Some(id.as_str()) == machine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
