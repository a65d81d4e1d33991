//! Bringing a store up to [`SCHEMA_VERSION`] at open: its tables created,
//! the steps of each later version run in one transaction, redb's typed
//! tables of versions 1 to 7 converted; a store a newer binary wrote refused.

use super::engine::{Engine, Read, Write, WriteTx};
use super::schema::*;
use super::{Error, Result};

/// Creates missing tables and upgrades older layouts, in one transaction;
/// refuses a store written by a newer binary. `store` names it in errors.
pub fn migrate(engine: &Engine, store: &str) -> Result<()> {
    let mut tx = engine.write()?;
    let found = match &tx {
        WriteTx::Redb(redb) => legacy::convert(redb.transaction())?,
        WriteTx::Postgres(_) => None,
    };
    let found = match found {
        Some(version) => Some(version),
        None => {
            if let WriteTx::Postgres(postgres) = &mut tx {
                postgres.create_tables(&TABLES)?;
            } else if let WriteTx::Redb(redb) = &tx {
                legacy::create_tables(redb.transaction())?;
            }
            tx.get(META, VERSION_KEY)?
        }
    };
    if let Some(found) = found
        && found > SCHEMA_VERSION
    {
        return Err(Error::TooNew {
            store: store.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    // Versions 2, 3, 6, 7, 10, 11, 12, 13, 14 and 15 added tables (3 also an index built from the
    // operations), 8 converted redb's tables to bytes: a fresh store (None)
    // has its tables now. A version that changes records adds its step here.
    if let Some(version) = found {
        if version < 3 {
            super::scan::backfill_operation_index(&mut tx)?;
        }
        if version < 4 {
            retire_deleted_names(&mut tx)?;
        }
        if version < 5 {
            rekey_fleet_suspension(&mut tx)?;
        }
        if version < 9 {
            index_outbox_channels(&mut tx)?;
        }
    }
    tx.insert(META, VERSION_KEY, &SCHEMA_VERSION)?;
    tx.commit()
}

/// Version 9: each channel's waiting messages are indexed.
fn index_outbox_channels(tx: &mut WriteTx) -> Result<()> {
    let queued: Vec<(String, u64)> = tx
        .all(OUTBOX, false)
        .map(|entry| entry.map(|(seq, queued)| (queued.channel, seq)))
        .collect::<Result<_>>()?;
    for (channel, seq) in queued {
        tx.insert(OUTBOX_CHANNELS, (channel.as_str(), seq), &())?;
    }
    Ok(())
}

/// Version 5: the fleet-wide suspension was the key `fleet`, which is also a
/// valid machine id; it becomes [`super::observed::FLEET_KEY`]. An old `fleet`
/// key held the whole fleet, so it stays a fleet-wide hold.
fn rekey_fleet_suspension(tx: &mut WriteTx) -> Result<()> {
    if let Some(since) = tx.get(SUSPENSIONS, "fleet")? {
        tx.remove(SUSPENSIONS, "fleet")?;
        tx.insert(SUSPENSIONS, super::observed::FLEET_KEY, &since)?;
    }
    Ok(())
}

/// Version 4: drops failure counters of names that are no account (older
/// versions kept them for any name submitted), and retires the names that
/// own workspaces or sessions but are no account (deleted before version 4).
fn retire_deleted_names(tx: &mut WriteTx) -> Result<()> {
    let users: std::collections::BTreeSet<String> = tx
        .all(USERS, false)
        .map(|entry| entry.map(|(name, _)| name))
        .collect::<Result<_>>()?;
    let mut former = std::collections::BTreeSet::new();
    for entry in tx.all(TERMINAL_WORKSPACES, false) {
        former.insert(entry?.1.owner);
    }
    for entry in tx.all(TERMINAL_SESSIONS, false) {
        former.insert(entry?.1.user);
    }
    let now = super::now_ms();
    for name in former.difference(&users) {
        tx.insert(RETIRED_NAMES, name, &now)?;
    }
    tx.retain(LOGIN_FAILURES, |name, _| users.contains(name))
}

/// The typed redb tables of versions 1 to 7, converted to version 8's bytes.
mod legacy {
    use redb::{ReadableTable, TableDefinition, TableError, TableHandle};

    use super::super::engine::Key;
    use super::{Result, TABLES, VERSION_KEY};

    pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

    /// Opens every table, so that read transactions find them.
    pub fn create_tables(tx: &redb::WriteTransaction) -> Result<()> {
        for name in TABLES {
            tx.open_table(TableDefinition::<&[u8], &[u8]>::new(name))?;
        }
        Ok(())
    }

    /// The version of a typed (version 1 to 7) file, after converting its
    /// tables to bytes; `None` for a fresh file or one already in bytes.
    pub fn convert(tx: &redb::WriteTransaction) -> Result<Option<u64>> {
        // A write transaction's `open_table` creates what is missing: look first.
        if !tx.list_tables()?.any(|table| table.name() == "meta") {
            return Ok(None);
        }
        let version = match tx.open_table(META) {
            Ok(meta) => meta.get(VERSION_KEY)?.map(|v| v.value()),
            Err(TableError::TableDoesNotExist(_) | TableError::TableTypeMismatch { .. }) => {
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let Some(version) = version else {
            return Ok(None);
        };
        if version >= 8 {
            // A newer binary's typed meta table: not ours to convert.
            return Ok(Some(version));
        }
        let json = |v: &[u8]| v.to_vec();
        let number = |v: i64| serde_json::to_vec(&v).expect("numbers serialise");
        convert_table::<&str, u64>(
            tx,
            "meta",
            |k| k.encode(),
            |v| serde_json::to_vec(&v).expect("numbers serialise"),
        )?;
        macro_rules! json_tables {
            ($($key:ty => $name:literal),* $(,)?) => {$(
                convert_table::<$key, &[u8]>(tx, $name, |k| k.encode(), json)?;
            )*};
        }
        json_tables!(
            &str => "users",
            &str => "login_failures",
            &str => "machines",
            &str => "machine_status",
            (&str, i64) => "health_history",
            &str => "run_requests",
            &str => "scripts",
            u64 => "operations",
            (u64, &str) => "operation_hosts",
            (u64, u64) => "operation_events",
            u64 => "sync_history",
            &str => "terminal_workspaces",
            u64 => "terminal_sessions",
            (u64, u64) => "terminal_recordings",
            &str => "state_status",
            (&str, &str) => "state_targets",
            (&str, &str, i64) => "state_checks",
            u64 => "outbox",
            u64 => "outbox_dead",
            (&str, &str) => "forge_statuses",
            u64 => "audit_log",
        );
        convert_table::<&str, i64>(tx, "retired_names", |k| k.encode(), number)?;
        convert_table::<&str, i64>(tx, "suspensions", |k| k.encode(), number)?;
        convert_table::<&str, i64>(tx, "webhook_deliveries", |k| k.encode(), number)?;
        convert_table::<(&str, &str, u64), ()>(
            tx,
            "operation_index",
            |k| k.encode(),
            |()| Vec::new(),
        )?;
        create_tables(tx)?;
        Ok(Some(version))
    }

    /// Rewrites one typed table under its name as bytes (through a
    /// temporary table: redb keeps one type per name); absent tables stay absent.
    fn convert_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        tx: &redb::WriteTransaction,
        name: &'static str,
        key: impl for<'a> Fn(K::SelfType<'a>) -> Vec<u8>,
        value: impl for<'a> Fn(V::SelfType<'a>) -> Vec<u8>,
    ) -> Result<()> {
        let typed = TableDefinition::<K, V>::new(name);
        let temporary_name = format!("{name}.converting");
        let temporary = TableDefinition::<&[u8], &[u8]>::new(&temporary_name);
        {
            let old = match tx.open_table(typed) {
                Ok(old) => old,
                Err(TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(error) => return Err(error.into()),
            };
            let mut new = tx.open_table(temporary)?;
            for entry in old.iter()? {
                let (k, v) = entry?;
                new.insert(key(k.value()).as_slice(), value(v.value()).as_slice())?;
            }
        }
        tx.delete_table(typed)?;
        {
            let from = tx.open_table(temporary)?;
            let mut to = tx.open_table(TableDefinition::<&[u8], &[u8]>::new(name))?;
            for entry in from.iter()? {
                let (k, v) = entry?;
                to.insert(k.value(), v.value())?;
            }
        }
        tx.delete_table(temporary)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    use redb::{ReadableDatabase, TableDefinition};

    #[test]
    fn fresh_store_records_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let version = store.read().unwrap().get(META, VERSION_KEY).unwrap();
        assert_eq!(version, Some(SCHEMA_VERSION));
    }

    #[test]
    fn store_from_a_newer_version_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap();
        let mut tx = store.write().unwrap();
        tx.insert(META, VERSION_KEY, &(SCHEMA_VERSION + 1)).unwrap();
        tx.commit().unwrap();
        drop(store);
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
            let users = TableDefinition::<&str, &[u8]>::new("users");
            tx.open_table(users)
                .unwrap()
                .insert("ada", br#"{"name":"ada","role":"admin","password_hash":"x","created_at_ms":1,"password_changed_at_ms":1}"#.as_slice())
                .unwrap();
            tx.open_table(legacy::META)
                .unwrap()
                .insert(VERSION_KEY, 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert!(store.terminal_sessions(10, |_| true).unwrap().is_empty());
        assert_eq!(
            store.user("ada").unwrap().unwrap().name,
            "ada",
            "records are converted"
        );
        let version = store.read().unwrap().get(META, VERSION_KEY).unwrap();
        assert_eq!(version, Some(SCHEMA_VERSION));
        drop(store);
        // Converted once: the file now holds byte tables only.
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        assert!(tx.open_table(legacy::META).is_err());
    }

    #[test]
    fn a_version_8_outbox_is_indexed_by_channel() {
        use linkops_reconcilers::outbox::{EventKind, Message, Notification, Outgoing};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            let told = |subject: &str| Outgoing {
                channel: "chat".into(),
                message: Message::Notification(Notification {
                    version: 1,
                    kind: EventKind::OperationFailed,
                    at_ms: 0,
                    title: String::new(),
                    text: String::new(),
                    subject: subject.into(),
                    url: None,
                }),
            };
            store.enqueue(&[told("1"), told("2")]).unwrap();
            // As version 8 left it: the messages, no index.
            let mut tx = store.write().unwrap();
            tx.insert(META, VERSION_KEY, &8u64).unwrap();
            tx.retain(OUTBOX_CHANNELS, |_, _| false).unwrap();
            tx.commit().unwrap();
            assert!(store.next_queued("chat").unwrap().is_none());
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.queued(Some("chat"), 0, 10).unwrap().len(), 2);
        assert!(store.next_queued("chat").unwrap().is_some());
    }

    #[test]
    fn a_version_4_fleet_suspension_stays_fleet_wide_and_frees_the_machine_name() {
        use linkops_reconcilers::suspension::Scope;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            // What a version 4 binary wrote for `POST /api/reconcile/suspend {}`.
            let db = redb::Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            let suspensions = TableDefinition::<&str, i64>::new("suspensions");
            tx.open_table(suspensions)
                .unwrap()
                .insert("fleet", 42)
                .unwrap();
            tx.open_table(legacy::META)
                .unwrap()
                .insert(VERSION_KEY, 4)
                .unwrap();
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
                Some(linkops_reconcilers::role::Role::Admin),
                "$argon2id$fake",
                &crate::store::Actor::Cli,
            )
            .unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert!(store.user("ada").unwrap().is_some());
    }
}
