//! `access.yaml`: each grant's holder named, its scope naming machines, tags
//! and scripts that exist, and its role meaning what its scope says.

use super::*;
use crate::approval::{MAX_APPROVERS, Rule};
use crate::grant::{Given, Grant, Holder, Scope};
use crate::role::Role;

/// The longest group or user name a grant holds (an identity provider's
/// group names are free text; the daemon's user names are at most 64).
pub const MAX_HOLDER_BYTES: usize = 256;

/// How long an approval request waits when its rule says nothing.
const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The grants and the approval rules of `access.yaml`.
pub(super) fn check_access(
    access: AccessFile,
    scripts: &BTreeMap<String, Script>,
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> (Vec<Given>, Vec<Rule>) {
    let grants = (access.grants.into_iter())
        .filter_map(|entry| check_grant(entry, scripts, catalog_read, known, report))
        .collect();
    let (mut names, mut rules) = (BTreeSet::new(), Vec::new());
    for entry in access.approvals {
        let name = &entry.value.name;
        if !names.insert(name.value.clone()) {
            let message = format!("approval rule {:?} is named twice", name.value);
            report.at(name, message);
            continue;
        }
        rules.extend(check_approval(entry, scripts, catalog_read, known, report));
    }
    (grants, rules)
}

fn check_approval(
    entry: Spanned<ApprovalEntry>,
    scripts: &BTreeMap<String, Script>,
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> Option<Rule> {
    let ApprovalEntry {
        name,
        tags,
        machines,
        scripts: named,
        approvers,
        role,
        expires,
    } = entry.value;
    let mut fine = true;
    let errors_before = report.problems.len();
    let targets = TargetsEntry {
        machines,
        tags,
        where_: BTreeMap::new(),
    };
    let reached = known.check_targets(&targets, report);
    if catalog_read {
        in_catalog(&named, scripts, report);
    }
    fine &= report.problems.len() == errors_before;
    if !(1..=MAX_APPROVERS).contains(&approvers.value) {
        report.at(
            &approvers,
            format!(
                "approvers is {}: give 1 to {MAX_APPROVERS} (distinct people, never the requester)",
                approvers.value
            ),
        );
        fine = false;
    }
    let role = match role {
        Some(role) if role.value == Role::Viewer => {
            report.at(
                &role,
                "a viewer runs nothing, so approves nothing: give operator or admin",
            );
            return None;
        }
        Some(role) => role.value,
        None => Role::Operator,
    };
    let expires = match expires {
        Some(given) => duration(&given, report)?,
        None => DEFAULT_EXPIRY,
    };
    fine.then_some(Rule {
        name: name.value,
        scope: Scope {
            tags: reached.tags,
            machines: reached.machines,
            scripts: named.iter().map(|s| s.value.clone()).collect(),
        },
        approvers: approvers.value,
        role,
        expires,
    })
}

fn check_grant(
    entry: Spanned<GrantEntry>,
    scripts: &BTreeMap<String, Script>,
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> Option<Given> {
    let GrantEntry {
        to,
        role,
        tags,
        machines,
        scripts: named,
    } = entry.value;
    let mut fine = true;
    let (what, name) = match &to.value {
        Holder::Group(name) => ("group", name),
        Holder::User(name) => ("user", name),
    };
    if name.trim().is_empty() || name.len() > MAX_HOLDER_BYTES || name.chars().any(char::is_control)
    {
        report.at(
            &to,
            format!(
                "{what} name {name:?} is not allowed: 1 to {MAX_HOLDER_BYTES} bytes, no control characters"
            ),
        );
        fine = false;
    }
    let targets = TargetsEntry {
        machines,
        tags,
        where_: BTreeMap::new(),
    };
    let errors_before = report.problems.len();
    let reached = known.check_targets(&targets, report);
    fine &= report.problems.len() == errors_before;
    if catalog_read {
        fine &= in_catalog(&named, scripts, report);
    }
    let scope = Scope {
        tags: reached.tags,
        machines: reached.machines,
        scripts: named.iter().map(|s| s.value.clone()).collect(),
    };
    if role.value == Role::Admin && !scope.is_fleet() {
        report.at(
            &role,
            "an admin grant reaches the whole fleet (it changes the daemon itself): drop its tags, machines and scripts, or make it operator",
        );
        fine = false;
    }
    if role.value == Role::Viewer && !scope.scripts.is_empty() {
        report.at(
            &role,
            "scripts limit what an operator runs; a viewer runs nothing: drop them, or make it operator",
        );
        fine = false;
    }
    fine.then_some(Given {
        to: to.value,
        grant: Grant {
            role: role.value,
            scope,
        },
    })
}
