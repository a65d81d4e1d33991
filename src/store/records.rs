//! What the store keeps, as it keeps it: the record types of its own that
//! its tables hold as JSON (the domain's records — machines' statuses,
//! operations, states — are `linkops_reconcilers`'). A renamed or retyped
//! field here changes what is on disk: `src/store/golden/` holds stored
//! records of every kind kept as JSON, which a test decodes and encodes again.

use linkops_reconcilers::desired::Problem;
use linkops_reconcilers::machine::{Health, Machine};
use linkops_reconcilers::outbox::CommitStatus;
use linkops_reconcilers::role::Role;
use linkops_reconcilers::script::Script;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Refused by policy (lockout, permissions, host key).
    Denied,
}

/// One audit record. Never holds a password or a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: i64,
    /// [`Actor`] as text.
    pub actor: String,
    /// [`AuditAction::name`].
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// What one sync attempt did (the API shows it as `contract::SyncOutcome`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SyncOutcome {
    /// A new revision is in force.
    Applied {
        changed_files: Vec<String>,
        /// The previous revision is not an ancestor: the branch was force-pushed.
        forced: bool,
    },
    /// The branch still points at the applied revision.
    Unchanged,
    /// The revision has problems; the previous one stays in force.
    Invalid { problems: Vec<Problem> },
    /// Fetching or reading failed; the previous revision stays in force.
    Failed { error: String },
}

impl SyncOutcome {
    /// The outcome's name, as stored and as metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            SyncOutcome::Applied { .. } => "applied",
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Invalid { .. } => "invalid",
            SyncOutcome::Failed { .. } => "failed",
        }
    }
}

/// One sync attempt. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub seq: u64,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    /// What asked for it: `interval`, `startup`, `api:<user>`, `webhook`, `watch`.
    pub trigger: String,
    /// The commit fetched, when the fetch got that far.
    pub revision: Option<String>,
    /// The revision in force before this attempt.
    pub previous: Option<String>,
    pub outcome: SyncOutcome,
}

/// What a replica that does not lead asks the leader for (it alone fetches Git).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncAsk {
    /// A sync, recorded with this trigger.
    Sync { trigger: String },
    /// A plan of another branch's head.
    Plan { branch: String },
    /// Another branch was deleted: forget what was fetched of it.
    Forget { branch: String },
}

/// Something a revision declares, or declared: a machine or a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared<T> {
    pub spec: T,
    /// The revision that last declared it.
    pub revision: String,
    /// Set when a later revision dropped it; its history is kept.
    pub removed_at_ms: Option<i64>,
}

/// A machine the inventory declares, or declared.
pub type MachineRecord = Declared<Machine>;

/// A script of the catalog, current or removed.
pub type ScriptRecord = Declared<Script>;

/// A user account. Only the argon2 hash of the password is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// Over the whole fleet; none: only what `access.yaml` gives.
    pub role: Option<Role>,
    pub password_hash: String,
    pub created_at_ms: i64,
    /// Tokens issued before this instant are no longer accepted.
    pub password_changed_at_ms: i64,
    /// Who an identity provider says they are, for a person who signs in
    /// there (their password hash is then empty: no password opens it).
    #[serde(default)]
    pub sso: Option<SsoIdentity>,
    /// Set by an admin: no sign-in, and every session ends.
    #[serde(default)]
    pub disabled: bool,
    /// A TOTP second factor, once enrolled (or while being enrolled).
    #[serde(default)]
    pub second_factor: Option<SecondFactor>,
}

impl User {
    /// Their second factor, once a first code confirmed it.
    pub fn second_factor_enrolled(&self) -> Option<&SecondFactor> {
        (self.second_factor.as_ref()).filter(|factor| factor.confirmed_at_ms.is_some())
    }
}

/// A user's TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondFactor {
    /// The shared secret, base32: the authenticator app holds it too.
    pub secret_base32: String,
    /// When a first code confirmed it; until then it is being enrolled and asks nothing.
    pub confirmed_at_ms: Option<i64>,
    /// The last time step a code was taken for: a code is taken once.
    pub last_step: u64,
    /// SHA-256 of each recovery code not yet used (a code has 95 bits).
    pub recovery_sha256: Vec<String>,
}

/// An API token: its secret is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Names it in `lot_<id>_<secret>` and in the API.
    pub id: String,
    pub name: String,
    /// The user it acts for (then within what they hold); none: a service
    /// token, made by an admin, acting with its own grant alone.
    pub owner: Option<String>,
    pub grant: linkops_reconcilers::grant::Grant,
    /// SHA-256 of the secret, hex: a random secret of 190 bits needs no slow hash.
    pub secret_sha256: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
}

/// A person as an identity provider knows them, as of their last sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SsoIdentity {
    /// The provider's name in `[[auth.oidc]]`.
    pub provider: String,
    /// The provider's stable id for them (`sub`).
    pub subject: String,
    /// Their groups when they last signed in: what `access.yaml` gives to groups.
    pub groups: Vec<String>,
    pub signed_in_at_ms: i64,
}

/// Consecutive failed logins for one user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFailures {
    pub count: u32,
    pub last_failure_ms: i64,
    /// While in the future, every login for the name is refused.
    pub locked_until_ms: Option<i64>,
}

/// One health check, as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSample {
    pub at_ms: i64,
    pub health: Health,
    pub enrolled: bool,
}

/// A commit status the forge accepted, with when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedStatus {
    pub status: CommitStatus,
    pub posted_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::super::engine::{Json, Table};
    use super::super::schema::*;

    /// Fields added since the golden records were written, each with the value
    /// (JSON) a record without it decodes to: a new field must default, so that
    /// what an earlier version stored still reads.
    const ADDED: &[(&str, &str)] = &[
        // Issue 30: how the daemon logs in to a machine, and the certificate
        // an operation's host or a terminal session logged in with.
        ("auth", r#""key""#),
        ("certificate", "null"),
        // Issue 31: the grants of `access.yaml` in an applied desired state;
        // a user's identity at a provider, and whether an admin disabled them.
        ("grants", "[]"),
        ("sso", "null"),
        ("disabled", "false"),
        ("second_factor", "null"),
        ("protected", "false"),
        // Issue 32: the secrets of an applied desired state and who can read
        // them; the secrets an operation's parameters gave its script.
        ("secrets", "{}"),
        ("secrets", "[]"),
        ("recipients", r#"{"all":[],"tags":{}}"#),
        // Issue 33: the custom facts of an applied desired state.
        ("custom_facts", "{}"),
        // Issue 34: its schedules, and the zone a declared state's windows are read in.
        ("schedules", "{}"),
        // Issue 34: its inbound triggers and approval rules.
        ("triggers", "{}"),
        ("approvals", "[]"),
        ("zone", r#""UTC""#),
    ];

    /// `encoded` without the [`ADDED`] fields that `stored` lacks, each checked
    /// to hold its default.
    fn without_added(encoded: &serde_json::Value, stored: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match (encoded, stored) {
            (Value::Object(encoded), Value::Object(stored)) => {
                let mut kept = serde_json::Map::new();
                for (name, value) in encoded {
                    // A name added to records of several kinds has a default for each.
                    let defaults: Vec<Value> = (ADDED.iter())
                        .filter(|(added, _)| added == name)
                        .map(|(_, default)| serde_json::from_str(default).unwrap())
                        .collect();
                    match (stored.get(name), defaults.is_empty()) {
                        (Some(was), _) => {
                            kept.insert(name.clone(), without_added(value, was));
                        }
                        (None, false) => {
                            assert!(
                                defaults.contains(value),
                                "{name}: a record without it must read as one of {defaults:?}"
                            );
                        }
                        (None, true) => {
                            kept.insert(name.clone(), value.clone());
                        }
                    }
                }
                Value::Object(kept)
            }
            (Value::Array(encoded), Value::Array(stored)) => Value::Array(
                encoded
                    .iter()
                    .zip(stored.iter().chain(std::iter::repeat(&Value::Null)))
                    .map(|(value, was)| without_added(value, was))
                    .collect(),
            ),
            (encoded, _) => encoded.clone(),
        }
    }

    /// Decodes `src/store/golden/<table>.json` (records as a store of an
    /// earlier version wrote them) as the table's record type, and encodes
    /// each again: a field renamed, retyped or dropped fails here (a field
    /// added must default, and is listed in [`ADDED`]).
    fn decodes<K, T: DeserializeOwned + Serialize>(table: Table<K, Json<T>>) -> &'static str {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/store/golden")
            .join(format!("{}.json", table.name));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let stored: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert!(!stored.is_empty(), "{}: no records", table.name);
        for record in stored {
            let decoded: T = serde_json::from_value(record.clone()).unwrap_or_else(|error| {
                panic!(
                    "{}: a stored record no longer decodes: {error}\n{record}",
                    table.name
                )
            });
            let encoded = without_added(&serde_json::to_value(&decoded).unwrap(), &record);
            assert_eq!(
                encoded, record,
                "{}: a stored record encodes otherwise now",
                table.name
            );
        }
        table.name
    }

    #[test]
    fn every_kind_of_stored_record_still_reads_as_it_was_written() {
        let checked = [
            decodes(USERS),
            decodes(LOGIN_FAILURES),
            decodes(MACHINES),
            decodes(MACHINE_STATUS),
            decodes(HEALTH_HISTORY),
            decodes(RUN_REQUESTS),
            decodes(SCRIPTS),
            decodes(OPERATIONS),
            decodes(OPERATION_HOSTS),
            decodes(OPERATION_EVENTS),
            decodes(SYNC_HISTORY),
            decodes(APPLIED_STATE),
            decodes(SYNC_ASKS),
            decodes(TERMINAL_WORKSPACES),
            decodes(TERMINAL_SESSIONS),
            decodes(STATE_STATUS),
            decodes(STATE_TARGETS),
            decodes(STATE_CHECKS),
            decodes(OUTBOX),
            decodes(OUTBOX_DEAD),
            decodes(FORGE_STATUSES),
            decodes(HOST_CERTIFICATES),
            decodes(CA_REVOCATIONS),
            decodes(API_TOKENS),
            decodes(MACHINE_FACTS),
            decodes(FACT_CHANGES),
            decodes(ROLLUPS),
            decodes(SCHEDULE_FIRES),
            decodes(TRIGGER_RUNS),
            decodes(APPROVALS),
            decodes(AUDIT_LOG),
        ];
        // The rest hold a number, a text, nothing or raw bytes.
        let plain = [
            META.name,
            RETIRED_NAMES.name,
            OPERATION_INDEX.name,
            OPERATIONS_RUNNING.name,
            STOP_ASKS.name,
            FLEET_CHANGES.name,
            TERMINAL_SESSIONS_OPEN.name,
            TERMINAL_RECORDINGS.name,
            TERMINAL_HOLDERS.name,
            SUSPENSIONS.name,
            WEBHOOK_DELIVERIES.name,
            OUTBOX_CHANNELS.name,
            SCHEDULE_SINCE.name,
        ];
        let covered: BTreeSet<&str> = checked.iter().chain(&plain).copied().collect();
        let tables: BTreeSet<&str> = TABLES.into_iter().collect();
        assert_eq!(covered, tables, "a table without stored examples");
        let files: BTreeSet<String> =
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/golden"))
                .unwrap()
                .map(|entry| {
                    entry
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .replace(".json", "")
                })
                .collect();
        assert_eq!(files, checked.iter().map(|t| t.to_string()).collect());
    }
}
