//! The store's engines from the outside: `linkops store migrate` from redb into a
//! real PostgreSQL server, and a daemon serving what was migrated.

use std::process::Command;

use linkops::config::StoreBackend;
use linkops::store::{Actor, Store};
use linkops_reconcilers::role::Role;
use reqwest::StatusCode;
use testbed::postgres::TestPostgres;

use crate::support::{self, TestDaemon};

#[tokio::test]
async fn a_migrated_redb_store_serves_from_postgres_and_a_second_migration_is_refused() {
    let data = testbed::private_dir();
    {
        // What a redb daemon left: an account and its audit.
        let store = Store::open(&data.path().join("linkops.redb")).unwrap();
        let hash = linkops::auth::password::hash("migrated-pw-1").unwrap();
        support::as_the_cli(|| store.create_user("ada", Some(Role::Admin), &hash, &Actor::Cli))
            .unwrap();
    }
    let server = linkops::blocking::run(TestPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let database = server.database().unwrap();
    let keys = data.path().join("keys");
    let config = {
        let mut config = support::config(data.path());
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(database.url.clone());
        config
    };
    std::fs::create_dir_all(&keys).unwrap();
    let password_file = keys.join(&config.store.password_file);
    std::fs::write(&password_file, server.password()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let migrate = || {
        Command::new(env!("CARGO_BIN_EXE_linkops"))
            .args(["store", "migrate", "--from"])
            .arg(data.path())
            .args(["--to", &database.url, "--password-file"])
            .arg(&password_file)
            .output()
            .unwrap()
    };
    let first = migrate();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
    let users = stdout
        .lines()
        .find(|line| line.starts_with("users "))
        .expect("a line per table");
    assert_eq!(users.split_whitespace().nth(1), Some("1"), "{stdout}");
    assert!(
        !stdout.contains(server.password()),
        "the password is never printed"
    );

    let second = migrate();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already holds"), "{stderr}");

    // The daemon on PostgreSQL knows the migrated account.
    let daemon = TestDaemon::start(config).await;
    assert_eq!(
        daemon.login("ada", "migrated-pw-1").await.status(),
        StatusCode::OK
    );
    daemon.stop().await;
    let store = support::connect(&database);
    let actions: Vec<String> = support::as_the_cli(|| store.audit_entries(0, 100).unwrap())
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(
        actions.first().map(String::as_str),
        Some("user.create"),
        "the audit log came along: {actions:?}"
    );
    assert!(
        actions.iter().any(|action| action == "auth.login"),
        "{actions:?}"
    );
}

/// `linkops store compact`: what retention freed inside the redb file goes
/// back to the filesystem, what stays is read as before, and a store in use
/// or in PostgreSQL is refused with what to do instead.
#[test]
fn compaction_returns_what_retention_freed_and_keeps_what_stays() {
    use linkops::store::{OperationUpdate, Retention};
    use linkops_reconcilers::operation::{
        Operation, OperationEvent, OperationState, Requester, Stream,
    };
    const DAY_MS: i64 = 24 * 3600 * 1000;
    let data = testbed::private_dir();
    let path = data.path().join("linkops.redb");
    let compact = || {
        Command::new(env!("CARGO_BIN_EXE_linkops"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["store", "compact"])
            .output()
            .unwrap()
    };
    let newest = {
        let store = Store::open(&path).unwrap();
        let operation = Operation {
            id: 0,
            script: "report".into(),
            params: Default::default(),
            machines: vec!["web1".into()],
            requested_by: Requester::User { name: "ada".into() },
            state: OperationState::Running,
            created_at_ms: linkops::store::now_ms(),
            finished_at_ms: None,
            rollout: None,
            retry_of: None,
            secrets: Vec::new(),
        };
        let mut newest = 0;
        // 300 operations of 32 KiB of output each.
        for _ in 0..300 {
            let id = (store.create_operation(&operation, "local", &[], None, |_| Vec::new()))
                .unwrap()
                .id;
            let update = OperationUpdate {
                events: vec![OperationEvent::Output {
                    machine_id: "web1".into(),
                    stream: Stream::Stdout,
                    data: vec![b'x'; 32 << 10],
                }],
                state: Some((OperationState::Succeeded, true)),
                ..OperationUpdate::default()
            };
            store.record_operation_update(id, update).unwrap();
            newest = id;
        }
        let policy = Retention::from(&linkops::config::RetentionConfig::default());
        let later = linkops::store::now_ms() + 91 * DAY_MS;
        let pruned = store.prune(&policy, later).unwrap();
        assert_eq!(pruned.operations, 299, "all but the newest");

        let refused = compact();
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("stop it first"), "{stderr}");
        newest
    };
    let before = std::fs::metadata(&path).unwrap().len();
    let compacted = compact();
    let stdout = String::from_utf8_lossy(&compacted.stdout);
    assert!(
        compacted.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&compacted.stderr)
    );
    assert!(stdout.contains("MiB returned"), "{stdout}");
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(
        after * 2 < before,
        "the file shrank from {before} bytes to {after}"
    );
    let store = Store::open(&path).unwrap();
    let (kept, _) = store.operation(newest).unwrap().expect("the newest stays");
    assert_eq!(kept.state, OperationState::Succeeded);
    assert!(store.operation(1).unwrap().is_none());
    drop(store);

    // A store in PostgreSQL has its own way.
    let config = data.path().join("config.toml");
    std::fs::write(
        &config,
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://linkops@127.0.0.1:5432/linkops\"\n",
    )
    .unwrap();
    let postgres = Command::new(env!("CARGO_BIN_EXE_linkops"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data.path())
        .args(["store", "compact"])
        .output()
        .unwrap();
    assert!(!postgres.status.success());
    let stderr = String::from_utf8_lossy(&postgres.stderr);
    assert!(stderr.contains("VACUUM FULL"), "{stderr}");
}
