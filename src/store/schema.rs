//! Table definitions, the schema version and the migration step run at open.

use std::path::Path;

use redb::{ReadableDatabase, TableDefinition};

use super::codec::JsonTable;
use super::{Error, Result};

/// Version of the table layout this binary writes. Bump it with a migration step.
pub const SCHEMA_VERSION: u64 = 7;

/// Store metadata: `schema_version`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Users by name.
pub const USERS: JsonTable<&str> = TableDefinition::new("users");
/// Failed-login counters by user name, for accounts only (version 4: unknown
/// names are counted in memory, bounded, so invented names cannot grow the store).
pub const LOGIN_FAILURES: JsonTable<&str> = TableDefinition::new("login_failures");
/// Names of deleted accounts, with when: never reused (version 4).
pub const RETIRED_NAMES: TableDefinition<&str, i64> = TableDefinition::new("retired_names");
/// Machines the inventory declares or declared, by machine id.
pub const MACHINES: JsonTable<&str> = TableDefinition::new("machines");
/// What was last observed of each machine, by machine id.
pub const MACHINE_STATUS: JsonTable<&str> = TableDefinition::new("machine_status");
/// Health samples by (machine id, time in ms); the newest few hundred per machine.
pub const HEALTH_HISTORY: JsonTable<(&str, i64)> = TableDefinition::new("health_history");
/// Run-requests seen in Git, with their claims, by run-request id.
pub const RUN_REQUESTS: JsonTable<&str> = TableDefinition::new("run_requests");
/// The script catalog of the applied revision, by script id.
pub const SCRIPTS: JsonTable<&str> = TableDefinition::new("scripts");
/// Operations by id.
pub const OPERATIONS: JsonTable<u64> = TableDefinition::new("operations");
/// Per-machine results by (operation id, machine id).
pub const OPERATION_HOSTS: JsonTable<(u64, &str)> = TableDefinition::new("operation_hosts");
/// Operations by state, script and machine: `(column, value, operation id)` (version 3).
pub const OPERATION_INDEX: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("operation_index");
/// Each operation's event log (output, state changes, end) by (operation id, sequence number).
pub const OPERATION_EVENTS: JsonTable<(u64, u64)> = TableDefinition::new("operation_events");
/// Git sync attempts by sequence number.
pub const SYNC_HISTORY: JsonTable<u64> = TableDefinition::new("sync_history");
/// Terminal workspaces by id.
pub const TERMINAL_WORKSPACES: JsonTable<&str> = TableDefinition::new("terminal_workspaces");
/// Terminal sessions by id (version 2).
pub const TERMINAL_SESSIONS: JsonTable<u64> = TableDefinition::new("terminal_sessions");
/// Asciicast recordings of terminal sessions by (session id, chunk number) (version 2).
pub const TERMINAL_RECORDINGS: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("terminal_recordings");
/// Suspended reconciliation: `fleet` or a machine id, with since when.
pub const SUSPENSIONS: TableDefinition<&str, i64> = TableDefinition::new("suspensions");
/// Webhook delivery ids already accepted, with when (replay protection).
pub const WEBHOOK_DELIVERIES: TableDefinition<&str, i64> =
    TableDefinition::new("webhook_deliveries");
/// Declared states' status and rollout, by state id (version 6).
pub const STATE_STATUS: JsonTable<&str> = TableDefinition::new("state_status");
/// Each declared state on each of its machines, by (state id, machine id) (version 6).
pub const STATE_TARGETS: JsonTable<(&str, &str)> = TableDefinition::new("state_targets");
/// Check results by (state id, machine id, time in ms); the newest few per machine (version 6).
pub const STATE_CHECKS: JsonTable<(&str, &str, i64)> = TableDefinition::new("state_checks");
/// Commit statuses and notifications waiting for delivery, by number (version 7).
pub const OUTBOX: JsonTable<u64> = TableDefinition::new("outbox");
/// Messages given up on after their last attempt, by number (version 7).
pub const OUTBOX_DEAD: JsonTable<u64> = TableDefinition::new("outbox_dead");
/// The last commit status the forge accepted, by (commit, context) (version 7).
pub const FORGE_STATUSES: JsonTable<(&str, &str)> = TableDefinition::new("forge_statuses");
/// The audit log by sequence number.
pub const AUDIT_LOG: JsonTable<u64> = TableDefinition::new("audit_log");

const VERSION_KEY: &str = "schema_version";

/// Creates missing tables and upgrades older layouts, in one transaction.
pub fn migrate(db: &redb::Database, path: &Path) -> Result<()> {
    let found = {
        let tx = db.begin_read()?;
        match tx.open_table(META) {
            Ok(meta) => meta.get(VERSION_KEY)?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(found) = found
        && found > SCHEMA_VERSION
    {
        return Err(Error::TooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    // Versions 2, 3, 6 and 7 added tables (3 also an index built from the
    // operations): creating the missing ones brings a fresh store (None) or an
    // older one up to date. A version that changes records adds its step here.
    let tx = db.begin_write()?;
    tx.open_table(USERS)?;
    tx.open_table(LOGIN_FAILURES)?;
    tx.open_table(MACHINES)?;
    tx.open_table(MACHINE_STATUS)?;
    tx.open_table(HEALTH_HISTORY)?;
    tx.open_table(RUN_REQUESTS)?;
    tx.open_table(SCRIPTS)?;
    tx.open_table(OPERATIONS)?;
    tx.open_table(OPERATION_HOSTS)?;
    tx.open_table(OPERATION_EVENTS)?;
    if found.is_some_and(|version| version < 3) {
        // Version 3 indexes operations; older stores build the index once.
        super::scan::backfill_operation_index(&tx)?;
    } else {
        tx.open_table(OPERATION_INDEX)?;
    }
    tx.open_table(SYNC_HISTORY)?;
    tx.open_table(TERMINAL_WORKSPACES)?;
    tx.open_table(TERMINAL_SESSIONS)?;
    tx.open_table(TERMINAL_RECORDINGS)?;
    tx.open_table(AUDIT_LOG)?;
    tx.open_table(WEBHOOK_DELIVERIES)?;
    tx.open_table(STATE_STATUS)?;
    tx.open_table(STATE_TARGETS)?;
    tx.open_table(STATE_CHECKS)?;
    tx.open_table(OUTBOX)?;
    tx.open_table(OUTBOX_DEAD)?;
    tx.open_table(FORGE_STATUSES)?;
    if found.is_some_and(|version| version < 5) {
        rekey_fleet_suspension(&tx)?;
    } else {
        tx.open_table(SUSPENSIONS)?;
    }
    if found.is_some_and(|version| version < 4) {
        retire_deleted_names(&tx)?;
    } else {
        tx.open_table(RETIRED_NAMES)?;
    }
    tx.open_table(META)?.insert(VERSION_KEY, SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// Version 5: the fleet-wide suspension was the key `fleet`, which is also a
/// valid machine id; it becomes [`super::observed::FLEET_KEY`]. An old `fleet`
/// key held the whole fleet, so it stays a fleet-wide hold.
fn rekey_fleet_suspension(tx: &redb::WriteTransaction) -> Result<()> {
    let mut table = tx.open_table(SUSPENSIONS)?;
    let since = table.remove("fleet")?.map(|since| since.value());
    if let Some(since) = since {
        table.insert(super::observed::FLEET_KEY, since)?;
    }
    Ok(())
}

/// Version 4: drops failure counters of names that are no account (older
/// versions kept them for any name submitted), and retires the names that
/// own workspaces or sessions but are no account (deleted before version 4).
fn retire_deleted_names(tx: &redb::WriteTransaction) -> Result<()> {
    use linkops_reconcilers::terminal::{TerminalSession, Workspace};
    use redb::ReadableTable;

    use super::codec::decode;
    let users: std::collections::BTreeSet<String> = {
        let table = tx.open_table(USERS)?;
        table
            .iter()?
            .map(|entry| entry.map(|(key, _)| key.value().to_owned()))
            .collect::<Result<_, _>>()?
    };
    let mut former = std::collections::BTreeSet::new();
    for entry in tx.open_table(TERMINAL_WORKSPACES)?.iter()? {
        let (key, value) = entry?;
        let workspace: Workspace = decode("terminal_workspaces", key.value(), value.value())?;
        former.insert(workspace.owner);
    }
    for entry in tx.open_table(TERMINAL_SESSIONS)?.iter()? {
        let (key, value) = entry?;
        let session: TerminalSession = decode("terminal_sessions", key.value(), value.value())?;
        former.insert(session.user);
    }
    let now = super::now_ms();
    let mut retired = tx.open_table(RETIRED_NAMES)?;
    for name in former.difference(&users) {
        retired.insert(name.as_str(), now)?;
    }
    tx.open_table(LOGIN_FAILURES)?
        .retain(|name, _| users.contains(name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn fresh_store_records_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path).unwrap());
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        assert_eq!(
            meta.get(VERSION_KEY).unwrap().unwrap().value(),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn store_from_a_newer_version_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path).unwrap());
        {
            let db = redb::Database::open(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(VERSION_KEY, SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::TooNew { found, .. } if found == SCHEMA_VERSION + 1));
        assert!(message.contains("upgrade linkops"), "{message}");
    }

    #[test]
    fn a_version_1_store_gains_the_terminal_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            // What a version 1 binary left: its tables, no terminal sessions.
            let db = redb::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(USERS).unwrap();
            tx.open_table(META).unwrap().insert(VERSION_KEY, 1).unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert!(store.terminal_sessions(10, |_| true).unwrap().is_empty());
        drop(store);
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let version = tx
            .open_table(META)
            .unwrap()
            .get(VERSION_KEY)
            .unwrap()
            .unwrap()
            .value();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_version_4_fleet_suspension_stays_fleet_wide_and_frees_the_machine_name() {
        use linkops_reconcilers::suspension::Scope;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(Store::open(&path).unwrap());
        {
            // What a version 4 binary wrote for `POST /api/reconcile/suspend {}`.
            let db = redb::Database::open(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(SUSPENSIONS)
                .unwrap()
                .insert("fleet", 42)
                .unwrap();
            tx.open_table(META).unwrap().insert(VERSION_KEY, 4).unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.suspensions().unwrap(), [(Scope::Fleet, 42)]);
        // Now a machine called "fleet" is suspended on its own.
        store
            .set_suspended(&Scope::Fleet, false, &crate::store::Actor::Cli)
            .unwrap();
        let machine = Scope::Machine("fleet".into());
        store
            .set_suspended(&machine, true, &crate::store::Actor::Cli)
            .unwrap();
        let held: Vec<Scope> = store
            .suspensions()
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(held, [machine]);
    }

    #[test]
    fn reopening_keeps_data_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        store
            .create_user(
                "ada",
                crate::store::Role::Admin,
                "$argon2id$fake",
                &crate::store::Actor::Cli,
            )
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert!(store.user("ada").unwrap().is_some());
    }
}
