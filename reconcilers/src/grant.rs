//! Grants: who may do what to which part of the fleet.
//!
//! A grant is a role over a scope — the whole fleet, or the machines of some
//! tags and ids, and for running, some scripts ("operator on tag `web` for
//! `restart-nginx`", "viewer everywhere"). A person holds the grants of their
//! account and of their groups; acting through an API token, only what the
//! token's own grant also allows ([`Held`]). [`Held::permits`] decides each
//! thing they ask for from those and the machines it touches, and says what
//! was missing.

use serde::{Deserialize, Serialize};

use crate::desired::DesiredState;
use crate::machine::Machine;
use crate::role::Role;

/// Which part of the fleet a grant reaches. Empty lists reach everything:
/// no tags and no machines is the whole fleet, no scripts is every script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Scope {
    /// Machines with any of these tags…
    #[serde(default)]
    pub tags: Vec<String>,
    /// …and these machines, by id.
    #[serde(default)]
    pub machines: Vec<String>,
    /// The scripts it may run (operator and above); none: every one.
    #[serde(default)]
    pub scripts: Vec<String>,
}

impl Scope {
    /// Everything.
    pub fn fleet() -> Scope {
        Scope::default()
    }

    /// Whether it reaches every machine and every script.
    pub fn is_fleet(&self) -> bool {
        self.tags.is_empty() && self.machines.is_empty() && self.scripts.is_empty()
    }

    /// Whether it reaches every machine.
    pub fn is_whole_fleet(&self) -> bool {
        self.tags.is_empty() && self.machines.is_empty()
    }

    /// Whether it reaches `machine`.
    pub fn covers(&self, machine: Place) -> bool {
        self.is_whole_fleet()
            || self.machines.iter().any(|id| id == machine.id)
            || machine.tags.iter().any(|tag| self.tags.contains(tag))
    }

    /// Whether it may run `script`.
    pub fn runs(&self, script: &str) -> bool {
        self.scripts.is_empty() || self.scripts.iter().any(|s| s == script)
    }
}

/// A machine as grants see it: its id and tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    pub id: &'a str,
    pub tags: &'a [String],
    /// Running on it asks for a second factor first.
    pub protected: bool,
}

impl<'a> Place<'a> {
    /// A machine no longer in the inventory: only grants over the whole
    /// fleet or naming its id reach its records.
    pub fn gone(id: &'a str) -> Place<'a> {
        Place {
            id,
            tags: &[],
            protected: false,
        }
    }

    /// Machine `id` as `desired`'s inventory has it, else [`gone`](Self::gone).
    pub fn find(desired: Option<&'a DesiredState>, id: &'a str) -> Place<'a> {
        let machine = desired.and_then(|desired| desired.machine(id));
        machine.map_or(Place::gone(id), Place::from)
    }
}

impl<'a> From<&'a Machine> for Place<'a> {
    fn from(machine: &'a Machine) -> Place<'a> {
        Place {
            id: &machine.id,
            tags: &machine.tags,
            protected: machine.protected,
        }
    }
}

/// Whether `need` asks for a second factor within the last minutes, beyond
/// the grant: a terminal (a root shell), running on a protected machine,
/// and changing the daemon itself.
pub fn needs_second_factor(need: Need) -> bool {
    match need {
        Need::Terminal(_) | Need::Administer => true,
        Need::Run { machine, .. } | Need::Approve { machine, .. } => machine.protected,
        Need::See(_) | Need::Check(_) | Need::Workspaces => false,
    }
}

/// Whether a second factor given at `given_at_ms` (none: never) is fresh at
/// `now_ms`, given at most `within_ms` before.
pub fn second_factor_fresh(given_at_ms: Option<i64>, now_ms: i64, within_ms: i64) -> bool {
    given_at_ms.is_some_and(|at| at <= now_ms && now_ms - at <= within_ms)
}

/// A role over a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    pub role: Role,
    #[serde(flatten)]
    pub scope: Scope,
}

impl Grant {
    /// `role` over the whole fleet: what a local account's role is.
    pub fn fleet(role: Role) -> Grant {
        Grant {
            role,
            scope: Scope::fleet(),
        }
    }
}

/// Who holds a grant given in `access.yaml`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Holder {
    /// Everyone whose identity provider puts them in this group (at sign-in).
    Group(String),
    /// One user, by the name they sign in with.
    User(String),
}

/// A grant and who holds it, as `access.yaml` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Given {
    pub to: Holder,
    #[serde(flatten)]
    pub grant: Grant,
}

impl std::fmt::Display for Given {
    /// `group web-team: operator on tags web, machines db-1, scripts deploy`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.to {
            Holder::Group(name) => write!(f, "group {name}: ")?,
            Holder::User(name) => write!(f, "user {name}: ")?,
        }
        write!(f, "{}", self.grant.role)?;
        let scope = &self.grant.scope;
        if scope.is_whole_fleet() {
            f.write_str(" on the whole fleet")?;
        }
        for (what, items) in [
            ("tags", &scope.tags),
            ("machines", &scope.machines),
            ("scripts", &scope.scripts),
        ] {
            if !items.is_empty() {
                write!(f, ", {what} {}", items.join(" "))?;
            }
        }
        Ok(())
    }
}

/// The grants `given` to `user` as a member of `groups`.
pub fn held_by(given: &[Given], user: &str, groups: &[String]) -> Vec<Grant> {
    given
        .iter()
        .filter(|g| match &g.to {
            Holder::User(name) => name == user,
            Holder::Group(group) => groups.contains(group),
        })
        .map(|g| g.grant.clone())
        .collect()
}

/// What someone asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// See a machine: its status, its part of operations, their output.
    See(Place<'a>),
    /// Run `script` on a machine (or stop it there, retry it).
    Run { script: &'a str, machine: Place<'a> },
    /// Check a machine now (reachability, enrollment): no script runs.
    Check(Place<'a>),
    /// Open a shell on a machine: any command, so only a grant of every script.
    Terminal(Place<'a>),
    /// Keep terminal workspaces: a terminal somewhere.
    Workspaces,
    /// Change the daemon itself (users, syncs, the CA): an admin of the whole fleet.
    Administer,
    /// Approve a run of `script` on a machine: `role` over it for the script
    /// (an approval rule's `role`).
    Approve {
        script: &'a str,
        machine: Place<'a>,
        role: Role,
    },
}

/// Why a need is refused: the grant it would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub needed: Role,
    /// What the grant must reach, in words ("machine db-1 for script deploy").
    pub reach: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "this needs {} on {}", self.needed, self.reach)
    }
}

/// Whether `grants` permit `need`; else what is missing.
pub fn permits(grants: &[Grant], need: Need) -> Result<(), Refusal> {
    let held = |role: Role, reaches: &dyn Fn(&Scope) -> bool| {
        grants
            .iter()
            .any(|grant| grant.role >= role && reaches(&grant.scope))
    };
    let (needed, granted, reach) = match need {
        Need::See(machine) => (
            Role::Viewer,
            held(Role::Viewer, &|scope| scope.covers(machine)),
            format!("machine {}", machine.id),
        ),
        Need::Run { script, machine } => (
            Role::Operator,
            held(Role::Operator, &|scope| {
                scope.covers(machine) && scope.runs(script)
            }),
            format!("machine {} for script {script}", machine.id),
        ),
        Need::Check(machine) => (
            Role::Operator,
            held(Role::Operator, &|scope| scope.covers(machine)),
            format!("machine {}", machine.id),
        ),
        Need::Terminal(machine) => (
            Role::Operator,
            held(Role::Operator, &|scope| {
                scope.covers(machine) && scope.scripts.is_empty()
            }),
            format!(
                "machine {} for every script (a terminal runs anything)",
                machine.id
            ),
        ),
        Need::Workspaces => (
            Role::Operator,
            held(Role::Operator, &|scope| scope.scripts.is_empty()),
            "some machine for every script (terminals run anything)".to_owned(),
        ),
        Need::Administer => (
            Role::Admin,
            held(Role::Admin, &Scope::is_fleet),
            "the whole fleet".to_owned(),
        ),
        Need::Approve {
            script,
            machine,
            role,
        } => (
            role,
            held(role, &|scope| scope.covers(machine) && scope.runs(script)),
            format!("machine {} for script {script} (to approve)", machine.id),
        ),
    };
    match granted {
        true => Ok(()),
        false => Err(Refusal { needed, reach }),
    }
}

/// What a request may do: the grants of who makes it and — made with an API
/// token — the token's own grant, which everything asked must fit too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub grants: Vec<Grant>,
    pub within: Option<Grant>,
}

impl Held {
    /// Grants alone (a session signed in, a service token's own grant).
    pub fn grants(grants: Vec<Grant>) -> Held {
        Held {
            grants,
            within: None,
        }
    }

    /// Whether `need` is permitted by the grants, and by the token's grant too.
    pub fn permits(&self, need: Need) -> Result<(), Refusal> {
        permits(&self.grants, need)?;
        match &self.within {
            Some(token) => permits(std::slice::from_ref(token), need).map_err(|refusal| Refusal {
                reach: format!(
                    "{}, which this API token's grant does not reach",
                    refusal.reach
                ),
                ..refusal
            }),
            None => Ok(()),
        }
    }

    /// Whether running `script` on every machine of `machines` is permitted;
    /// else what is needed on those where it is not.
    pub fn permits_run(&self, script: &str, machines: &[Place]) -> Result<(), Refusal> {
        let refused: Vec<&str> = machines
            .iter()
            .filter(|&&machine| self.permits(Need::Run { script, machine }).is_err())
            .map(|machine| machine.id)
            .collect();
        // Refused by the token alone: say so, the fix is another token.
        let by_the_token = self.within.is_some()
            && machines
                .iter()
                .all(|&machine| permits(&self.grants, Need::Run { script, machine }).is_ok());
        match refused.as_slice() {
            [] => Ok(()),
            ids => Err(Refusal {
                needed: Role::Operator,
                reach: format!(
                    "machine{} {} for script {script}{}",
                    if ids.len() == 1 { "" } else { "s" },
                    ids.join(", "),
                    if by_the_token {
                        ", which this API token's grant does not reach"
                    } else {
                        ""
                    }
                ),
            }),
        }
    }

    /// The machines it sees.
    pub fn sight(&self) -> Sight {
        let seen = Sight::of(&self.grants);
        match &self.within {
            Some(token) if !token.scope.is_whole_fleet() => {
                Sight::Within(Box::new(seen), token.scope.clone())
            }
            _ => seen,
        }
    }
}

/// Whether `outer` gives everything `inner` does: a token's grant must be
/// within what its owner holds when it is made.
pub fn contains(outer: &Grant, inner: &Grant) -> bool {
    let (o, i) = (&outer.scope, &inner.scope);
    let machines = o.is_whole_fleet()
        || (!i.is_whole_fleet()
            && i.tags.iter().all(|tag| o.tags.contains(tag))
            && i.machines.iter().all(|id| o.machines.contains(id)));
    let scripts = o.scripts.is_empty()
        || (!i.scripts.is_empty() && i.scripts.iter().all(|s| o.scripts.contains(s)));
    outer.role >= inner.role && machines && scripts
}

/// What someone may see of the fleet, decided once from their grants and
/// asked per machine (lists, streams and tables filter by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sight {
    /// Every machine: a grant over the whole fleet.
    Fleet,
    /// The machines these scopes reach (every grant lets its holder see).
    Scopes(Vec<Scope>),
    /// What the first sees within the scope of an API token's grant.
    Within(Box<Sight>, Scope),
}

impl Sight {
    pub fn of(grants: &[Grant]) -> Sight {
        if grants.iter().any(|grant| grant.scope.is_whole_fleet()) {
            Sight::Fleet
        } else {
            Sight::Scopes(grants.iter().map(|grant| grant.scope.clone()).collect())
        }
    }

    pub fn sees(&self, machine: Place) -> bool {
        match self {
            Sight::Fleet => true,
            Sight::Scopes(scopes) => scopes.iter().any(|scope| scope.covers(machine)),
            Sight::Within(seen, scope) => seen.sees(machine) && scope.covers(machine),
        }
    }
}

/// The highest role any grant gives, anywhere (what the console's menus offer).
pub fn highest_role(grants: &[Grant]) -> Option<Role> {
    grants.iter().map(|grant| grant.role).max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::machine;

    fn on(role: Role, tags: &[&str], machines: &[&str], scripts: &[&str]) -> Grant {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        Grant {
            role,
            scope: Scope {
                tags: list(tags),
                machines: list(machines),
                scripts: list(scripts),
            },
        }
    }

    #[test]
    fn each_need_is_decided_by_the_grants_that_reach_it() {
        let web = machine("web-1", &["web"]);
        let db = machine("db-1", &["db"]);
        let lone = machine("lone", &[]);
        let web_operator = on(Role::Operator, &["web"], &[], &["restart-nginx", "deploy"]);
        let viewer_everywhere = Grant::fleet(Role::Viewer);
        let lone_operator = on(Role::Operator, &[], &["lone"], &[]);
        let web_admin = on(Role::Admin, &["web"], &[], &[]);
        let team = [web_operator.clone(), viewer_everywhere.clone()];
        // (why, the grants held, what is asked, what is missing)
        type Case<'a> = (&'a str, Vec<Grant>, Need<'a>, Result<(), &'a str>);
        let cases: Vec<Case> = vec![
            (
                "sees its tag",
                vec![web_operator.clone()],
                Need::See(Place::from(&web)),
                Ok(()),
            ),
            (
                "not another tag",
                vec![web_operator.clone()],
                Need::See(Place::from(&db)),
                Err("viewer on machine db-1"),
            ),
            (
                "a viewer everywhere sees all",
                team.to_vec(),
                Need::See(Place::from(&db)),
                Ok(()),
            ),
            (
                "runs a granted script",
                team.to_vec(),
                Need::Run {
                    script: "deploy",
                    machine: Place::from(&web),
                },
                Ok(()),
            ),
            (
                "not another script",
                team.to_vec(),
                Need::Run {
                    script: "wipe",
                    machine: Place::from(&web),
                },
                Err("operator on machine web-1 for script wipe"),
            ),
            (
                "not on another tag",
                team.to_vec(),
                Need::Run {
                    script: "deploy",
                    machine: Place::from(&db),
                },
                Err("operator on machine db-1 for script deploy"),
            ),
            (
                "a viewer runs nothing",
                vec![viewer_everywhere.clone()],
                Need::Run {
                    script: "deploy",
                    machine: Place::from(&web),
                },
                Err("operator on machine web-1 for script deploy"),
            ),
            (
                "a check runs no script",
                team.to_vec(),
                Need::Check(Place::from(&web)),
                Ok(()),
            ),
            (
                "scripts limit terminals out",
                team.to_vec(),
                Need::Terminal(Place::from(&web)),
                Err("operator on machine web-1 for every script (a terminal runs anything)"),
            ),
            (
                "a machine by id, every script",
                vec![lone_operator.clone()],
                Need::Terminal(Place::from(&lone)),
                Ok(()),
            ),
            (
                "an id reaches only that machine",
                vec![lone_operator.clone()],
                Need::See(Place::from(&web)),
                Err("viewer on machine web-1"),
            ),
            (
                "an admin of a tag administers nothing",
                vec![web_admin.clone()],
                Need::Administer,
                Err("admin on the whole fleet"),
            ),
            (
                "but operates its tag",
                vec![web_admin.clone()],
                Need::Terminal(Place::from(&web)),
                Ok(()),
            ),
            (
                "workspaces need a terminal somewhere",
                vec![lone_operator.clone()],
                Need::Workspaces,
                Ok(()),
            ),
            (
                "which a scripts-bound grant is not",
                team.to_vec(),
                Need::Workspaces,
                Err("operator on some machine for every script (terminals run anything)"),
            ),
            (
                "an admin of the fleet administers",
                vec![Grant::fleet(Role::Admin)],
                Need::Administer,
                Ok(()),
            ),
            (
                "no grants, nothing",
                vec![],
                Need::See(Place::from(&lone)),
                Err("viewer on machine lone"),
            ),
        ];
        for (why, grants, need, expected) in cases {
            let decided = permits(&grants, need).map_err(|refusal| refusal.to_string());
            let expected = expected.map_err(|reach| format!("this needs {reach}"));
            assert_eq!(decided, expected, "{why}");
        }
    }

    #[test]
    fn a_run_is_permitted_on_all_its_machines_or_refused_naming_the_others() {
        let (web, web2, db) = (
            machine("web-1", &["web"]),
            machine("web-2", &["web"]),
            machine("db-1", &["db"]),
        );
        let grants = Held::grants(vec![on(Role::Operator, &["web"], &[], &["deploy"])]);
        assert_eq!(
            grants.permits_run("deploy", &[Place::from(&web), Place::from(&web2)]),
            Ok(())
        );
        let refused = grants
            .permits_run("deploy", &[Place::from(&web), Place::from(&db)])
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "this needs operator on machine db-1 for script deploy"
        );
        let refused = grants
            .permits_run("wipe", &[Place::from(&web), Place::from(&web2)])
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "this needs operator on machines web-1, web-2 for script wipe"
        );
    }

    #[test]
    fn a_person_sees_the_machines_their_grants_reach_and_their_highest_role() {
        let machines = [
            machine("web-1", &["web"]),
            machine("web-2", &["web", "eu"]),
            machine("db-1", &["db", "eu"]),
        ];
        let grants = [
            on(Role::Operator, &["web"], &[], &["deploy"]),
            on(Role::Viewer, &[], &["db-1"], &[]),
        ];
        let seen = |sight: &Sight| {
            let seen = machines.iter().filter(|m| sight.sees(Place::from(*m)));
            seen.map(|m| m.id.as_str()).collect::<Vec<_>>()
        };
        assert_eq!(seen(&Sight::of(&grants)), ["web-1", "web-2", "db-1"]);
        assert_eq!(seen(&Sight::of(&grants[1..])), ["db-1"]);
        assert!(!Sight::of(&grants).sees(Place::gone("old-web")));
        let everywhere = [grants[0].clone(), Grant::fleet(Role::Viewer)];
        assert_eq!(Sight::of(&everywhere), Sight::Fleet);
        assert!(Sight::of(&everywhere).sees(Place::gone("old-web")));
        assert_eq!(highest_role(&grants), Some(Role::Operator));
        assert_eq!(highest_role(&[]), None);
    }

    #[test]
    fn a_person_holds_their_own_grants_and_their_groups_ones() {
        let given = [
            Given {
                to: Holder::Group("web-team".into()),
                grant: on(Role::Operator, &["web"], &[], &[]),
            },
            Given {
                to: Holder::User("alice".into()),
                grant: Grant::fleet(Role::Viewer),
            },
            Given {
                to: Holder::Group("dba".into()),
                grant: on(Role::Operator, &["db"], &[], &[]),
            },
        ];
        let web = ["web-team".to_owned()];
        assert_eq!(
            held_by(&given, "alice", &web),
            [given[0].grant.clone(), given[1].grant.clone()]
        );
        assert_eq!(held_by(&given, "bob", &web), [given[0].grant.clone()]);
        assert_eq!(held_by(&given, "bob", &[]), []);
        assert_eq!(given[0].to_string(), "group web-team: operator, tags web");
        assert_eq!(
            given[1].to_string(),
            "user alice: viewer on the whole fleet"
        );
    }

    #[test]
    fn a_grant_reads_as_yaml_with_its_scope_beside_its_role() {
        let grant: Grant =
            serde_json::from_str(r#"{"role": "operator", "tags": ["web"], "scripts": ["deploy"]}"#)
                .unwrap();
        assert_eq!(grant, on(Role::Operator, &["web"], &[], &["deploy"]));
        let everywhere: Grant = serde_json::from_str(r#"{"role": "viewer"}"#).unwrap();
        assert!(everywhere.scope.is_fleet());
    }

    #[test]
    fn through_a_token_only_what_both_the_holder_and_the_token_give() {
        let (web, db) = (machine("web-1", &["web"]), machine("db-1", &["db"]));
        let admin = Held::grants(vec![Grant::fleet(Role::Admin)]);
        let token = on(Role::Operator, &["web"], &[], &["deploy"]);
        let through = Held {
            within: Some(token.clone()),
            ..admin.clone()
        };
        let run = |script, machine| Need::Run {
            script,
            machine: Place::from(machine),
        };
        assert_eq!(through.permits(run("deploy", &web)), Ok(()));
        let refused = through.permits(run("wipe", &web)).unwrap_err().to_string();
        assert_eq!(
            refused,
            "this needs operator on machine web-1 for script wipe, which this API token's grant does not reach"
        );
        assert!(through.permits(run("deploy", &db)).is_err());
        let refused = through
            .permits_run("wipe", &[Place::from(&web)])
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .ends_with("which this API token's grant does not reach")
        );
        assert!(through.permits(Need::Administer).is_err());
        assert!(admin.permits(Need::Administer).is_ok());
        // The holder's own limits still hold: a viewer's token runs nothing.
        let viewer = Held {
            grants: vec![Grant::fleet(Role::Viewer)],
            within: Some(token),
        };
        assert!(viewer.permits(run("deploy", &web)).is_err());
        // Seeing: what both reach.
        assert!(through.sight().sees(Place::from(&web)));
        assert!(!through.sight().sees(Place::from(&db)));
        assert_eq!(admin.sight(), Sight::Fleet);
    }

    #[test]
    fn a_grant_contains_another_when_it_gives_at_least_as_much_everywhere_it_reaches() {
        let fleet_operator = Grant::fleet(Role::Operator);
        let web_deploy = on(Role::Operator, &["web"], &[], &["deploy"]);
        let web_viewer = on(Role::Viewer, &["web"], &[], &[]);
        // (why, outer, inner, contained)
        let cases = [
            ("the fleet holds a tag", &fleet_operator, &web_deploy, true),
            (
                "a tag does not hold the fleet",
                &web_deploy,
                &fleet_operator,
                false,
            ),
            (
                "a lower role is held",
                &web_deploy,
                &on(Role::Viewer, &["web"], &[], &["deploy"]),
                true,
            ),
            ("a higher one is not", &web_viewer, &web_deploy, false),
            (
                "scripts must be among the outer's",
                &web_deploy,
                &on(Role::Operator, &["web"], &[], &["wipe"]),
                false,
            ),
            (
                "every script is not some",
                &web_deploy,
                &on(Role::Operator, &["web"], &[], &[]),
                false,
            ),
            (
                "another tag is not held",
                &web_deploy,
                &on(Role::Operator, &["db"], &[], &["deploy"]),
                false,
            ),
        ];
        for (why, outer, inner, contained) in cases {
            assert_eq!(contains(outer, inner), contained, "{why}");
        }
    }

    #[test]
    fn a_terminal_a_protected_machine_and_the_daemon_ask_for_a_fresh_second_factor() {
        let web = machine("web-1", &["web"]);
        let vault = crate::machine::Machine {
            protected: true,
            ..machine("vault", &["db"])
        };
        let run = |machine| Need::Run {
            script: "deploy",
            machine,
        };
        // (why, the need, whether it asks)
        let cases = [
            ("a shell is root", Need::Terminal(Place::from(&web)), true),
            ("changing the daemon", Need::Administer, true),
            (
                "running on a protected machine",
                run(Place::from(&vault)),
                true,
            ),
            ("running elsewhere", run(Place::from(&web)), false),
            ("seeing", Need::See(Place::from(&vault)), false),
            ("checking", Need::Check(Place::from(&vault)), false),
            ("keeping workspaces", Need::Workspaces, false),
        ];
        for (why, need, asks) in cases {
            assert_eq!(needs_second_factor(need), asks, "{why}");
        }
        let minute = 60_000;
        assert!(second_factor_fresh(
            Some(1_000),
            1_000 + minute,
            15 * minute
        ));
        assert!(!second_factor_fresh(
            Some(1_000),
            1_000 + 16 * minute,
            15 * minute
        ));
        assert!(!second_factor_fresh(None, 1_000, 15 * minute));
        assert!(
            !second_factor_fresh(Some(5 * minute), minute, 15 * minute),
            "given in the future"
        );
    }
}
