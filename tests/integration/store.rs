//! The store's engines from the outside: `linkops store migrate` from redb into a
//! real PostgreSQL server, and a daemon serving what was migrated.

use std::process::Command;

use linkops::config::StoreBackend;
use linkops::store::{Actor, Role, Store};
use linkops::testbed::postgres::TestPostgres;
use reqwest::StatusCode;

use crate::support::{self, TestDaemon};

#[tokio::test]
async fn a_migrated_redb_store_serves_from_postgres_and_a_second_migration_is_refused() {
    let data = support::private_dir();
    {
        // What a redb daemon left: an account and its audit.
        let store = Store::open(&data.path().join("linkops.redb")).unwrap();
        let hash = linkops::auth::password::hash("migrated-pw-1").unwrap();
        store
            .create_user("ada", Role::Admin, &hash, &Actor::Cli)
            .unwrap();
    }
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let options = server.database().unwrap();
    let keys = data.path().join("keys");
    let config = {
        let mut config = support::config(data.path());
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(options.url.clone());
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
            .args(["--to", &options.url, "--password-file"])
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
    let store = Store::connect(&options).unwrap();
    let actions: Vec<String> = store
        .audit_entries(0, 100)
        .unwrap()
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

/// A data dir for one replica of a shared PostgreSQL store; its config file.
fn replica(
    server: &TestPostgres,
    options: &linkops::store::engine::postgres::Options,
) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let data = support::private_dir();
    let keys = data.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let password = keys.join("postgres_password");
    std::fs::write(&password, server.password()).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = data.path().join("config.toml");
    let toml = format!(
        "data_dir = {:?}\n[store]\nbackend = \"postgres\"\nurl = {:?}\n",
        data.path(),
        options.url
    );
    std::fs::write(&config, toml).unwrap();
    (data, config)
}

fn serve(
    config: &std::path::Path,
) -> std::thread::JoinHandle<Result<linkops::testbed::ServeProcess, String>> {
    let config = config.to_owned();
    std::thread::spawn(move || {
        let binary = Command::new(env!("CARGO_BIN_EXE_linkops"));
        let args = [std::ffi::OsStr::new("--config"), config.as_os_str()];
        linkops::testbed::ServeProcess::spawn(binary, args).map(|(process, _)| process)
    })
}

fn signal(process: &linkops::testbed::ServeProcess, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(process.pid() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Several daemons on one store: one active, the others standing by. A
/// paused active daemon loses the lease to a standby and, woken, stops
/// without writing; a killed one is replaced within the lease's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_paused_or_killed_daemon_and_the_paused_one_stops() {
    use rustix::process::Signal;
    let server = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let options = server.database().unwrap();
    {
        let store = Store::connect(&options).unwrap();
        let hash = linkops::auth::password::hash("shared-pw-1").unwrap();
        store
            .create_user("ada", Role::Admin, &hash, &Actor::Cli)
            .unwrap();
    }
    let (_a_data, a_config) = replica(&server, &options);
    let (_b_data, b_config) = replica(&server, &options);
    let (_c_data, c_config) = replica(&server, &options);
    let a = serve(&a_config).join().unwrap().unwrap();
    a.login("ada", "shared-pw-1").await.unwrap();

    // B stands by; A is paused past its lease; B takes over.
    let b = serve(&b_config);
    signal(&a, Signal::STOP);
    let paused = std::time::Instant::now();
    let b = tokio::task::spawn_blocking(move || b.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    let takeover = paused.elapsed();
    eprintln!("takeover after a pause: {takeover:?}");
    assert!(
        takeover < std::time::Duration::from_secs(20),
        "{takeover:?}"
    );
    b.login("ada", "shared-pw-1").await.unwrap();
    let audited = |store: &Store| store.audit_entries(0, 1000).unwrap().len();
    let store = Store::connect(&options).unwrap();
    let before = audited(&store);

    // A wakes: its lease is gone, so it stops, having written nothing.
    signal(&a, Signal::CONT);
    let (status, log) = tokio::task::spawn_blocking(move || a.exited())
        .await
        .unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("lease"), "{log}");
    assert_eq!(
        audited(&store),
        before,
        "the paused daemon wrote nothing: {log}"
    );

    // C stands by; B is killed; C takes over once B's lease passed.
    let c = serve(&c_config);
    b.kill_9();
    let killed = std::time::Instant::now();
    let c = tokio::task::spawn_blocking(move || c.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    eprintln!("takeover after kill -9: {:?}", killed.elapsed());
    c.login("ada", "shared-pw-1").await.unwrap();
    let (status, log) = tokio::task::spawn_blocking(move || c.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{log}");
}
