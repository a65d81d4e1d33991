//! `access.yaml`: each grant's holder named, its scope naming machines, tags
//! and scripts that exist, and its role meaning what its scope says.

use super::*;
use crate::grant::{Given, Grant, Holder, Scope};
use crate::role::Role;

/// The longest group or user name a grant holds (an identity provider's
/// group names are free text; the daemon's user names are at most 64).
pub const MAX_HOLDER_BYTES: usize = 256;

pub(super) fn check_access(
    access: AccessFile,
    scripts: &BTreeMap<String, Script>,
    catalog_read: bool,
    known: &Known,
    report: &mut Report,
) -> Vec<Given> {
    access
        .grants
        .into_iter()
        .filter_map(|entry| check_grant(entry, scripts, catalog_read, known, report))
        .collect()
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
