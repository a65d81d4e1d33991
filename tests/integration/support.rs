//! Shared by the integration tests: a daemon on a real socket, and Git repositories driven by the real `git`.

use std::path::{Path, PathBuf};
use std::process::Command;

use linkops::auth::password;
use std::sync::OnceLock;

use linkops::config::{Config, StoreBackend};
use linkops::contract::{LoginResponse, OperationView, OutputBytes, OutputChunk, StateEvent};
use linkops::server::Daemon;
use linkops::store::Store;
use linkops::testbed::postgres::TestPostgres;
use linkops_reconcilers::operation::{OperationState, Stream};
use linkops_reconcilers::role::Role;
use serde_json::{Value, json};
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

/// A temporary directory only its owner may enter, as systemd makes a data dir
/// (`StateDirectory`, 0700): the daemon refuses one that others can read.
pub fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
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

/// Writes a secret file (0600) in a directory only its owner enters.
pub fn write_private(path: &Path, secret: &str) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, secret.as_bytes()))
        .unwrap();
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
                *role,
                &password::hash(secret).unwrap(),
                &linkops::store::Actor::Cli,
            )
            .unwrap();
    }
}

/// A working Git repository the test edits, commits in and pushes from.
pub struct WorkRepo {
    pub dir: PathBuf,
    ssh_command: Option<String>,
}

impl WorkRepo {
    /// `git init` in `dir`, with the files of `template` (if any) committed.
    pub fn new(dir: &Path, template: Option<&Path>) -> WorkRepo {
        std::fs::create_dir_all(dir).unwrap();
        let repo = WorkRepo {
            dir: dir.to_owned(),
            ssh_command: None,
        };
        repo.git(&["init", "-q", "-b", "main"]);
        if let Some(template) = template {
            copy_tree(template, dir);
            repo.commit("initial configuration");
        }
        repo
    }

    /// Pushes over SSH with this key and known_hosts.
    pub fn with_ssh(mut self, key: &Path, known_hosts: &Path) -> WorkRepo {
        self.ssh_command = Some(format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            key.display(),
            known_hosts.display()
        ));
        self
    }

    pub fn write(&self, path: &str, content: &str) {
        let path = self.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.dir.join(path)).unwrap();
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir.join(path)).unwrap()
    }

    /// Commits everything; returns the new revision.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&[
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "commit",
            "-q",
            "-m",
            message,
        ]);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Pushes `main` to `url`, forced (the tests rewrite history on purpose).
    pub fn push(&self, url: &str) {
        self.git(&["push", "-q", "--force", url, "main"]);
    }

    pub fn git(&self, args: &[&str]) -> String {
        let mut command = Command::new("git");
        command.arg("-C").arg(&self.dir).args(args);
        if let Some(ssh) = &self.ssh_command {
            command.env("GIT_SSH_COMMAND", ssh);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The bundled example configuration repository.
pub fn example_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config-repo")
}

/// A config repository describing a test fleet: `links.yaml` lists every
/// host (ids `host1`, `host2`, …, tagged `test`), with the given uuids
/// overridden (to make a host's enrollment wrong on purpose).
pub fn fleet_links(fleet: &linkops::testbed::TestFleet, wrong_uuid: &[usize]) -> String {
    let mut links = String::from("machines:\n");
    for (index, host) in fleet.hosts().iter().enumerate() {
        let uuid = if wrong_uuid.contains(&index) {
            "00000000-0000-4000-8000-000000000000".to_owned()
        } else {
            host.uuid().to_owned()
        };
        links.push_str(&format!(
            "  - id: {name}\n    name: Test {name}\n    host: {address}\n    port: {port}\n    user: {user}\n    key: fleet_key\n    uuid: {uuid}\n    tags: [test]\n",
            name = host.name(),
            address = host.address(),
            port = host.port(),
            user = linkops::testbed::TEST_USER,
        ));
    }
    links
}

/// A data dir whose keys dir holds the fleet's client key as `fleet_key` and
/// whose known_hosts trusts the fleet; returns the config for it.
pub fn fleet_config(data_dir: &Path, fleet: &linkops::testbed::TestFleet) -> Config {
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
async fn event_stream(
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

/// A running test fleet, a local config repository describing it, and a data dir.
pub struct FleetSetup {
    pub fleet: linkops::testbed::TestFleet,
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
        let fleet = linkops::testbed::TestFleet::start(hosts).unwrap();
        let marks = fleet.dir().join("marks");
        std::fs::create_dir(&marks).unwrap();
        std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let work = WorkRepo::new(&fleet.dir().join("config"), None);
        work.write("links.yaml", &fleet_links(&fleet, wrong_uuid));
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
        let daemon = TestDaemon::start(config).await;
        let head = self.work.head();
        let mut desired = daemon.daemon().git().desired();
        desired
            .wait_for(|d| d.as_ref().is_some_and(|d| d.revision == head))
            .await
            .unwrap();
        daemon
    }
}

/// Drops every packet to and from one address (both directions, loopback
/// included) until dropped: a silent partition. An nftables table of its own.
pub struct Partition {
    table: String,
}

impl Partition {
    pub fn cut(address: std::net::Ipv4Addr) -> Partition {
        let table = format!(
            "linkops_partition_{}",
            address.to_string().replace('.', "_")
        );
        let rules = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0;\n  ip daddr {address} drop\n  ip saddr {address} drop\n }}\n}}\n"
        );
        let status = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut nft| {
                use std::io::Write;
                nft.stdin.take().unwrap().write_all(rules.as_bytes())?;
                nft.wait()
            })
            .expect("nft (Debian's nftables) runs");
        assert!(status.success(), "nft refused {rules}");
        Partition { table }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status()
            .ok();
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
