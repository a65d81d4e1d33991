//! Shared by the integration tests: a daemon on a real socket, and Git repositories driven by the real `git`.

use std::path::{Path, PathBuf};

use linkops::auth::password;
use std::sync::OnceLock;

use linkops::config::{Config, StoreBackend};
use linkops::contract::{LoginResponse, OperationView, OutputBytes, OutputChunk, StateEvent};
use linkops::server::Daemon;
use linkops::store::Store;
use linkops_reconcilers::operation::{OperationState, Stream};
use linkops_reconcilers::role::Role;
use serde_json::{Value, json};
use testbed::postgres::TestPostgres;
use testbed::{WorkRepo, private_dir, write_private};
use tokio::sync::oneshot;

/// A daemon serving on 127.0.0.1:0 in this process.
pub struct TestDaemon {
    pub url: String,
    daemon: Daemon,
    shutdown: oneshot::Sender<()>,
    client: reqwest::Client,
}

impl TestDaemon {
    pub async fn start(config: Config) -> TestDaemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        TestDaemon::start_on(config, listener).await
    }

    /// Serves on `listener`: for a config that names the daemon's own address.
    pub async fn start_on(config: Config, listener: tokio::net::TcpListener) -> TestDaemon {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let daemon = Daemon::start(config, listener, async {
            stopped.await.ok();
        })
        .await
        .unwrap();
        TestDaemon {
            url,
            daemon,
            shutdown,
            client: reqwest::Client::new(),
        }
    }

    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Stops gracefully; the store is closed when this returns.
    pub async fn stop(self) {
        self.shutdown.send(()).unwrap();
        self.daemon.wait().await.unwrap();
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/auth/login", self.url))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap()
    }

    pub async fn token(&self, username: &str, password: &str) -> String {
        let response = self.login(username, password).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body: LoginResponse = response.json().await.unwrap();
        body.token
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// `GET path` answered 200 OK, its body read as `T` (a contract type).
    pub async fn read<T: serde::de::DeserializeOwned>(&self, path: &str, token: &str) -> T {
        let response = self.get(path, Some(token)).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, reqwest::StatusCode::OK, "GET {path}: {body}");
        answer(&body)
    }

    pub async fn post(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Any request with an optional JSON body; the status and the JSON answer (`null` if none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        request(&self.client, &self.url, method, path, token, body).await
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// The PostgreSQL server the daemons under test keep their store in, when
/// `TEST_STORE_ENGINE=postgres` (`cargo xtask test` runs the suite both
/// ways); `None`: redb, in each data dir.
pub fn postgres() -> Option<&'static TestPostgres> {
    static SERVER: OnceLock<Option<TestPostgres>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let wanted = std::env::var("TEST_STORE_ENGINE").is_ok_and(|store| store == "postgres");
            wanted.then(|| TestPostgres::start().expect("the test PostgreSQL server starts"))
        })
        .as_ref()
}

/// A config with `data_dir` set and everything else at its default — the
/// store in PostgreSQL under `TEST_STORE_ENGINE=postgres`, one database per
/// data dir (its password in the keys dir, as an operator keeps it).
pub fn config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    // A second factor is asked for only where a test asks for one
    // (`second_factor::`): elsewhere a test's admin acts without one.
    config.auth.step_up = false;
    if let Some(server) = postgres() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
        let options = server
            .database_named(&format!("linkops_{}", &hex::encode(digest)[..16]))
            .unwrap();
        write_private(
            &config.keys_dir().join(&config.store.password_file),
            server.password(),
        );
        config.store.backend = StoreBackend::Postgres;
        config.store.url = Some(options.url);
    }
    config
}

/// The `[store]` section `config` sets, for tests that write a config file.
pub fn store_toml(config: &Config) -> String {
    match &config.store.url {
        Some(url) if config.store.backend == StoreBackend::Postgres => {
            format!("[store]\nbackend = \"postgres\"\nurl = {url:?}\n")
        }
        _ => String::new(),
    }
}

/// The store of `config`, opened as `linkops user` opens it.
pub fn open_store(config: &Config) -> Store {
    Store::open_at(&linkops::store::Location::of(config).unwrap()).unwrap()
}

/// The store in `database` of the test PostgreSQL server.
pub fn connect(database: &testbed::postgres::Database) -> Store {
    let (url, password) = (database.url.clone(), database.password.clone());
    let options = linkops::store::engine::postgres::Options::with_password(url, password);
    Store::connect(&options).unwrap()
}

/// Bytes the store of `config` takes: the redb file, or the database's tables.
pub fn store_bytes(config: &Config) -> u64 {
    match postgres() {
        None => std::fs::metadata(config.store_path()).unwrap().len(),
        Some(_) => open_store(config)
            .table_sizes()
            .unwrap()
            .iter()
            .map(|(_, bytes)| bytes)
            .sum(),
    }
}

/// Runs `work` off the async runtime, on a thread of its own, as the CLI
/// calls the store (async code reaches it through `Store::run`).
pub fn as_the_cli<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().unwrap())
}

/// The audit log of the (stopped) daemon of `data_dir`, oldest first, as
/// `linkops audit` reads it.
pub fn audit_log(data_dir: &Path, limit: usize) -> Vec<linkops::store::AuditEntry> {
    let store = open_store(&config(data_dir));
    as_the_cli(|| store.audit_entries(0, limit).unwrap())
}

/// Creates users in a data dir the way `linkops user add` does.
pub fn add_users(data_dir: &Path, users: &[(&str, Role, &str)]) {
    as_the_cli(|| create_users(data_dir, users))
}

fn create_users(data_dir: &Path, users: &[(&str, Role, &str)]) {
    let store = open_store(&config(data_dir));
    for (name, role, secret) in users {
        store
            .create_user(
                name,
                Some(*role),
                &password::hash(secret).unwrap(),
                &linkops::store::Actor::Cli,
            )
            .unwrap();
    }
}

/// The bundled example configuration repository.
pub fn example_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config-repo")
}

/// A data dir whose keys dir holds the fleet's client key as `fleet_key` and
/// whose known_hosts trusts the fleet; returns the config for it.
pub fn fleet_config(data_dir: &Path, fleet: &testbed::TestFleet) -> Config {
    use std::os::unix::fs::PermissionsExt;
    let config = config(data_dir);
    std::fs::create_dir_all(config.keys_dir()).unwrap();
    let key = config.keys_dir().join("fleet_key");
    std::fs::copy(fleet.client_key(), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(config.known_hosts_path().parent().unwrap()).unwrap();
    std::fs::copy(fleet.known_hosts(), config.known_hosts_path()).unwrap();
    config
}

/// An answer read as its contract type; a shape that does not fit fails naming the answer.
pub fn answer<T: serde::de::DeserializeOwned>(value: &Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|error| {
        panic!(
            "the answer is no {}: {error}\n{value}",
            std::any::type_name::<T>()
        )
    })
}

/// Polls `check` until it returns `Some`, for state no event stream shows
/// (run-requests, files on the hosts; machines: `testbed::until_machines`);
/// fails after 30 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// One Server-Sent Event as a test reads it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    /// The state an `operation` or `end` event carries.
    pub fn state(&self) -> OperationState {
        answer::<StateEvent>(&self.data).state
    }
}

/// Reads an operation's SSE stream to its `end` event.
pub async fn read_events(
    daemon: &TestDaemon,
    token: &str,
    operation: u64,
    last_event_id: Option<u64>,
) -> Vec<SseEvent> {
    use futures::StreamExt;
    let mut stream = event_stream(daemon, token, operation, last_event_id).await;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        let parsed = SseEvent {
            id: event.id.parse().unwrap(),
            event: event.event.clone(),
            data: serde_json::from_str(&event.data).unwrap(),
        };
        let end = parsed.event == "end";
        events.push(parsed);
        if end {
            break;
        }
    }
    events
}

/// An operation's raw SSE stream, after `last_event_id` if given.
pub(crate) async fn event_stream(
    daemon: &TestDaemon,
    token: &str,
    operation: u64,
    last_event_id: Option<u64>,
) -> impl futures::Stream<Item = Result<eventsource_stream::Event, impl std::fmt::Debug>> {
    use eventsource_stream::Eventsource;
    let mut request = daemon.client().get(format!(
        "{}/api/operations/{operation}/events?access_token={token}",
        daemon.url
    ));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.bytes_stream().eventsource()
}

/// Runs `script` on `machines` through the API and follows the operation to
/// its end: its id and how it ended.
pub async fn run_to_end(
    daemon: &TestDaemon,
    token: &str,
    script: &str,
    machines: &[&str],
) -> (u64, OperationState) {
    let body = json!({"script": script, "targets": {"machines": machines}});
    let path = "/api/operations/run";
    let (status, started) = (daemon.request(reqwest::Method::POST, path, token, Some(body))).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{started}");
    let id = answer::<OperationView>(&started).operation.id;
    let events = read_events(daemon, token, id, None).await;
    (id, events.last().expect("an end event").state())
}

/// `GET /api/operations/{id}`: an operation and its hosts.
pub async fn operation(daemon: &TestDaemon, token: &str, id: u64) -> OperationView {
    daemon.read(&format!("/api/operations/{id}"), token).await
}

/// Follows an operation's events until `hosts` different machines have printed something.
pub async fn wait_for_output(daemon: &TestDaemon, token: &str, operation: u64, hosts: usize) {
    use futures::StreamExt;
    let mut stream = std::pin::pin!(event_stream(daemon, token, operation, None).await);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < hosts {
        let event = stream
            .next()
            .await
            .expect("the stream ended first")
            .unwrap();
        if event.event == "output" {
            let chunk: OutputChunk = serde_json::from_str(&event.data).unwrap();
            seen.insert(chunk.machine);
        }
    }
}

/// The text a machine wrote on a stream (`stdout`, `stderr`), from SSE output events.
pub fn output_text(events: &[SseEvent], machine: &str, stream: &str) -> String {
    let stream: Stream = answer(&Value::from(stream));
    (events.iter().filter(|e| e.event == "output"))
        .map(|e| answer::<OutputChunk>(&e.data))
        .filter(|chunk| chunk.machine == machine && chunk.stream == stream)
        .map(|chunk| match chunk.bytes {
            OutputBytes::Text { text } => text,
            OutputBytes::Base64 { .. } => panic!("{machine} wrote no text on {stream:?}"),
        })
        .collect()
}

/// Runs `command` with `stdin` written to it (its other streams captured): how it ended.
pub fn with_stdin(command: &mut std::process::Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = (command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()))
    .spawn()
    .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// A running test fleet, a local config repository describing it, and a data dir.
pub struct FleetSetup {
    pub fleet: testbed::TestFleet,
    pub work: WorkRepo,
    pub data: tempfile::TempDir,
    /// A directory on this machine that the hosts' scripts may write to.
    pub marks: PathBuf,
}

pub const ADMIN: (&str, &str) = ("ada", "pw-ada-1");
pub const VIEWER: (&str, &str) = ("vic", "pw-vic-1");

impl FleetSetup {
    /// `hosts` hosts (those in `wrong_uuid` listed with a uuid that is not
    /// theirs) and `scripts` as scripts.yaml (`$MARKS` replaced by the marks dir).
    pub fn new(hosts: usize, wrong_uuid: &[usize], scripts: &str) -> FleetSetup {
        use std::os::unix::fs::PermissionsExt;
        let fleet = testbed::TestFleet::start(hosts).unwrap();
        let marks = fleet.dir().join("marks");
        std::fs::create_dir(&marks).unwrap();
        std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let work = WorkRepo::new(&fleet.dir().join("config"), None);
        work.write("links.yaml", &fleet.inventory("test", wrong_uuid, ""));
        work.write(
            "scripts.yaml",
            &scripts.replace("$MARKS", marks.to_str().unwrap()),
        );
        work.commit("the test fleet");
        let data = private_dir();
        add_users(
            data.path(),
            &[
                (ADMIN.0, Role::Admin, ADMIN.1),
                (VIEWER.0, Role::Viewer, VIEWER.1),
            ],
        );
        FleetSetup {
            fleet,
            work,
            data,
            marks,
        }
    }

    pub fn config(&self) -> Config {
        let mut config = fleet_config(self.data.path(), &self.fleet);
        config.git.url = Some(linkops::config::RepoUrl::parse(
            self.work.dir.to_str().unwrap(),
        ));
        config
    }

    /// Starts a daemon and waits until it has applied the repository's head.
    pub async fn start(&self) -> TestDaemon {
        self.start_with(self.config()).await
    }

    pub async fn start_with(&self, config: Config) -> TestDaemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.start_on(config, listener).await
    }

    /// Serves on `listener`: for a config that names the daemon's own address.
    pub async fn start_on(&self, config: Config, listener: tokio::net::TcpListener) -> TestDaemon {
        let daemon = TestDaemon::start_on(config, listener).await;
        let head = self.work.head();
        let mut desired = daemon.daemon().git().desired();
        let applied = desired.wait_for(|d| d.as_ref().is_some_and(|d| d.revision == head));
        // Bounded: a test whose repository is invalid fails here, not never.
        tokio::time::timeout(std::time::Duration::from_secs(60), applied)
            .await
            .expect("the repository's head applied within 60 s: is the test's repository valid? (GET /api/git/status says)")
            .unwrap();
        daemon
    }
}

/// `method path` of the daemon at `url` as the holder of `token`, with an
/// optional JSON body; the status and the JSON answer (`null` if none).
pub async fn request(
    client: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let mut request = client
        .request(method, format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}
