//! Several daemons on one PostgreSQL store, as real processes on a real
//! server with a real sshd fleet: the machines shared among the live
//! replicas, an operation followed through another replica, a replica killed
//! mid-operation, the leader paused past its lease.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use linkops::store::{Actor, Store};
use linkops::testbed::postgres::TestPostgres;
use linkops::testbed::{ServeProcess, TestAuthority, TestFleet};
use linkops_reconcilers::role::Role;
use rustix::process::Signal;
use serde_json::Value;

use crate::support::{self, WorkRepo, eventually, fleet_config, fleet_links};
use crate::terminal::Terminal;

const ADMIN: (&str, &str) = ("ada", "shared-pw-1");
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
        replica.id = replica.get("/api/cluster").await["replica"]
            .as_str()
            .unwrap()
            .to_owned();
        replica
    }

    /// The JSON answer to `GET path`; null when it is no success (a 404 before a run exists).
    async fn get(&self, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.process.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        match response.status().is_success() {
            true => response.json().await.unwrap(),
            false => Value::Null,
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
) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let data = support::private_dir();
    let keys = fleet_config(data.path(), fleet).keys_dir();
    let password = keys.join("postgres_password");
    std::fs::write(&password, server.password()).unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Copied to every replica, as the README says: one replica's tokens are good at the others.
    let signing_key = data.path().join("jwt_secret");
    std::fs::write(&signing_key, SIGNING_KEY).unwrap();
    std::fs::set_permissions(&signing_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = data.path().join("config.toml");
    let toml = format!(
        "data_dir = {:?}\n[git]\nurl = {:?}\n[store]\nbackend = \"postgres\"\nurl = {:?}\n",
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
) -> (
    TestPostgres,
    linkops::store::engine::postgres::Options,
    Store,
) {
    let server = linkops::blocking::run(TestPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let options = server.database().unwrap();
    let store = Store::connect(&options).unwrap();
    support::as_the_cli(|| {
        for (name, role, password) in users {
            let hash = linkops::auth::password::hash(password).unwrap();
            store.create_user(name, *role, &hash, &Actor::Cli).unwrap();
        }
    });
    (server, options, store)
}

/// What each of `replicas` answers at `/api/cluster`.
async fn views<'a>(replicas: impl IntoIterator<Item = &'a Replica>) -> Vec<Value> {
    let mut views = Vec::new();
    for replica in replicas {
        views.push(replica.get("/api/cluster").await);
    }
    views
}

/// The id of the first member of a `/api/cluster` answer that `pick` picks.
fn member(view: &Value, pick: impl Fn(&Value) -> bool) -> String {
    let members = view["members"].as_array().expect("members");
    let picked = members.iter().find(|member| pick(member));
    picked.expect("such a member")["replica"]
        .as_str()
        .unwrap()
        .to_owned()
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
    response.json::<Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap()
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
    views: &[Value],
    members: usize,
    machines: &BTreeSet<String>,
) -> Option<BTreeMap<String, String>> {
    let mut agreed = None;
    for view in views {
        let listed = view["members"].as_array()?;
        let leaders = listed.iter().filter(|m| m["leader"] == true).count();
        if listed.len() != members || leaders != 1 {
            return None;
        }
        let mut owners = BTreeMap::new();
        for member in listed {
            for machine in member["machines"].as_array()? {
                let replica = member["replica"].as_str()?.to_owned();
                if owners
                    .insert(machine.as_str()?.to_owned(), replica)
                    .is_some()
                {
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

/// Three replicas share a fleet: each machine is checked by its owner only;
/// an operation runs on one replica and is followed through another; that
/// replica is killed mid-operation and within seconds its machines have new
/// owners, its operation is interrupted (each host too), the follower sees the
/// end and the run-request never runs again; the leader, paused past its
/// lease, is replaced, writes nothing when it wakes, and stops; started
/// again it rejoins as a new member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_fleet_and_take_over_what_a_killed_or_paused_one_held() {
    let (server, options, store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;

    let fleet = TestFleet::start(3).unwrap();
    let marks_dir = fleet.dir().join("marks");
    std::fs::create_dir(&marks_dir).unwrap();
    std::fs::set_permissions(
        &marks_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let work = WorkRepo::new(&fleet.dir().join("config"), None);
    // The fleet is declared once the replicas agree on their members, so
    // that no machine is ever checked by a replica that does not own it.
    work.write("links.yaml", "machines: []\n");
    work.write(
        "scripts.yaml",
        &format!(
            "scripts:\n  - id: slow\n    name: Mark, then take a while\n    body: |\n      echo x >> {marks}/$(cat /etc/linkops/client_id)\n      echo started\n      sleep 60\n",
            marks = marks_dir.display()
        ),
    );
    work.commit("scripts");
    let data: Vec<_> = (0..3)
        .map(|_| replica_config(&server, &options.url, &fleet, &work.dir))
        .collect();
    let mut replicas = Vec::new();
    for (_, config) in &data {
        replicas.push(Replica::start(config).await);
    }

    let machines: BTreeSet<String> = fleet.hosts().iter().map(|h| h.name().to_owned()).collect();
    eventually("the three replicas to agree on their members", || async {
        agreed_owners(&views(&replicas).await, 3, &BTreeSet::new())
    })
    .await;
    work.write("links.yaml", &fleet_links(&fleet, &[]));
    work.commit("the fleet");
    let owners = eventually("every replica to share the fleet out alike", || async {
        agreed_owners(&views(&replicas).await, 3, &machines)
    })
    .await;
    // Every machine is checked, as the fleet's live stream of any replica
    // tells (each commit of another replica reaches it through the store)…
    let follower = &replicas[2];
    linkops::testbed::until_machines(
        &follower.process.url,
        &follower.token,
        "every machine reachable",
        |views| {
            views.len() == machines.len()
                && views.iter().all(|view| {
                    matches!(
                        view.health,
                        linkops_reconcilers::machine::Health::Reachable { .. }
                    )
                })
        },
    )
    .await
    .unwrap();
    // …and only by its owner: each replica holds a connection to exactly the machines it owns.
    eventually(
        "each replica connected to its own machines only",
        || async {
            for replica in &replicas {
                let owned = owners
                    .values()
                    .filter(|owner| **owner == replica.id)
                    .count() as u64;
                if replica.ssh_connections().await != owned {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // A run-request runs on the replica that owns it; another follows it.
    work.write(
        "runs/r1.yaml",
        "id: r1\nscript: slow\ntargets: {tags: [test]}\n",
    );
    work.commit("r1");
    let operation = eventually("r1 to start", || async {
        replicas[0].get("/api/runs/r1").await["state"]["operation_id"].as_u64()
    })
    .await;
    let cluster = replicas[0].get("/api/cluster").await;
    let runner = member(&cluster, |m| {
        m["runs"].as_array().unwrap().iter().any(|r| r == "r1")
    });
    let killed = replicas.iter().position(|r| r.id == runner).unwrap();
    let killed = replicas.remove(killed);
    let follower = &replicas[0];
    let mut events = follow(follower, &follower.token, operation).await;
    eventually("the script to run on every machine", || async {
        (marks(&marks_dir).len() == machines.len()).then_some(())
    })
    .await;
    // What it prints reaches the follower through the store, numbered from 1.
    let read = read_until(&mut events, "output").await;
    let output = read.last().unwrap();
    assert!(output.data.contains("started"), "{output:?}");
    let ids: Vec<u64> = read.iter().map(|event| event.id.parse().unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());

    killed.process.kill_9();
    let at = Instant::now();
    let end = read_until(&mut events, "end").await.pop().unwrap();
    let took = at.elapsed();
    eprintln!("a killed replica's operation ended {took:?} after kill -9");
    let ended: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(ended["state"], "interrupted", "{ended}");
    let view = follower.get(&format!("/api/operations/{operation}")).await;
    assert_eq!(view["state"], "interrupted", "{view}");
    for host in view["hosts"].as_array().unwrap() {
        assert_eq!(host["state"]["state"], "interrupted", "{view}");
    }
    // Its machines moved to the two that are left.
    let survivors = eventually("the survivors to share the whole fleet", || async {
        agreed_owners(&views(&replicas).await, 2, &machines)
    })
    .await;
    assert!(
        survivors.values().all(|owner| *owner != runner),
        "{survivors:?}"
    );

    // The run-request is reconciled again by its new owner, and does not run again.
    let listed: Vec<&str> = machines.iter().map(String::as_str).collect();
    work.write(
        "runs/r1.yaml",
        &format!(
            "id: r1\nscript: slow\ntargets: {{machines: [{}]}}\n",
            listed.join(", ")
        ),
    );
    work.commit("r1 edited");
    let run = eventually("the edit to be reconciled", || async {
        let run = follower.get("/api/runs/r1").await;
        (run["changed_after_run"] == true).then_some(run)
    })
    .await;
    assert_eq!(run["state"]["operation_id"], operation, "{run}");
    assert!(
        marks(&marks_dir).values().all(|&runs| runs == 1),
        "{:?}",
        marks(&marks_dir)
    );

    // The leader is paused past its lease: the other takes the lead…
    let leader = member(&follower.get("/api/cluster").await, |m| m["leader"] == true);
    let paused = replicas.iter().position(|r| r.id == leader).unwrap();
    let paused = replicas.remove(paused);
    let other = &replicas[0];
    let audited =
        |store: &Store| support::as_the_cli(|| store.audit_entries(0, 10_000).unwrap().len());
    paused.signal(Signal::STOP);
    let at = Instant::now();
    eventually("the other replica to lead alone", || async {
        let members = other.get("/api/cluster").await["members"].clone();
        let alone = members.as_array()?.len() == 1 && members[0]["leader"] == true;
        alone.then_some(())
    })
    .await;
    eprintln!(
        "the lead moved {:?} after the leader was paused",
        at.elapsed()
    );
    let before = audited(&store);
    // …and it wakes to find its leases gone: it writes nothing and stops.
    paused.signal(Signal::CONT);
    let config = paused.config.clone();
    let (status, log) = linkops::blocking::run(move || paused.process.exited())
        .await
        .unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("could not renew its leases in time") || log.contains("lease passed"),
        "{log}"
    );
    assert_eq!(
        audited(&store),
        before,
        "the paused replica wrote nothing: {log}"
    );

    // Started again, it rejoins as a new member and takes its share.
    let rejoined = Replica::start(&config).await;
    assert_ne!(rejoined.id, leader);
    replicas.push(rejoined);
    eventually("the two replicas to share the fleet again", || async {
        agreed_owners(&views(&replicas).await, 2, &machines)
    })
    .await;
    for replica in replicas {
        let (status, log) = linkops::blocking::run(move || replica.process.terminate())
            .await
            .unwrap();
        assert!(status.success(), "{log}");
    }
}

/// Through another replica: an operation is stopped (the one running it
/// reads the ask from the store), a sync is the leader's, what a replica
/// that does not lead queues for a sink the leader delivers at once (the
/// store's doorbell), and a deleted user's stream of an operation ends
/// (account changes reach every replica's connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_and_a_revocation_reach_the_replica_that_holds_the_operation_or_the_stream() {
    let bob = ("bob", Role::Operator, "pw-bob-1");
    let (server, options, store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1), bob]).await;
    let fleet = TestFleet::start(1).unwrap();
    let work = WorkRepo::new(&fleet.dir().join("config"), None);
    work.write("links.yaml", &fleet_links(&fleet, &[]));
    work.write(
        "scripts.yaml",
        "scripts:\n  - id: slow\n    name: Talk, then take a while\n    body: |\n      echo started\n      sleep 60\n  - id: fail\n    name: Fail\n    body: exit 3\n",
    );
    work.commit("fleet and script");
    let sinks = crate::forge::TestSinks::start().await;
    let data: Vec<_> = (0..2)
        .map(|_| {
            let (dir, config) = replica_config(&server, &options.url, &fleet, &work.dir);
            let mut toml = std::fs::read_to_string(&config).unwrap();
            toml.push_str(&format!(
                "[[notify.sinks]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{}/slack\"\nevents = [\"operation_failed\"]\n",
                sinks.url
            ));
            std::fs::write(&config, toml).unwrap();
            (dir, config)
        })
        .collect();
    let (a, b) = (
        Replica::start(&data[0].1).await,
        Replica::start(&data[1].1).await,
    );
    let host = fleet.hosts()[0].name().to_owned();
    eventually("the fleet on both replicas", || async {
        let both = a.get("/api/links").await.as_array()?.len() == 1
            && b.get("/api/links").await.as_array()?.len() == 1;
        both.then_some(())
    })
    .await;
    // Started on A, stopped through B.
    let first = start(&a, "slow", &host).await;
    let mut events = follow(&b, &b.token, first).await;
    read_until(&mut events, "output").await;
    let stopped = reqwest::Client::new()
        .post(format!("{}/api/operations/{first}/stop", b.process.url))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), reqwest::StatusCode::ACCEPTED);
    let end = read_until(&mut events, "end").await.pop().unwrap();
    assert!(end.data.contains("stopped"), "{end:?}");
    let audited = support::as_the_cli(|| store.audit_entries(0, 10_000).unwrap());
    assert!(
        audited
            .iter()
            .any(|entry| entry.target == first.to_string() && entry.action == "operation.stop"),
        "the stop is audited"
    );

    // A sync asked of the replica that does not lead is the leader's, and
    // answered with its record.
    let leader = member(&a.get("/api/cluster").await, |m| m["leader"] == true);
    let follower = if leader == a.id { &b } else { &a };
    let synced = reqwest::Client::new()
        .post(format!("{}/api/git/sync", follower.process.url))
        .bearer_auth(&follower.token)
        .send()
        .await
        .unwrap();
    assert_eq!(synced.status(), reqwest::StatusCode::OK);
    let synced: Value = synced.json().await.unwrap();
    assert_eq!(synced["trigger"], "api:ada", "{synced}");
    assert_eq!(synced["revision"], work.head(), "{synced}");

    // Failed on the replica that does not lead: the leader tells the sink
    // at once (a delivery looks by itself only every few minutes).
    let failed = start(follower, "fail", &host).await;
    let told = format!("operation {failed} (fail,");
    sinks
        .received
        .until("the leader to tell the sink of the failure", 1, |request| {
            request["text"]
                .as_str()
                .is_some_and(|text| text.contains(&told))
        })
        .await;

    // Bob follows the second through B; deleted through A, his stream ends.
    let second = start(&a, "slow", &host).await;
    let bob = b.process.login(bob.0, bob.2).await.unwrap();
    let mut events = follow(&b, &bob, second).await;
    let first_event = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("bob's stream through B");
    assert!(first_event.is_some());
    let deleted = reqwest::Client::new()
        .delete(format!("{}/api/users/bob", a.process.url))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => assert_ne!(event.event, "end", "the operation still runs"),
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "bob's stream through B outlived his account");
    for replica in [a, b] {
        let (status, log) = linkops::blocking::run(move || replica.process.terminate())
            .await
            .unwrap();
        assert!(status.success(), "{log}");
    }
}

/// `method path` through `replica` as the holder of `token`: the status and JSON answer.
async fn call(
    replica: &Replica,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (reqwest::StatusCode, Value) {
    let client = reqwest::Client::new();
    support::request(&client, &replica.process.url, method, path, token, body).await
}

/// A new single-pane workspace on `host`, made through `replica`: its id.
async fn workspace_through(replica: &Replica, token: &str, host: &str) -> String {
    let (status, created) = call(
        replica,
        reqwest::Method::POST,
        "/api/terminal/workspaces",
        token,
        Some(serde_json::json!({ "layout": "single" })),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let panes = format!("/api/terminal/workspaces/{id}/panes");
    let assigned = serde_json::json!({ "panes": [host] });
    let (status, answer) = call(replica, reqwest::Method::PUT, &panes, token, Some(assigned)).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    id
}

/// A terminal workspace lives on the replica that connected it: through the
/// other, its calls and its socket reach the same shell (forwarded), the
/// holder's revocation closes the forwarded socket, and once the holder left
/// the other takes the workspace over. One replica's token is good at the
/// other; a replica with another signing key refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_and_tokens_work_through_any_replica() {
    let oscar = ("oscar", Role::Operator, "pw-oscar-1");
    let olga = ("olga", Role::Operator, "pw-olga-1");
    let vic = ("vic", Role::Viewer, "pw-vic-1");
    let users = [(ADMIN.0, Role::Admin, ADMIN.1), oscar, olga, vic];
    let (server, options, store) = shared_store(&users).await;
    let fleet = TestFleet::start(1).unwrap();
    let (work, _data, a, b) = two_replicas(&server, &options, &options.url, &fleet, None).await;
    // Signed in through A, working through B (as behind a load balancer).
    let token = a.process.login(oscar.0, oscar.2).await.unwrap();
    let id = workspace_through(&b, &token, fleet.hosts()[0].name()).await;

    // Refused requests take nothing: a viewer's and another operator's
    // connect-all through A leave the dormant workspace to no replica.
    let connect = format!("/api/terminal/workspaces/{id}/connect-all");
    for (name, _, password) in [vic, olga] {
        let other = a.process.login(name, password).await.unwrap();
        let (status, answer) = call(&a, reqwest::Method::POST, &connect, &other, None).await;
        assert!(status.is_client_error(), "{name}: {status} {answer}");
    }
    let (holding, id_now) = (store.clone(), id.clone());
    let held = linkops::blocking::run(move || holding.workspace_holder(&id_now, "none", false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.map(|member| member.replica), None, "nobody holds it");

    // The socket makes it A's; connecting through B opens the pane on A.
    let mut on_a = Terminal::open_at(&a.process.url, &id, &token).await;
    let (status, answer) = call(&b, reqwest::Method::POST, &connect, &token, None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(answer["panes"][0]["state"], "connected", "{answer}");
    on_a.run(0, "echo alive-$((40+2))", "alive-42").await;
    let shell = on_a.shell_pid(0, "first").await;
    let path = format!("/api/terminal/workspaces/{id}");
    let (_, seen) = call(&b, reqwest::Method::GET, &path, &token, None).await;
    assert_eq!(
        seen["panes"][0]["state"], "connected",
        "B shows A's pane: {seen}"
    );
    let (_, listed) = call(
        &b,
        reqwest::Method::GET,
        "/api/terminal/workspaces",
        &token,
        None,
    )
    .await;
    assert_eq!(listed[0]["panes"][0]["state"], "connected", "{listed}");
    // A token in the query (as the console's EventSource sends it) is passed on too.
    let by_query = reqwest::Client::new()
        .get(format!(
            "{}/api/terminal/workspaces?access_token={token}",
            b.process.url
        ))
        .send()
        .await
        .unwrap();
    let listed: serde_json::Value = by_query.json().await.unwrap();
    assert_eq!(listed[0]["panes"][0]["state"], "connected", "{listed}");

    // A socket through B takes over from the one on A, on the same shell.
    let mut on_b = Terminal::open_at(&b.process.url, &id, &token).await;
    while on_a.read().await {}
    assert_eq!(on_a.closed.map(|(code, _)| code), Some(4001));
    assert_eq!(on_b.shell_pid(0, "second").await, shell, "the same shell");

    // Demoted through B by a token from A: A, holding the session, closes the socket.
    let user = format!("/api/users/{}", oscar.0);
    let viewer = serde_json::json!({ "role": "viewer" });
    let (status, answer) = call(&b, reqwest::Method::PATCH, &user, &a.token, Some(viewer)).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    while on_b.read().await {}
    assert_eq!(on_b.closed.map(|(code, _)| code), Some(4003));

    // A leaves: B takes the workspace over and opens its own session.
    let (status, log) = linkops::blocking::run(move || a.process.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{log}");
    let operator = serde_json::json!({ "role": "operator" });
    let (status, answer) = call(&b, reqwest::Method::PATCH, &user, &b.token, Some(operator)).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    let token = b.process.login(oscar.0, oscar.2).await.unwrap();
    let mut taken = Terminal::open_at(&b.process.url, &id, &token).await;
    let (status, answer) = call(&b, reqwest::Method::POST, &connect, &token, None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(answer["panes"][0]["state"], "connected", "{answer}");
    taken.run(0, "echo again-$((1+1))", "again-2").await;
    assert_ne!(taken.shell_pid(0, "third").await, shell, "a new shell");

    // A replica that signs with another key would refuse B's tokens: it does not start.
    eventually("B to see itself alone", || async {
        let view = b.get("/api/cluster").await;
        (view["members"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let (other, config) = replica_config(&server, &options.url, &fleet, &work.dir);
    std::fs::write(
        other.path().join("jwt_secret"),
        "another-key-entirely-0123456789",
    )
    .unwrap();
    let refused = linkops::blocking::run(move || {
        let binary = Command::new(env!("CARGO_BIN_EXE_linkops"));
        ServeProcess::spawn(binary, [OsStr::new("--config"), config.as_os_str()])
    })
    .await
    .unwrap()
    .err()
    .expect("a replica with another signing key refused");
    assert!(
        refused.contains("jwt_secret") && refused.contains("the same value on every replica"),
        "{refused}"
    );
    let members = linkops::blocking::run(move || store.live_members().unwrap())
        .await
        .unwrap();
    let members: Vec<_> = members.into_iter().map(|member| member.replica).collect();
    assert_eq!(
        members,
        std::slice::from_ref(&b.id),
        "the refused replica left at once"
    );
    let (status, log) = linkops::blocking::run(move || b.process.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{log}");
}

/// Replicas with `[cluster] listen` reach each other there over mutual TLS
/// only: a workspace held by A is worked through B (forwarded over TLS), the
/// members advertise that address, and it serves nobody without a
/// certificate of the replicas' authority; the API's listener is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_talk_to_each_other_over_mutual_tls_only() {
    let oscar = ("oscar", Role::Operator, "pw-oscar-1");
    let (server, options, _store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1), oscar]).await;
    let fleet = TestFleet::start(1).unwrap();
    let certificates = support::private_dir();
    let authority = TestAuthority::new(certificates.path(), "replicas").unwrap();
    let (_work, _data, a, b) =
        two_replicas(&server, &options, &options.url, &fleet, Some(&authority)).await;

    // Each advertises its replicas' address, not its API's.
    let members = eventually("both replicas to see each other", || async {
        let view = a.get("/api/cluster").await;
        let members = view["members"].as_array()?.clone();
        (members.len() == 2 && members.iter().all(|m| m["address"].is_string())).then_some(members)
    })
    .await;
    let address_of = |replica: &Replica| {
        let member = members.iter().find(|m| m["replica"] == replica.id.as_str());
        member.unwrap()["address"].as_str().unwrap().to_owned()
    };
    let (at_a, at_b) = (address_of(&a), address_of(&b));
    for (replica, address) in [(&a, &at_a), (&b, &at_b)] {
        assert!(
            !replica.process.url.ends_with(address.as_str()),
            "{address}"
        );
    }

    // Held by A (its socket), worked through B: forwarded over TLS.
    let token = a.process.login(oscar.0, oscar.2).await.unwrap();
    let id = workspace_through(&b, &token, fleet.hosts()[0].name()).await;
    let mut on_a = Terminal::open_at(&a.process.url, &id, &token).await;
    let connect = format!("/api/terminal/workspaces/{id}/connect-all");
    let (status, answer) = call(&b, reqwest::Method::POST, &connect, &token, None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    assert_eq!(answer["panes"][0]["state"], "connected", "{answer}");
    on_a.run(0, "echo sealed-$((6*7))", "sealed-42").await;
    let mut on_b = Terminal::open_at(&b.process.url, &id, &token).await;
    on_b.run(0, "echo through-b-$((1+1))", "through-b-2").await;

    // The replicas' address serves a replica's certificate and nothing else.
    let pem = |path: &Path| std::fs::read(path).unwrap();
    let ca = reqwest::Certificate::from_pem(&pem(&authority.certificate())).unwrap();
    let stranger = TestAuthority::new(certificates.path(), "strangers").unwrap();
    let client = |identity: Option<(PathBuf, PathBuf)>| {
        let mut client = reqwest::Client::builder().tls_certs_only([ca.clone()]);
        if let Some((certificate, key)) = identity {
            let both = [pem(&certificate), pem(&key)].concat();
            client = client.identity(reqwest::Identity::from_pem(&both).unwrap());
        }
        client.build().unwrap()
    };
    let health = format!("https://{at_a}/health");
    let replica = client(Some(authority.issue("c", "IP:127.0.0.1").unwrap()));
    let answer = replica.get(&health).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let refused = [
        ("no certificate", client(None)),
        (
            "another authority's",
            client(Some(stranger.issue("d", "IP:127.0.0.1").unwrap())),
        ),
    ];
    for (what, client) in refused {
        let answer = client.get(&health).send().await;
        assert!(answer.is_err(), "{what}: {answer:?}");
    }
    let plain = reqwest::get(format!("http://{at_a}/health")).await;
    assert!(plain.is_err(), "plain HTTP: {plain:?}");
    let answer = reqwest::get(format!("{}/health", a.process.url))
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        reqwest::StatusCode::OK,
        "the API's listener"
    );

    for replica in [a, b] {
        let (status, log) = linkops::blocking::run(move || replica.process.terminate())
            .await
            .unwrap();
        assert!(status.success(), "{log}");
    }
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
        "[cluster]\nlisten = \"127.0.0.1:0\"\ntls_certificate = \"replica.crt\"\ntls_key = \"replica.key\"\ntls_ca = \"replicas-ca.crt\"\n",
    );
    std::fs::write(config, toml).unwrap();
}

/// Output of `talk` (a line every 50 ms for about 4 s), as the script prints it.
fn talk_output() -> String {
    (1..=80).map(|i| format!("line {i}\n")).collect()
}

const TALK: &str = "scripts:\n  - id: talk\n    name: Talk a while\n    body: |\n      for i in $(seq 1 80); do echo line $i; sleep 0.05; done\n";

/// Two replicas of the store at `options` (reached at `first_url` by the
/// first), `fleet`, `talk` in the catalog; talking to each other over
/// mutual TLS with certificates of `authority`, when given.
async fn two_replicas(
    server: &TestPostgres,
    options: &linkops::store::engine::postgres::Options,
    first_url: &str,
    fleet: &TestFleet,
    authority: Option<&TestAuthority>,
) -> (
    WorkRepo,
    Vec<(tempfile::TempDir, PathBuf)>,
    Replica,
    Replica,
) {
    let work = WorkRepo::new(&fleet.dir().join("config"), None);
    work.write("links.yaml", &fleet_links(fleet, &[]));
    work.write("scripts.yaml", TALK);
    work.commit("fleet and script");
    let data = vec![
        replica_config(server, first_url, fleet, &work.dir),
        replica_config(server, &options.url, fleet, &work.dir),
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

/// PostgreSQL is restarted (stopped as by a crash) under a running operation
/// whose output another replica follows: while it is down both say not ready
/// and start nothing; once it is back the output is whole, each event once,
/// in order, and the operation ends as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_event_and_reports_nothing_twice() {
    let (mut server, options, _store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;
    let fleet = TestFleet::start(1).unwrap();
    let (_work, _data, a, b) = two_replicas(&server, &options, &options.url, &fleet, None).await;
    let host = fleet.hosts()[0].name().to_owned();
    let operation = start(&a, "talk", &host).await;
    let mut events = follow(&b, &b.token, operation).await;
    let mut seen = read_until(&mut events, "output").await;

    // Down: neither replica is ready, and nothing starts.
    let mut server = linkops::blocking::run(move || {
        server.stop().unwrap();
        server
    })
    .await
    .unwrap();
    let health = |replica: &Replica| reqwest::get(format!("{}/health", replica.process.url));
    for replica in [&a, &b] {
        let status = health(replica).await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    }
    let refused = run(&b, "talk", &host).await;
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let said: Value = refused.json().await.unwrap();
    let message = said["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("PostgreSQL at"),
        "names the database: {message}"
    );
    let server = linkops::blocking::run(move || {
        server.resume().unwrap();
        server
    })
    .await
    .unwrap();

    // Back: the rest of the log, through the same stream.
    seen.extend(read_until(&mut events, "end").await);
    let ids: Vec<u64> = seen.iter().map(|event| event.id.parse().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let printed: String = seen
        .iter()
        .filter(|event| event.event == "output")
        .map(|event| {
            let chunk: Value = serde_json::from_str(&event.data).unwrap();
            chunk["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(printed, talk_output(), "the whole output, once");
    let end: Value = serde_json::from_str(&seen.last().unwrap().data).unwrap();
    assert_eq!(end["state"], "succeeded", "{end}");
    // The run refused while the database was down never started.
    let operations = b.get("/api/operations").await;
    let ids: Vec<u64> = operations
        .as_array()
        .unwrap()
        .iter()
        .map(|view| view["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [operation], "{operations}");
    for replica in [a, b] {
        let (status, log) = linkops::blocking::run(move || replica.process.terminate())
            .await
            .unwrap();
        assert!(status.success(), "{log}");
    }
    drop(server);
}

/// A TCP forwarder to the database for one replica, which can be cut: then
/// it passes nothing either way and answers nothing — as a network that
/// drops packets — while the sockets stay open.
struct Link {
    address: std::net::SocketAddr,
    cut: tokio_util::sync::CancellationToken,
}

impl Link {
    async fn to(upstream: std::net::SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cut = tokio_util::sync::CancellationToken::new();
        let cutting = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let cut = cutting.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    tokio::join!(
                        pass(cut.clone(), from_client, to_server),
                        pass(cut, from_server, to_client)
                    );
                });
            }
        });
        Link { address, cut }
    }
}

/// Copies `from` to `to` until either closes; once `cut`, passes nothing more.
async fn pass(
    cut: tokio_util::sync::CancellationToken,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 << 10];
    loop {
        let read = tokio::select! {
            () = cut.cancelled() => break,
            read = from.read(&mut buffer) => read,
        };
        match read {
            Ok(n) if n > 0 && !cut.is_cancelled() => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            Ok(0) | Err(_) => return,
            Ok(_) => break,
        }
    }
    // Cut: the sockets stay open, and nothing passes.
    std::future::pending::<()>().await;
    drop((from, to));
}

/// The network between one replica and the database is cut: that replica
/// stops by itself before its lease can have passed, and the other takes
/// every machine and the lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_stops_and_the_other_takes_over() {
    let (server, options, _store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;
    let link = Link::to(([127, 0, 0, 1], server.port()).into()).await;
    let through = options.url.replace(
        &format!("127.0.0.1:{}", server.port()),
        &link.address.to_string(),
    );
    let fleet = TestFleet::start(3).unwrap();
    let (_work, _data, a, b) = two_replicas(&server, &options, &through, &fleet, None).await;
    let machines: BTreeSet<String> = fleet.hosts().iter().map(|h| h.name().to_owned()).collect();

    link.cut.cancel();
    let at = Instant::now();
    let owners = eventually(
        "the other replica to hold every machine and the lead",
        || async {
            let view = b.get("/api/cluster").await;
            let owners = agreed_owners(std::slice::from_ref(&view), 1, &machines)?;
            (view["members"][0]["leader"] == true).then_some(owners)
        },
    )
    .await;
    eprintln!(
        "the other replica took over {:?} after the cut",
        at.elapsed()
    );
    assert!(owners.values().all(|owner| *owner == b.id), "{owners:?}");
    let (status, log) = linkops::blocking::run(move || a.process.exited())
        .await
        .unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("could not renew its leases in time"),
        "it stopped by itself, before its lease passed: {log}"
    );
    let (status, log) = linkops::blocking::run(move || b.process.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{log}");
}

/// A daemon dropped without being stopped — a caller that failed or gave up
/// — stops its workers: its lease renewer's threads would otherwise renew
/// for ever, and the runtime that started it could never shut down (a
/// failing test would hang instead of failing).
#[test]
fn a_daemon_dropped_unstopped_lets_its_runtime_shut_down() {
    let (server, options) = {
        let server = TestPostgres::start().unwrap();
        let options = server.database().unwrap();
        (server, options)
    };
    let data = support::private_dir();
    let mut config = linkops::config::Config {
        data_dir: data.path().to_owned(),
        ..linkops::config::Config::default()
    };
    support::write_private(
        &config.keys_dir().join(&config.store.password_file),
        server.password(),
    );
    config.store.backend = linkops::config::StoreBackend::Postgres;
    config.store.url = Some(options.url);
    let (shut_down, shutting) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let daemon = support::TestDaemon::start(config).await;
            // Serving: its workers, the renewer among them, have started.
            let health = daemon.get("/health", None).await;
            assert_eq!(health.status(), reqwest::StatusCode::OK);
            drop(daemon);
        });
        drop(runtime);
        shut_down.send(()).unwrap();
    });
    shutting
        .recv_timeout(Duration::from_secs(60))
        .expect("the runtime of a dropped daemon shuts down");
}
