//! What a replica held, taken over: a killed or paused replica's machines and
//! operations, one cut off from the database, and a daemon dropped unstopped.

use linkops::contract::{MachineView, RunView, StateEvent};
use linkops_reconcilers::operation::{HostState, OperationState};
use linkops_reconcilers::run::RunState;

use super::*;

/// Three replicas share a fleet: each machine is checked by its owner only;
/// an operation runs on one replica and is followed through another; that
/// replica is killed mid-operation and within seconds its machines have new
/// owners, its operation is interrupted (each host too), the follower sees the
/// end and the run-request never runs again; the leader, paused past its
/// lease, is replaced, writes nothing when it wakes, and stops; started
/// again it rejoins as a new member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_fleet_and_take_over_what_a_killed_or_paused_one_held() {
    let (server, database, store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;

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
        .map(|_| replica_config(&server, &database.url, &fleet, &work.dir, LEASE))
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
    work.write("links.yaml", &fleet.inventory("test", &[], ""));
    work.commit("the fleet");
    let owners = eventually("every replica to share the fleet out alike", || async {
        agreed_owners(&views(&replicas).await, 3, &machines)
    })
    .await;
    // Every machine is checked, as the fleet's live stream of any replica
    // tells (each commit of another replica reaches it through the store)…
    let follower = &replicas[2];
    testbed::until_machines(
        &follower.process.url,
        &follower.token,
        "every machine reachable",
        |view: &MachineView| &view.spec.id,
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
        let run: RunView = replicas[0].get("/api/runs/r1").await?;
        match run.state? {
            RunState::Started { operation_id } => Some(operation_id),
            _ => None,
        }
    })
    .await;
    let cluster = replicas[0].cluster().await;
    let runner = member(&cluster, |m| m.runs.iter().any(|r| r == "r1"));
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
    let ended: StateEvent = serde_json::from_str(&end.data).unwrap();
    assert_eq!(ended.state, OperationState::Interrupted, "{ended:?}");
    let path = format!("/api/operations/{operation}");
    let view: OperationView = follower.get(&path).await.unwrap();
    let state = view.operation.state;
    assert_eq!(state, OperationState::Interrupted, "{view:?}");
    for host in &view.hosts {
        assert_eq!(host.state, HostState::Interrupted, "{view:?}");
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
        let run: RunView = follower.get("/api/runs/r1").await?;
        run.changed_after_run.then_some(run)
    })
    .await;
    let started = RunState::Started {
        operation_id: operation,
    };
    assert_eq!(run.state, Some(started), "{run:?}");
    assert!(
        marks(&marks_dir).values().all(|&runs| runs == 1),
        "{:?}",
        marks(&marks_dir)
    );

    // The leader is paused past its lease: the other takes the lead…
    let leader = member(&follower.cluster().await, |m| m.leader);
    let paused = replicas.iter().position(|r| r.id == leader).unwrap();
    let paused = replicas.remove(paused);
    let other = &replicas[0];
    let audited =
        |store: &Store| support::as_the_cli(|| store.audit_entries(0, 10_000).unwrap().len());
    paused.signal(Signal::STOP);
    let at = Instant::now();
    eventually("the other replica to lead alone", || async {
        let members = other.cluster().await.members;
        let alone = members.len() == 1 && members[0].leader;
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
    let (server, database, _store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;
    let link = Link::to(([127, 0, 0, 1], server.port()).into()).await;
    let through = database.url.replace(
        &format!("127.0.0.1:{}", server.port()),
        &link.address.to_string(),
    );
    let fleet = TestFleet::start(3).unwrap();
    let (_work, _data, a, b) =
        two_replicas(&server, &database, &through, &fleet, None, LEASE).await;
    let machines: BTreeSet<String> = fleet.hosts().iter().map(|h| h.name().to_owned()).collect();

    link.cut.cancel();
    let at = Instant::now();
    let owners = eventually(
        "the other replica to hold every machine and the lead",
        || async {
            let view = b.cluster().await;
            let owners = agreed_owners(std::slice::from_ref(&view), 1, &machines)?;
            view.members[0].leader.then_some(owners)
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
    let (server, database) = {
        let server = TestPostgres::start().unwrap();
        let database = server.database().unwrap();
        (server, database)
    };
    let data = testbed::private_dir();
    let mut config = linkops::config::Config {
        data_dir: data.path().to_owned(),
        ..linkops::config::Config::default()
    };
    testbed::write_private(
        &config.keys_dir().join(&config.store.password_file),
        server.password(),
    );
    config.store.backend = linkops::config::StoreBackend::Postgres;
    config.store.url = Some(database.url);
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
