//! Who may use a terminal, and for how long: wrong tokens, foreign origins and
//! other users refused; demoted, deleted and revoked users' sockets and streams ended.

use linkops::contract::{Credentials, ErrorBody, OperationView, UserView};
use linkops_reconcilers::role::Role;

use super::*;

#[tokio::test]
async fn a_demoted_or_deleted_user_loses_their_open_terminals() {
    let setup = setup(1, &[]);
    let daemon = setup.start().await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let id = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let mut terminal = Terminal::open(&daemon, &id, &token).await;
    let pane = connect_all(&daemon, &token, &id, json!({})).await.remove(0);
    assert_eq!(pane.state, PaneState::Connected, "{pane:?}");
    terminal.run(0, "echo alive-$((40+2))", "alive-42").await;

    // Demoted to viewer: the open shell ends and the socket is told why.
    let (status, user) = daemon
        .request(
            reqwest::Method::PATCH,
            &format!("/api/users/{}", OPERATOR.0),
            &admin,
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let user: UserView = answer(&user);
    assert_eq!(user.role, Some(Role::Viewer));
    while terminal.read().await {}
    let (code, reason) = terminal.closed.clone().expect("a close frame");
    assert_eq!(code, 4003, "{reason}");
    let session = pane.session.unwrap();
    let end = support::eventually("the revoked session to be recorded", || async {
        recording(&daemon, &admin, session).await.session.end
    })
    .await;
    assert_eq!(end, SessionEnd::Revoked);
    let url = format!("{}?access_token={token}", socket_url(&daemon, &id));
    let refused = open_socket(&url, &[])
        .await
        .err()
        .expect("a viewer's socket");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // Deleted: their token stops working; the workspace and recording stay for admins.
    let (status, _) = daemon
        .request(
            reqwest::Method::DELETE,
            &format!("/api/users/{}", OPERATOR.0),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let me = daemon.get("/api/auth/me", Some(&token)).await;
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
    // Read as an admin (`read` asserts 200 OK).
    recording(&daemon, &admin, session).await;
    daemon.stop().await;
}

/// Every long-lived connection a user holds ends when their access does, whoever's
/// workspace it is on; and a deleted user's name never hands a new account their things.
#[tokio::test]
async fn revoked_access_ends_every_socket_and_stream_and_names_are_never_reused() {
    let setup = setup(1, &[]);
    let daemon = setup.start().await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let olga = daemon.token(OTHER_OPERATOR.0, OTHER_OPERATOR.1).await;
    let oscar = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let (status, created) = daemon
        .request(
            reqwest::Method::POST,
            "/api/users",
            &admin,
            Some(json!({ "username": "root2", "role": "admin" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let root2 = daemon
        .token("root2", &answer::<Credentials>(&created).password)
        .await;

    // A second admin attached to olga's workspace is deleted: their socket ends, olga's shell lives.
    let olgas = workspace(&daemon, &olga, "single", &[Some("host1")]).await;
    let pane = connect_all(&daemon, &olga, &olgas, json!({}))
        .await
        .remove(0);
    assert_eq!(pane.state, PaneState::Connected, "{pane:?}");
    let mut watching = Terminal::open(&daemon, &olgas, &root2).await;
    watching.run(0, "echo seen-$((6*7))", "seen-42").await;
    let delete = |name: &'static str| {
        let (daemon, admin) = (&daemon, &admin);
        async move {
            let path = format!("/api/users/{name}");
            let (status, answer) = daemon
                .request(reqwest::Method::DELETE, &path, admin, None)
                .await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
        }
    };
    delete("root2").await;
    while watching.read().await {}
    assert_eq!(watching.closed.clone().expect("a close frame").0, 4003);
    let mut owner = Terminal::open(&daemon, &olgas, &olga).await;
    owner.run(0, "echo still-$((6*7))", "still-42").await;

    // A password reset ends the sockets of every older token.
    let own = workspace(&daemon, &oscar, "single", &[Some("host1")]).await;
    let mut oscars = Terminal::open(&daemon, &own, &oscar).await;
    let pane = connect_all(&daemon, &oscar, &own, json!({}))
        .await
        .remove(0);
    assert_eq!(pane.state, PaneState::Connected, "{pane:?}");
    let (status, _) = daemon
        .request(
            reqwest::Method::POST,
            &format!("/api/users/{}/password", OPERATOR.0),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    while oscars.read().await {}
    assert_eq!(oscars.closed.clone().expect("a close frame").0, 4003);

    // Olga's streams (the fleet's, an operation's) end when she is deleted.
    use eventsource_stream::Eventsource;
    let verified = daemon.post("/api/links/host1/verify", Some(&olga)).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let (status, run) = daemon
        .request(
            reqwest::Method::POST,
            "/api/operations/run",
            &olga,
            Some(json!({ "script": "sleeper", "targets": { "machines": ["host1"] } })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let operation = answer::<OperationView>(&run).operation.id;
    let mut operation_events = daemon
        .get(
            &format!("/api/operations/{operation}/events?access_token={olga}"),
            None,
        )
        .await
        .bytes_stream()
        .eventsource();
    let mut fleet_events = daemon
        .get(&format!("/api/fleet/events?access_token={olga}"), None)
        .await
        .bytes_stream()
        .eventsource();
    let first = fleet_events.next().await.expect("the fleet's first event");
    assert_eq!(first.unwrap().event, "snapshot");
    loop {
        let event = operation_events
            .next()
            .await
            .expect("the operation's events");
        if event.unwrap().event == "output" {
            break;
        }
    }
    delete(OTHER_OPERATOR.0).await;
    while let Some(event) = tokio::time::timeout(WAIT, fleet_events.next())
        .await
        .unwrap()
    {
        assert!(matches!(
            event.unwrap().event.as_str(),
            "snapshot" | "changes"
        ));
    }
    while let Some(event) = tokio::time::timeout(WAIT, operation_events.next())
        .await
        .unwrap()
    {
        assert_ne!(event.unwrap().event, "end", "the operation still runs");
    }
    while owner.read().await {}
    assert_eq!(owner.closed.clone().expect("a close frame").0, 4003);

    // A new account cannot take the name, nor inherit the workspace.
    let (status, refused) = daemon
        .request(
            reqwest::Method::POST,
            "/api/users",
            &admin,
            Some(json!({ "username": OTHER_OPERATOR.0, "role": "operator" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let message = answer::<ErrorBody>(&refused).error.message;
    assert!(message.contains("retired"), "{message}");
    let (status, _) = daemon
        .request(
            reqwest::Method::GET,
            &format!("/api/terminal/workspaces/{olgas}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let stopped = daemon
        .post(&format!("/api/operations/{operation}/stop"), Some(&admin))
        .await;
    assert_eq!(stopped.status(), StatusCode::ACCEPTED);
    daemon.stop().await;
}

#[tokio::test]
async fn terminals_refuse_wrong_tokens_foreign_origins_and_other_users() {
    let setup = setup(1, &[]);
    let mut config = setup.config();
    config.terminal.allowed_origins = vec!["https://console.example".into()];
    let daemon = setup.start_with(config).await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let id = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let url = socket_url(&daemon, &id);

    let refused = open_socket(&format!("{url}?access_token=not-a-token"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused = open_socket(&url, &[]).await.err().unwrap();
    assert_eq!(refused.status(), 401);

    let with_token = format!("{url}?access_token={token}");
    let refused = open_socket(&with_token, &[("origin", "https://evil.example".into())])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body = String::from_utf8(refused.body().clone().unwrap()).unwrap();
    assert!(body.contains("forbidden_origin"), "{body}");

    // The daemon's own origin and the configured ones are welcome.
    let own = daemon.url.clone();
    for origin in [own, "https://console.example".to_owned()] {
        assert!(
            open_socket(&with_token, &[("origin", origin)])
                .await
                .is_ok()
        );
    }

    // A browser passes the token as a subprotocol; the server selects linkops.v1.
    let protocols = format!("linkops.v1, linkops.token.{token}");
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (_, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "linkops.v1");

    // Viewers open no terminals; other operators do not see this workspace.
    let viewer = daemon.token(support::VIEWER.0, support::VIEWER.1).await;
    let refused = open_socket(&format!("{url}?access_token={viewer}"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status(), 403);
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let (status, _) = daemon
        .request(
            reqwest::Method::GET,
            &format!("/api/terminal/workspaces/{id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "admins see every workspace");
    let olga = daemon.token(OTHER_OPERATOR.0, OTHER_OPERATOR.1).await;
    let (status, _) = daemon
        .request(
            reqwest::Method::GET,
            &format!("/api/terminal/workspaces/{id}"),
            &olga,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    daemon.stop().await;
}
