//! Several daemons on one PostgreSQL store, as real processes on a real
//! server with a real sshd fleet: the machines shared among the live
//! replicas, an operation followed through another replica, a replica killed
//! mid-operation, the leader paused past its lease.
//!
//! Here: the replicas as processes and what the tests share; the tests in
//! `takeover.rs`, `through.rs` and `database.rs`.

mod database;
mod schedules;
mod takeover;
mod through;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use linkops::contract::{ClusterView, MemberView, OperationView};
use linkops::ssh::ca::Authority;
use linkops::store::{Actor, Store};
use linkops_reconcilers::role::Role;
use rustix::process::Signal;
use serde_json::Value;
use testbed::postgres::TestPostgres;
use testbed::{ServeProcess, TestAuthority, TestFleet};

use crate::support::{self, answer, eventually, fleet_config};
use crate::terminal::Terminal;
use testbed::WorkRepo;

const ADMIN: (&str, &str) = ("ada", "shared-pw-1");

/// `[cluster] lease` as shipped: what takeovers are timed by.
const LEASE: &str = "6s";

/// The token signing key every replica's data dir holds.
const SIGNING_KEY: &str = "9f1c0d2e7a4b6c8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f";

/// One `linkops serve` of the replicas, logged in.
struct Replica {
    process: ServeProcess,
    config: PathBuf,
    token: String,
    /// Its member id, as `/api/cluster` names it.
    id: String,
}

impl Replica {
    async fn start(config: &Path) -> Replica {
        let path = config.to_owned();
        let (process, _) = linkops::blocking::run(move || {
            let binary = Command::new(env!("CARGO_BIN_EXE_linkops"));
            ServeProcess::spawn(binary, [OsStr::new("--config"), path.as_os_str()])
        })
        .await
        .unwrap()
        .unwrap();
        let token = process.login(ADMIN.0, ADMIN.1).await.unwrap();
        let mut replica = Replica {
            process,
            config: config.to_owned(),
            token,
            id: String::new(),
        };
        replica.id = replica.cluster().await.replica;
        replica
    }

    /// `GET /api/cluster`: the replicas as this one sees them.
    async fn cluster(&self) -> ClusterView {
        let view = self.get("/api/cluster").await;
        view.expect("every replica answers /api/cluster")
    }

    /// The answer to `GET path` as `T`; `None` when it is no success (a 404 before a run exists).
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.process.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        match response.status().is_success() {
            true => Some(answer(&response.json().await.unwrap())),
            false => None,
        }
    }

    /// `linkops_ssh_connections_open`: the machines it holds a connection to.
    async fn ssh_connections(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.process.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("linkops_ssh_connections_open "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no linkops_ssh_connections_open in {text}"))
    }

    fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_raw(self.process.pid() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

/// A data dir for one replica: the fleet's key and known hosts, the store's
/// password (0600), and a config that follows `work` and keeps its store at `url`.
fn replica_config(
    server: &TestPostgres,
    url: &str,
    fleet: &TestFleet,
    work: &Path,
    lease: &str,
) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let data = testbed::private_dir();
    let keys = fleet_config(data.path(), fleet).keys_dir();
    let password = keys.join("postgres_password");
    std::fs::write(&password, server.password()).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Copied to every replica, as the README says: one replica's tokens are good at the others.
    let signing_key = data.path().join("jwt_secret");
    std::fs::write(&signing_key, SIGNING_KEY).unwrap();
    std::fs::set_permissions(&signing_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // So is the SSH CA (made once for the fleet): machines trust one CA.
    let shared_ca = fleet.dir().join("replicas-ca");
    Authority::open(&shared_ca).unwrap();
    testbed::copy_private(&shared_ca, &data.path().join("ca"));
    let config = data.path().join("config.toml");
    let toml = format!(
        "data_dir = {:?}\n[git]\nurl = {:?}\n[store]\nbackend = \"postgres\"\nurl = {:?}\n[auth]\nstep_up = false\n[cluster]\nlease = {lease:?}\n",
        data.path(),
        work,
        url
    );
    std::fs::write(&config, toml).unwrap();
    (data, config)
}

/// A new test server with a database of its own holding `users`.
async fn shared_store(
    users: &[(&str, Role, &str)],
) -> (TestPostgres, testbed::postgres::Database, Store) {
    let server = linkops::blocking::run(TestPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let database = server.database().unwrap();
    let store = support::connect(&database);
    support::as_the_cli(|| {
        for (name, role, password) in users {
            let hash = linkops::auth::password::hash(password).unwrap();
            store
                .create_user(name, Some(*role), &hash, &Actor::Cli)
                .unwrap();
        }
    });
    (server, database, store)
}

/// What each of `replicas` answers at `/api/cluster`.
async fn views<'a>(replicas: impl IntoIterator<Item = &'a Replica>) -> Vec<ClusterView> {
    let mut views = Vec::new();
    for replica in replicas {
        views.push(replica.cluster().await);
    }
    views
}

/// The id of the first member of a `/api/cluster` answer that `pick` picks.
fn member(view: &ClusterView, pick: impl Fn(&MemberView) -> bool) -> String {
    let picked = view.members.iter().find(|member| pick(member));
    picked.expect("such a member").replica.clone()
}

/// `POST /api/operations/run` of `script` on `machine` through `replica`.
async fn run(replica: &Replica, script: &str, machine: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/operations/run", replica.process.url))
        .bearer_auth(&replica.token)
        .json(&serde_json::json!({ "script": script, "targets": { "machines": [machine] } }))
        .send()
        .await
        .unwrap()
}

/// Starts `script` on `machine` through `replica`; the operation's id.
async fn start(replica: &Replica, script: &str, machine: &str) -> u64 {
    let response = run(replica, script, machine).await;
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let started: OperationView = response.json().await.unwrap();
    started.operation.id
}

/// What reading an event stream can fail with.
type SseError = eventsource_stream::EventStreamError<reqwest::Error>;

/// The event stream of `operation` through `replica`, as the holder of `token`.
async fn follow(
    replica: &Replica,
    token: &str,
    operation: u64,
) -> impl futures::Stream<Item = Result<eventsource_stream::Event, SseError>> + Unpin + use<> {
    let url = format!(
        "{}/api/operations/{operation}/events?access_token={token}",
        replica.process.url
    );
    let response = reqwest::get(url).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    eventsource_stream::Eventsource::eventsource(response.bytes_stream())
}

/// Reads `events` until one named `name`, within a minute; all it read, that one last.
async fn read_until(
    events: &mut (impl futures::Stream<Item = Result<eventsource_stream::Event, SseError>> + Unpin),
    name: &str,
) -> Vec<eventsource_stream::Event> {
    let read = async {
        let mut read = Vec::new();
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            let done = event.event == name;
            read.push(event);
            if done {
                return read;
            }
        }
        panic!("the stream ended before `{name}`: {read:?}");
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("no `{name}` within a minute"))
}

/// The owner of each machine, when every view names the same `members`
/// replicas, exactly one leader, and gives each of `machines` to exactly one.
fn agreed_owners(
    views: &[ClusterView],
    members: usize,
    machines: &BTreeSet<String>,
) -> Option<BTreeMap<String, String>> {
    let mut agreed = None;
    for view in views {
        let listed = &view.members;
        let leaders = listed.iter().filter(|m| m.leader).count();
        if listed.len() != members || leaders != 1 {
            return None;
        }
        let mut owners = BTreeMap::new();
        for member in listed {
            for machine in &member.machines {
                if (owners.insert(machine.clone(), member.replica.clone())).is_some() {
                    return None;
                }
            }
        }
        if owners.keys().cloned().collect::<BTreeSet<_>>() != *machines {
            return None;
        }
        match &agreed {
            None => agreed = Some(owners),
            Some(first) if *first == owners => {}
            Some(_) => return None,
        }
    }
    agreed
}

fn marks(dir: &Path) -> BTreeMap<String, usize> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .map(|entry| {
            let lines = std::fs::read_to_string(entry.path())
                .unwrap()
                .lines()
                .count();
            (entry.file_name().to_string_lossy().into_owned(), lines)
        })
        .collect()
}

/// Two replicas of the store at `database` (reached at `first_url` by the
/// first), `fleet`, `talk` in the catalog; talking to each other over
/// mutual TLS with certificates of `authority`, when given.
async fn two_replicas(
    server: &TestPostgres,
    database: &testbed::postgres::Database,
    first_url: &str,
    fleet: &TestFleet,
    authority: Option<&TestAuthority>,
    lease: &str,
) -> (
    WorkRepo,
    Vec<(tempfile::TempDir, PathBuf)>,
    Replica,
    Replica,
) {
    let work = WorkRepo::new(&fleet.dir().join("config"), None);
    work.write("links.yaml", &fleet.inventory("test", &[], ""));
    work.write("scripts.yaml", TALK);
    work.commit("fleet and script");
    let data = vec![
        replica_config(server, first_url, fleet, &work.dir, lease),
        replica_config(server, &database.url, fleet, &work.dir, lease),
    ];
    if let Some(authority) = authority {
        for ((dir, config), name) in data.iter().zip(["a", "b"]) {
            with_mutual_tls(dir, config, authority, name);
        }
    }
    let a = Replica::start(&data[0].1).await;
    let b = Replica::start(&data[1].1).await;
    let machines = fleet.hosts().iter().map(|h| h.name().to_owned()).collect();
    eventually("the two replicas to share the fleet", || async {
        agreed_owners(&views([&a, &b]).await, 2, &machines)
    })
    .await;
    (work, data, a, b)
}

/// Adds to the replica's `config` its own listener for replicas, with a
/// certificate `authority` issues to `name` (in its keys dir).
fn with_mutual_tls(data: &tempfile::TempDir, config: &Path, authority: &TestAuthority, name: &str) {
    let keys = data.path().join("keys");
    let (certificate, key) = authority.issue(name, "IP:127.0.0.1").unwrap();
    std::fs::rename(certificate, keys.join("replica.crt")).unwrap();
    std::fs::rename(key, keys.join("replica.key")).unwrap();
    std::fs::copy(authority.certificate(), keys.join("replicas-ca.crt")).unwrap();
    let mut toml = std::fs::read_to_string(config).unwrap();
    toml.push_str(
        // Under the `[cluster]` its config ends with.
        "listen = \"127.0.0.1:0\"\ntls_certificate = \"replica.crt\"\ntls_key = \"replica.key\"\ntls_ca = \"replicas-ca.crt\"\n",
    );
    std::fs::write(config, toml).unwrap();
}

/// Output of `talk` (a line every 50 ms for about 4 s), as the script prints it.
fn talk_output() -> String {
    (1..=80).map(|i| format!("line {i}\n")).collect()
}

const TALK: &str = "scripts:\n  - id: talk\n    name: Talk a while\n    body: |\n      for i in $(seq 1 80); do echo line $i; sleep 0.05; done\n";
