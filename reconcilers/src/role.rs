//! Roles: what a user may do, each including the ones before it.

use serde::{Deserialize, Serialize};

/// What a user may do. Ordered: each role includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything but users.
    Viewer,
    /// Also runs and stops operations, opens terminals, verifies machines.
    Operator,
    /// Also manages users, triggers syncs, everything.
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected viewer, operator or admin"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}
/// What an account holds over the whole fleet, as written and shown: a
/// role, or `none` — then all it may do is what `access.yaml` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRole(pub Option<Role>);

impl std::str::FromStr for AccountRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(AccountRole(None)),
            role => role
                .parse()
                .map(|role| AccountRole(Some(role)))
                .map_err(|_| {
                    format!("unknown role {role:?}: expected none, viewer, operator or admin")
                }),
        }
    }
}

impl std::fmt::Display for AccountRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(role) => role.fmt(f),
            None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_role_is_a_role_or_none_and_reads_as_written() {
        for written in ["none", "viewer", "operator", "admin"] {
            let role: AccountRole = written.parse().unwrap();
            assert_eq!(role.to_string(), written);
        }
        assert_eq!("none".parse(), Ok(AccountRole(None)));
        let refused = "root".parse::<AccountRole>().unwrap_err();
        assert!(refused.contains("expected none, viewer"), "{refused}");
    }
}
