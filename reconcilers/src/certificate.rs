//! What a user certificate grants: the login it is good for, how long, what
//! it may open, and the key id that tells the machine's own log who connected
//! and why.
//!
//! The daemon signs one for every connection it opens to a machine that
//! trusts its user CA; this module decides what goes in it, the `ca` module
//! signs it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a connection to a machine is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// Health checks, enrollment reads and declared states' checks: the daemon's own.
    Health,
    /// An operation's scripts, for whoever asked for it (a user, `run:<id>`, `state:<id>`).
    Operation { id: u64, requested_by: String },
    /// A terminal pane of a user's workspace.
    Terminal { workspace: String, user: String },
}

/// What a certificate grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGrant {
    /// The logins it is good for (sshd accepts it for a user it names, or one
    /// its `AuthorizedPrincipalsFile` lists).
    pub principals: Vec<String>,
    /// `linkops:<replica>:<why>`: sshd logs it with each login it accepts.
    pub key_id: String,
    /// From shortly before signing (clocks differ) to this long after.
    pub valid_for: Duration,
    /// Whether it may open a terminal (`permit-pty`); only terminals do.
    pub pty: bool,
    /// The only client address it is good from (`source-address`: an IP
    /// address as text), when the address machines see is known.
    pub source_address: Option<String>,
}

/// How far a certificate's validity reaches back before it was signed, so a
/// machine whose clock is a little behind accepts it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The grant for a connection of `replica` logging in as `login` for `purpose`.
pub fn user_grant(replica: &str, login: &str, purpose: &Purpose, valid_for: Duration) -> UserGrant {
    let why = match purpose {
        Purpose::Health => "health".to_owned(),
        Purpose::Operation { id, requested_by } => format!("op-{id}:{requested_by}"),
        Purpose::Terminal { workspace, user } => format!("terminal:{workspace}:{user}"),
    };
    UserGrant {
        principals: vec![login.to_owned()],
        key_id: format!("linkops:{replica}:{why}"),
        valid_for,
        pty: matches!(purpose, Purpose::Terminal { .. }),
        source_address: None,
    }
}

/// How long a machine's host certificate lasts: enrolling the machine again
/// renews it.
pub const HOST_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a host certificate grants: the names a machine may be reached by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    /// The machine's address and names, as the daemon dials them.
    pub principals: Vec<String>,
    /// `linkops:host:<machine id>`.
    pub key_id: String,
    pub valid_for: Duration,
}

/// The host certificate of machine `machine_id`, reached at `names`
/// (duplicates dropped, order kept).
pub fn host_grant(machine_id: &str, names: &[String]) -> HostGrant {
    let mut principals: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if !principals.contains(name) {
            principals.push(name.clone());
        }
    }
    HostGrant {
        principals,
        key_id: format!("linkops:host:{machine_id}"),
        valid_for: HOST_CERTIFICATE_LIFETIME,
    }
}

/// The certificate a login presented, as the machine's sshd logs it
/// (`ID <key_id> (serial <serial>)`): kept with the operation's host and the
/// terminal session it opened, so LinkOps' record and the machine's own log
/// name the same login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateLogin {
    /// Decimal, as sshd writes it (a JSON number would lose digits above 2^53).
    #[serde(with = "decimal")]
    #[schema(value_type = String, example = "14125390239011839231")]
    pub serial: u64,
    pub key_id: String,
}

/// Which CA signed a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateKind {
    /// A login of the daemon's, to a machine.
    User,
    /// A machine's host key.
    Host,
}

/// A certificate the CA no longer stands behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revocation {
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub serial: u64,
    pub kind: CertificateKind,
    /// The machine whose host certificate it is.
    pub machine: Option<String>,
    pub reason: String,
    pub revoked_by: String,
    pub revoked_at_ms: i64,
    /// By when the certificate has expired anyway (Unix ms): a user
    /// certificate's serial is distributed to the machines until then.
    pub expires_at_ms: i64,
}

/// A host certificate the host CA signed, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedHostCertificate {
    #[serde(with = "decimal")]
    #[schema(value_type = String)]
    pub serial: u64,
    pub machine: String,
    pub principals: Vec<String>,
    /// `SHA256:…` of the host key.
    pub host_key: String,
    pub issued_by: String,
    pub issued_at_ms: i64,
    pub valid_before_ms: i64,
}

/// The user-certificate serials machines must refuse at `now_ms`: those
/// revoked whose certificate has not expired yet (after, sshd refuses it
/// anyway), in order.
pub fn revoked_user_serials(revocations: &[Revocation], now_ms: i64) -> Vec<u64> {
    let mut serials: Vec<u64> = revocations
        .iter()
        .filter(|r| r.kind == CertificateKind::User && r.expires_at_ms > now_ms)
        .map(|r| r.serial)
        .collect();
    serials.sort_unstable();
    serials.dedup();
    serials
}

/// The host-certificate serials the daemon refuses: every one revoked.
pub fn revoked_host_serials(revocations: &[Revocation]) -> std::collections::BTreeSet<u64> {
    revocations
        .iter()
        .filter(|r| r.kind == CertificateKind::Host)
        .map(|r| r.serial)
        .collect()
}

mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(serial: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(serial)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The validity window, in Unix seconds, of a certificate signed at `now`
/// (Unix seconds) for `valid_for`.
pub fn validity(now: u64, valid_for: Duration) -> (u64, u64) {
    (
        now.saturating_sub(CLOCK_SKEW.as_secs()),
        now.saturating_add(valid_for.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_id_names_the_replica_and_why_and_only_terminals_get_a_pty() {
        let five = Duration::from_secs(300);
        let cases = [
            (Purpose::Health, "linkops:r1:health", false),
            (
                Purpose::Operation {
                    id: 42,
                    requested_by: "alice".into(),
                },
                "linkops:r1:op-42:alice",
                false,
            ),
            (
                Purpose::Operation {
                    id: 7,
                    requested_by: "run:nightly".into(),
                },
                "linkops:r1:op-7:run:nightly",
                false,
            ),
            (
                Purpose::Terminal {
                    workspace: "w9".into(),
                    user: "bob".into(),
                },
                "linkops:r1:terminal:w9:bob",
                true,
            ),
        ];
        for (purpose, key_id, pty) in cases {
            let grant = user_grant("r1", "root", &purpose, five);
            assert_eq!(grant.key_id, key_id, "{purpose:?}");
            assert_eq!(grant.pty, pty, "{purpose:?}");
            assert_eq!(grant.principals, ["root"], "{purpose:?}");
            assert_eq!(grant.valid_for, five);
        }
    }

    #[test]
    fn a_host_certificate_names_the_machine_and_each_of_its_names_once() {
        let names = ["10.0.0.5", "web1", "10.0.0.5", "web1.lan"].map(String::from);
        let grant = host_grant("web1", &names);
        assert_eq!(grant.principals, ["10.0.0.5", "web1", "web1.lan"]);
        assert_eq!(grant.key_id, "linkops:host:web1");
        assert_eq!(grant.valid_for, HOST_CERTIFICATE_LIFETIME);
    }

    #[test]
    fn a_serial_is_written_in_decimal_whole() {
        let login = CertificateLogin {
            serial: u64::MAX,
            key_id: "linkops:r1:health".into(),
        };
        let json = serde_json::to_string(&login).unwrap();
        assert_eq!(
            json,
            r#"{"serial":"18446744073709551615","key_id":"linkops:r1:health"}"#
        );
        assert_eq!(
            serde_json::from_str::<CertificateLogin>(&json).unwrap(),
            login
        );
    }

    #[test]
    fn user_serials_are_refused_until_their_certificates_expire_host_serials_for_ever() {
        let revoked = |serial, kind, expires_at_ms| Revocation {
            serial,
            kind,
            machine: None,
            reason: "lost".into(),
            revoked_by: "ada".into(),
            revoked_at_ms: 0,
            expires_at_ms,
        };
        let revocations = [
            revoked(9, CertificateKind::User, 2_000),
            revoked(3, CertificateKind::User, 5_000),
            revoked(7, CertificateKind::User, 1_000),
            revoked(3, CertificateKind::User, 6_000),
            revoked(5, CertificateKind::Host, 1_000),
        ];
        assert_eq!(revoked_user_serials(&revocations, 1_500), [3, 9]);
        assert_eq!(revoked_user_serials(&revocations, 5_500), [3]);
        assert_eq!(revoked_user_serials(&revocations, 9_000), Vec::<u64>::new());
        assert_eq!(
            revoked_host_serials(&revocations)
                .into_iter()
                .collect::<Vec<_>>(),
            [5]
        );
    }

    #[test]
    fn validity_reaches_back_for_skewed_clocks_and_forward_for_its_lifetime() {
        assert_eq!(
            validity(1_000_000, Duration::from_secs(300)),
            (999_940, 1_000_300)
        );
        // Near the epoch (a clock reset to 1970): never before 0.
        assert_eq!(validity(30, Duration::from_secs(300)), (0, 330));
    }
}
