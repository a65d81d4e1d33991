//! Notifications: each sink told once across restarts and outages, bouncing damped,
//! secrets echoed back kept redacted, a sink that stays down bounded.

use super::*;

#[tokio::test]
async fn a_failed_operation_reaches_each_sink_once_across_a_restart_and_an_outage() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let receivers = TestSinks::start().await;
    let configured = || {
        let mut config = setup.config();
        config.notify.sinks = sinks(&receivers.url);
        config.forge.console_url = Some("https://linkops.example".into());
        write_secret(&config, "hook_secret", HOOK_SECRET);
        write_secret(&config, "ntfy_token", NTFY_TOKEN);
        config
    };
    // The sinks are down when it fails.
    receivers.received.down.store(true, Ordering::SeqCst);
    let daemon = setup.start_with(configured()).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let verified = daemon.post("/api/links/host1/verify", Some(&token)).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let id = failed_on_host1(&daemon, &token).await;
    // Queued for each sink, tried, still there.
    let outbox = eventually("three tried deliveries", || async {
        let (_, outbox) = daemon
            .request(reqwest::Method::GET, "/api/notifications", &token, None)
            .await;
        let queued = outbox["queued"].as_array().cloned().unwrap_or_default();
        (queued.len() == 3 && queued.iter().all(|q| q["attempts"].as_u64() >= Some(1)))
            .then_some(queued)
    })
    .await;
    let channels: BTreeMap<String, String> = outbox
        .iter()
        .map(|q| {
            (
                q["channel"].as_str().unwrap().to_owned(),
                q["last_error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        channels.keys().collect::<Vec<_>>(),
        ["chat", "ntfy", "webhook"]
    );
    assert!(channels.values().all(|e| e.contains("503")), "{channels:?}");
    daemon.stop().await;

    // Restarted while queued; the sinks come back.
    receivers.received.down.store(false, Ordering::SeqCst);
    let daemon = setup.start_with(configured()).await;
    receivers
        .received
        .until("one message per sink", 3, |_| true)
        .await;
    eventually("an empty outbox", || async {
        let (_, outbox) = daemon
            .request(reqwest::Method::GET, "/api/notifications", &token, None)
            .await;
        (outbox["queued"].as_array().is_some_and(Vec::is_empty)).then_some(())
    })
    .await;
    let webhook = receivers.of("webhook");
    assert_eq!(
        webhook.len(),
        1,
        "{:?} {:?}",
        receivers.received.all(),
        receivers.received.violations()
    );
    let event = &webhook[0]["event"];
    assert_eq!(event["kind"], "operation_failed");
    assert_eq!(event["subject"], id.to_string());
    assert_eq!(
        event["text"],
        "0 succeeded, 1 failed on host1\nhost1: about to fail"
    );
    assert_eq!(
        event["url"],
        format!("https://linkops.example/#/operations/{id}")
    );
    let ntfy = receivers.of("ntfy");
    assert_eq!(ntfy.len(), 1, "{ntfy:?}");
    assert_eq!(ntfy[0]["topic"], "linkops-alerts");
    assert_eq!(ntfy[0]["tags"], "operation_failed");
    assert!(
        ntfy[0]["title"]
            .as_str()
            .unwrap()
            .starts_with(&format!("operation {id} (fail, by ada)"))
    );
    let chat = receivers.of("slack");
    assert_eq!(chat.len(), 1, "{chat:?}");
    assert!(
        chat[0]["text"]
            .as_str()
            .unwrap()
            .contains("0 succeeded, 1 failed on host1")
    );
    assert_eq!(receivers.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

#[tokio::test]
async fn a_machine_going_down_is_told_once_and_its_bouncing_damped() {
    let mut setup = FleetSetup::new(1, &[], SCRIPTS);
    let receivers = TestSinks::start().await;
    let mut config = setup.config();
    write_secret(&config, "hook_secret", HOOK_SECRET);
    config.notify.sinks = vec![SinkConfig {
        name: "ops".into(),
        kind: SinkKind::Webhook,
        url: format!("{}/hook", receivers.url).into(),
        secret_file: Some("hook_secret".into()),
        token_file: None,
        events: vec![],
        allow_plain_http: false,
    }];
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let verify = || async {
        let response = daemon.post("/api/links/host1/verify", Some(&token)).await;
        assert_eq!(response.status(), StatusCode::OK);
    };
    verify().await;
    setup.fleet.hosts_mut()[0].stop();
    verify().await;
    let told = receivers
        .received
        .until("the machine's trouble", 1, |r| {
            r["event"]["kind"] == "machine_unreachable"
        })
        .await;
    assert_eq!(told[0]["event"]["title"], "machine host1 is unreachable");
    assert_eq!(told[0]["event"]["subject"], "host1");
    // It bounces within the damping time: nothing more is sent.
    setup.fleet.hosts_mut()[0].restart().unwrap();
    verify().await;
    setup.fleet.hosts_mut()[0].stop();
    verify().await;
    setup.fleet.hosts_mut()[0].restart().unwrap();
    verify().await;
    let (_, outbox) = daemon
        .request(reqwest::Method::GET, "/api/notifications", &token, None)
        .await;
    assert_eq!(outbox["queued"], json!([]), "{outbox}");
    let kinds: Vec<Value> = receivers
        .received
        .all()
        .iter()
        .map(|r| r["event"]["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("machine_unreachable")]);
    assert_eq!(receivers.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

/// A gateway in front of the forge and the sinks that answers every request
/// with a 502 echoing its path, headers and body — as debug pages and some
/// proxies do.
async fn echoing_gateway() -> String {
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let mut echo = format!("bad gateway: {} {}\n", parts.method, parts.uri);
        for (name, value) in &parts.headers {
            echo += &format!("{name}: {}\n", value.to_str().unwrap_or(""));
        }
        echo += &String::from_utf8_lossy(&body);
        (StatusCode::BAD_GATEWAY, echo)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    url
}

#[tokio::test]
async fn an_answer_that_echoes_a_secret_is_kept_redacted_and_shown_to_admins_only() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let gateway = echoing_gateway().await;
    let slack_path = "/services/T0/B0/slack-path-secret";
    let mut config = setup.config();
    forgejo(&mut config, &gateway);
    write_secret(&config, "forge_token", TOKEN);
    write_secret(&config, "ntfy_token", NTFY_TOKEN);
    let sink = |name: &str, kind, url: String, token_file: Option<String>| SinkConfig {
        name: name.into(),
        kind,
        url: url.into(),
        secret_file: None,
        token_file,
        events: vec![linkops_reconcilers::outbox::EventKind::OperationFailed],
        allow_plain_http: false,
    };
    config.notify.sinks = vec![
        sink(
            "chat",
            SinkKind::Slack,
            format!("{gateway}{slack_path}"),
            None,
        ),
        sink(
            "ntfy",
            SinkKind::Ntfy,
            format!("{gateway}/alerts"),
            Some("ntfy_token".into()),
        ),
    ];
    let daemon = setup.start_with(config).await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    failed_on_host1(&daemon, &admin).await;
    let outbox = eventually("every channel to have failed once", || async {
        let (_, outbox) = daemon
            .request(reqwest::Method::GET, "/api/notifications", &admin, None)
            .await;
        let queued = outbox["queued"].as_array().cloned().unwrap_or_default();
        let failed: BTreeMap<String, String> = queued
            .iter()
            .filter_map(|q| {
                Some((
                    q["channel"].as_str()?.into(),
                    q["last_error"].as_str()?.into(),
                ))
            })
            .collect();
        (failed.len() == 3).then_some(failed)
    })
    .await;
    for (channel, error) in &outbox {
        assert!(error.contains("502"), "{channel}: {error}");
        assert!(error.contains("[redacted]"), "{channel}: {error}");
        for secret in [TOKEN, NTFY_TOKEN, slack_path] {
            assert!(!error.contains(secret), "{channel}: {error}");
        }
    }
    // Viewers see that statuses wait, not what the forge answered.
    let viewer = daemon.token(VIEWER.0, VIEWER.1).await;
    let (status, _) = daemon
        .request(reqwest::Method::GET, "/api/notifications", &viewer, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, git) = daemon
        .request(reqwest::Method::GET, "/api/git/status", &viewer, None)
        .await;
    let waiting = git["statuses_queued"].as_array().unwrap();
    assert!(!waiting.is_empty(), "{git}");
    assert!(waiting.iter().all(|q| q["last_error"].is_null()), "{git}");
    let (_, git) = daemon
        .request(reqwest::Method::GET, "/api/git/status", &admin, None)
        .await;
    assert!(git["statuses_queued"][0]["last_error"].is_string(), "{git}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_sink_that_stays_down_holds_at_most_its_bound_and_the_outbox_pages() {
    let setup = FleetSetup::new(1, &[], SCRIPTS);
    let receivers = TestSinks::start().await;
    receivers.received.down.store(true, Ordering::SeqCst);
    let mut config = setup.config();
    config.notify.sinks = sinks(&receivers.url)
        .into_iter()
        .filter(|sink| sink.name == "chat")
        .collect();
    config.notify.max_queued = 3;
    let daemon = setup.start_with(config).await;
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let mut failed = Vec::new();
    for _ in 0..6 {
        failed.push(failed_on_host1(&daemon, &token).await.to_string());
    }
    let outbox = |query: &'static str| {
        let (daemon, token) = (&daemon, &token);
        async move {
            let path = format!("/api/notifications{query}");
            let (status, outbox) = daemon
                .request(reqwest::Method::GET, &path, token, None)
                .await;
            assert_eq!(status, StatusCode::OK, "{outbox}");
            outbox
        }
    };
    let subjects = |messages: &Value| -> Vec<String> {
        messages
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["message"]["subject"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = outbox("?channel=chat").await;
    assert_eq!(all["queued_total"], 3, "{all}");
    assert_eq!(
        subjects(&all["queued"]),
        failed[3..],
        "the newest three wait"
    );
    assert_eq!(
        subjects(&all["dead"]),
        failed[..3],
        "the oldest three were dropped"
    );
    for dead in all["dead"].as_array().unwrap() {
        let why = dead["last_error"].as_str().unwrap();
        assert!(why.contains("[notify] max_queued"), "{why}");
    }
    // Paged: two, then the one after them.
    let first = outbox("?channel=chat&limit=2").await;
    assert_eq!(subjects(&first["queued"]), failed[3..5]);
    let last_seq = first["queued"][1]["seq"].as_u64().unwrap();
    let path = format!("/api/notifications?channel=chat&after={last_seq}");
    let (_, rest) = daemon
        .request(reqwest::Method::GET, &path, &token, None)
        .await;
    assert_eq!(subjects(&rest["queued"]), failed[5..]);
    daemon.stop().await;
}
