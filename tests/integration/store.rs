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
