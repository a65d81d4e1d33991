//! Working through another replica: stops and revocations reach the one that
//! holds the operation or the stream, terminals are forwarded, and replicas talk
//! over mutual TLS only.

use linkops::contract::{ConnectAnswer, MachineView, PaneState, SyncView, WorkspaceView};

use super::*;

/// Through another replica: an operation is stopped (the one running it
/// reads the ask from the store), a sync is the leader's, what a replica
/// that does not lead queues for a sink the leader delivers at once (the
/// store's doorbell), and a deleted user's stream of an operation ends
/// (account changes reach every replica's connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_and_a_revocation_reach_the_replica_that_holds_the_operation_or_the_stream() {
    let bob = ("bob", Role::Operator, "pw-bob-1");
    let (server, database, store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1), bob]).await;
    let fleet = TestFleet::start(1).unwrap();
    let work = WorkRepo::new(&fleet.dir().join("config"), None);
    work.write("links.yaml", &fleet.inventory("test", &[], ""));
    work.write(
        "scripts.yaml",
        "scripts:\n  - id: slow\n    name: Talk, then take a while\n    body: |\n      echo started\n      sleep 60\n  - id: fail\n    name: Fail\n    body: exit 3\n",
    );
    work.commit("fleet and script");
    let sinks = crate::forge::TestSinks::start().await;
    let data: Vec<_> = (0..2)
        .map(|_| {
            let (dir, config) = replica_config(&server, &database.url, &fleet, &work.dir, LEASE);
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
        let on = async |replica: &Replica| {
            let machines: Vec<MachineView> = replica.get("/api/links").await?;
            Some(machines.len())
        };
        let both = on(&a).await? == 1 && on(&b).await? == 1;
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
    let leader = member(&a.cluster().await, |m| m.leader);
    let follower = if leader == a.id { &b } else { &a };
    let synced = reqwest::Client::new()
        .post(format!("{}/api/git/sync", follower.process.url))
        .bearer_auth(&follower.token)
        .send()
        .await
        .unwrap();
    assert_eq!(synced.status(), reqwest::StatusCode::OK);
    let synced: SyncView = synced.json().await.unwrap();
    assert_eq!(synced.trigger, "api:ada", "{synced:?}");
    assert_eq!(synced.revision, Some(work.head()), "{synced:?}");

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
    let id = answer::<WorkspaceView>(&created).id;
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
    let (server, database, store) = shared_store(&users).await;
    let fleet = TestFleet::start(1).unwrap();
    let (work, _data, a, b) =
        two_replicas(&server, &database, &database.url, &fleet, None, LEASE).await;
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
    let (status, connected_panes) = call(&b, reqwest::Method::POST, &connect, &token, None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{connected_panes}");
    let state = connected(&connected_panes);
    assert_eq!(state, PaneState::Connected, "{connected_panes}");
    on_a.run(0, "echo alive-$((40+2))", "alive-42").await;
    let shell = on_a.shell_pid(0, "first").await;
    let path = format!("/api/terminal/workspaces/{id}");
    let (_, seen) = call(&b, reqwest::Method::GET, &path, &token, None).await;
    let seen: WorkspaceView = answer(&seen);
    let state = seen.panes[0].state;
    assert_eq!(state, PaneState::Connected, "B shows A's pane: {seen:?}");
    let (_, listed) = call(
        &b,
        reqwest::Method::GET,
        "/api/terminal/workspaces",
        &token,
        None,
    )
    .await;
    assert_eq!(listed_state(&listed), PaneState::Connected, "{listed}");
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
    assert_eq!(listed_state(&listed), PaneState::Connected, "{listed}");

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
    let (status, connected_panes) = call(&b, reqwest::Method::POST, &connect, &token, None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{connected_panes}");
    let state = connected(&connected_panes);
    assert_eq!(state, PaneState::Connected, "{connected_panes}");
    taken.run(0, "echo again-$((1+1))", "again-2").await;
    assert_ne!(taken.shell_pid(0, "third").await, shell, "a new shell");

    // A replica that signs with another key would refuse B's tokens: it does not start.
    eventually("B to see itself alone", || async {
        let view = b.cluster().await;
        (view.members.len() == 1).then_some(())
    })
    .await;
    let (other, config) = replica_config(&server, &database.url, &fleet, &work.dir, LEASE);
    std::fs::write(
        other.path().join("jwt_secret"),
        "another-key-entirely-0123456789",
    )
    .unwrap();
    let refused = refused_to_start(config, "a replica with another signing key").await;
    assert!(
        refused.contains("jwt_secret") && refused.contains("the same value on every replica"),
        "{refused}"
    );
    // Nor does one holding another SSH user CA: machines would refuse its logins.
    let (other_ca, config) = replica_config(&server, &database.url, &fleet, &work.dir, LEASE);
    std::fs::remove_dir_all(other_ca.path().join("ca")).unwrap();
    let refused = refused_to_start(config, "a replica with another user CA").await;
    let names = format!(
        "SSH user CA ({})",
        other_ca.path().join("ca/user_ca").display()
    );
    assert!(
        refused.contains(&names) && refused.contains("copy it (mode 0600)"),
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
    let (server, database, _store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1), oscar]).await;
    let fleet = TestFleet::start(1).unwrap();
    let certificates = testbed::private_dir();
    let authority = TestAuthority::new(certificates.path(), "replicas").unwrap();
    let (_work, _data, a, b) = two_replicas(
        &server,
        &database,
        &database.url,
        &fleet,
        Some(&authority),
        LEASE,
    )
    .await;

    // Each advertises its replicas' address, not its API's.
    let members = eventually("both replicas to see each other", || async {
        let members = a.cluster().await.members;
        (members.len() == 2 && members.iter().all(|m| m.address.is_some())).then_some(members)
    })
    .await;
    let address_of = |replica: &Replica| {
        let member = members.iter().find(|m| m.replica == replica.id);
        member.unwrap().address.clone().unwrap()
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
    let (status, connected_panes) = call(&b, reqwest::Method::POST, &connect, &token, None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{connected_panes}");
    let state = connected(&connected_panes);
    assert_eq!(state, PaneState::Connected, "{connected_panes}");
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

/// The state of the first pane a connect answered with.
fn connected(answered: &Value) -> PaneState {
    answer::<ConnectAnswer>(answered).panes[0].state
}

/// The state of the first pane of the first workspace listed.
fn listed_state(listed: &Value) -> PaneState {
    answer::<Vec<WorkspaceView>>(listed)[0].panes[0].state
}

/// What `linkops serve --config CONFIG` said as it refused to start (`what` must be refused).
async fn refused_to_start(config: PathBuf, what: &str) -> String {
    let started = linkops::blocking::run(move || {
        let binary = Command::new(env!("CARGO_BIN_EXE_linkops"));
        ServeProcess::spawn(binary, [OsStr::new("--config"), config.as_os_str()])
    });
    let refused = started.await.unwrap().err();
    refused.unwrap_or_else(|| panic!("{what} started"))
}

/// A user-CA rotation taken through one replica is followed by the other:
/// with the next key copied to it, it trusts both while the rotation is
/// under way, and signs with the new one once the first finished it.
#[tokio::test]
async fn a_user_ca_rotation_through_one_replica_is_followed_by_the_other() {
    let (server, database, _store) = shared_store(&[(ADMIN.0, Role::Admin, ADMIN.1)]).await;
    let fleet = TestFleet::start(1).unwrap();
    let (_work, data, a, b) =
        two_replicas(&server, &database, &database.url, &fleet, None, LEASE).await;
    let token = a.process.login(ADMIN.0, ADMIN.1).await.unwrap();
    let rotation = "/api/ca/rotation";
    let (status, begun) = call(
        &a,
        reqwest::Method::POST,
        rotation,
        &token,
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{begun}");
    let begun: linkops::contract::CaView = answer(&begun);
    let next = begun.rotation.expect("a rotation under way").next_user_ca;
    // The operator copies the next key to the other replica, as docs/config-repository.md says.
    let (here, there) = (data[0].0.path().join("ca"), data[1].0.path().join("ca"));
    for name in ["user_ca.next", "user_ca.next.pub"] {
        std::fs::copy(here.join(name), there.join(name)).unwrap();
    }
    let ca_of = |replica: &Replica| {
        let token = token.clone();
        let url = replica.process.url.clone();
        async move {
            let client = reqwest::Client::new();
            let (_, view) =
                support::request(&client, &url, reqwest::Method::GET, "/api/ca", &token, None)
                    .await;
            answer::<linkops::contract::CaView>(&view)
        }
    };
    eventually("the other replica to trust the next CA too", || async {
        let seen = ca_of(&b).await;
        (seen.rotation.map(|r| r.next_user_ca) == Some(next.clone())).then_some(())
    })
    .await;

    let finish = Some(serde_json::json!({"finish": true}));
    let (status, finished) = call(&a, reqwest::Method::POST, rotation, &token, finish).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{finished}");
    eventually("the other replica to sign with the new CA", || async {
        let seen = ca_of(&b).await;
        (seen.user_ca == next && seen.rotation.is_none()).then_some(())
    })
    .await;
    let kept = std::fs::read_to_string(there.join("user_ca.pub")).unwrap();
    assert_eq!(kept.trim(), next, "its own files rotated too");
    assert!(!there.join("user_ca.next").exists());
}
