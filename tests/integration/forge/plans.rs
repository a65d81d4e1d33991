//! Pushes to other branches: planned on their heads, never applied; deleted ones forgotten.

use super::*;

/// A signed Forgejo push delivery of `head` to `branch`.
async fn push_delivery(daemon: &TestDaemon, branch: &str, head: &str, delivery: &str) -> Value {
    let response = deliver_push(daemon, branch, head, delivery).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    response.json().await.unwrap()
}

/// Delivers a signed Forgejo push of `head` to `branch`: the daemon's answer.
async fn deliver_push(
    daemon: &TestDaemon,
    branch: &str,
    head: &str,
    delivery: &str,
) -> reqwest::Response {
    let body = json!({ "ref": format!("refs/heads/{branch}"), "after": head }).to_string();
    let signature = linkops::git::webhook::sign(body.as_bytes(), WEBHOOK_SECRET.as_bytes());
    daemon
        .client()
        .post(format!("{}/api/git/webhook", daemon.url))
        .header("content-type", "application/json")
        .header("x-forgejo-event", "push")
        .header("x-forgejo-delivery", delivery)
        .header("x-forgejo-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_push_to_another_branch_is_planned_on_its_head_and_changes_nothing() {
    let setup = ssh_setup();
    let forge = TestForge::start(setup.remote.path.clone()).await;
    let mut config = ssh_config(setup.data.path(), &setup.fleet, &setup.remote.url);
    forgejo(&mut config, &forge.url);
    write_secret(&config, "forge_token", TOKEN);
    let first = setup.work.head();
    let daemon = TestDaemon::start(config).await;
    applied(&daemon, &first).await;

    // A feature branch that changes a script's timeout.
    setup
        .work
        .git(&["checkout", "-q", "-b", "feature/longer-uptime"]);
    let scripts = setup
        .work
        .read("scripts.yaml")
        .replace("timeout: 30s", "timeout: 45s");
    setup.work.write("scripts.yaml", &scripts);
    let good = setup.work.commit("a longer uptime timeout");
    setup.work.git(&[
        "push",
        "-q",
        "--force",
        &setup.remote.url,
        "feature/longer-uptime",
    ]);
    let answer = push_delivery(&daemon, "feature/longer-uptime", &good, "plan-1").await;
    assert_eq!(answer, json!({"plan": "feature/longer-uptime"}));
    let planned = forge
        .received
        .until("the plan", 1, |r| r["sha"] == good.as_str())
        .await;
    assert_eq!(
        statuses_of(&planned, &good),
        [(
            "linkops/plan".into(),
            "success".into(),
            "1 change(s): ~ script uptime: timeout changed".into()
        )]
    );

    // A broken branch: the plan says where it would be refused.
    setup.work.write(
        "links.yaml",
        "machines:\n  - id: broken\n    host: [not, a, host]\n",
    );
    let broken = setup.work.commit("a broken inventory");
    setup.work.git(&[
        "push",
        "-q",
        "--force",
        &setup.remote.url,
        "feature/longer-uptime",
    ]);
    push_delivery(&daemon, "feature/longer-uptime", &broken, "plan-2").await;
    let refused = forge
        .received
        .until("the refusal", 1, |r| r["sha"] == broken.as_str())
        .await;
    let (context, state, description) = statuses_of(&refused, &broken).remove(0);
    assert_eq!(
        (context.as_str(), state.as_str()),
        ("linkops/plan", "failure")
    );
    assert!(
        description.starts_with("would be refused: links.yaml:"),
        "{description}"
    );

    // Nothing was applied from the branch, and the sync history has no attempt of it.
    let desired = daemon.daemon().git().desired().borrow().clone().unwrap();
    assert_eq!(desired.revision, first);
    let token = daemon.token(ADMIN.0, ADMIN.1).await;
    let status: GitStatus = daemon.read("/api/git/status", &token).await;
    let last = status
        .last_attempt
        .as_ref()
        .and_then(|a| a.revision.as_deref());
    assert_eq!(last, Some(first.as_str()), "{status:?}");
    // A name that could change the fetch's refspec is not planned.
    let answer = push_delivery(&daemon, "a:b", &good, "plan-3").await;
    let ignored = matches!(support::answer(&answer), WebhookAnswer::Ignored(_));
    assert!(ignored, "{answer}");
    assert_eq!(forge.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}

#[tokio::test]
async fn a_burst_of_branch_pushes_is_planned_without_loss_and_deleted_branches_are_forgotten() {
    let setup = ssh_setup();
    let forge = TestForge::start(setup.remote.path.clone()).await;
    let mut config = ssh_config(setup.data.path(), &setup.fleet, &setup.remote.url);
    forgejo(&mut config, &forge.url);
    config.git.plan_queue = 3;
    let plans_dir = config.plans_dir();
    write_secret(&config, "forge_token", TOKEN);
    let first = setup.work.head();
    let daemon = TestDaemon::start(config).await;
    applied(&daemon, &first).await;

    // Twelve branches, each a commit of its own, and eight pushes to one of them.
    let mut heads = BTreeMap::new();
    for n in 0..12 {
        let branch = format!("feature/{n:02}");
        setup.work.git(&["checkout", "-q", "-B", &branch, &first]);
        setup.work.write(
            "runs/planned.yaml",
            &format!("id: planned-{n}\nscript: uptime\n"),
        );
        heads.insert(branch, setup.work.commit(&format!("plan {n}")));
    }
    let mut again = Vec::new();
    for k in 0..8 {
        setup.work.git(&["checkout", "-q", "feature/00"]);
        setup.work.write(
            "runs/planned.yaml",
            &format!("id: planned-0-{k}\nscript: uptime\n"),
        );
        again.push(setup.work.commit(&format!("plan 0, push {k}")));
    }
    let mut push = vec!["push", "-q", "--force", setup.remote.url.as_str()];
    push.extend(heads.keys().map(String::as_str));
    setup.work.git(&push);
    // All at once: each answer is a plan queued, or a 503 naming the setting, to deliver again.
    let deliveries = heads
        .iter()
        .map(|(branch, head)| (branch.clone(), head.clone(), format!("burst-{branch}")))
        .chain(
            again
                .iter()
                .enumerate()
                .map(|(k, head)| ("feature/00".to_owned(), head.clone(), format!("again-{k}"))),
        );
    let mut waiting: Vec<(String, String, String)> = deliveries.collect();
    let mut refused = 0;
    for round in 0..150 {
        let answers = futures::future::join_all(
            waiting
                .iter()
                .map(|(branch, head, delivery)| deliver_push(&daemon, branch, head, delivery)),
        )
        .await;
        let mut next = Vec::new();
        for (answer, delivery) in answers.into_iter().zip(waiting) {
            match answer.status() {
                StatusCode::ACCEPTED => {
                    let body: Value = answer.json().await.unwrap();
                    assert_eq!(body, json!({"plan": delivery.0}));
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused += 1;
                    assert!(answer.headers().contains_key("retry-after"));
                    let body: ErrorBody = answer.json().await.unwrap();
                    let message = body.error.message;
                    assert!(message.contains("[git] plan_queue"), "{message}");
                    next.push(delivery);
                }
                other => panic!("round {round}: {other} for {delivery:?}"),
            }
        }
        waiting = next;
        if waiting.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(waiting.is_empty(), "never taken: {waiting:?}");
    // Every branch is planned on its newest head: nothing was dropped.
    let newest = again.last().unwrap().clone();
    heads.insert("feature/00".into(), newest);
    for (branch, head) in &heads {
        let planned = forge
            .received
            .until(&format!("the plan of {branch}"), 1, |r| {
                r["sha"] == head.as_str()
            })
            .await;
        let (context, state, _) = statuses_of(&planned, head).remove(0);
        assert_eq!(
            (context.as_str(), state.as_str()),
            ("linkops/plan", "success")
        );
    }
    eprintln!("{refused} deliveries were refused for a full queue, then taken");

    // Deleted branches are forgotten, and with the last one the plans' mirror goes.
    assert!(plans_dir.exists());
    for (n, branch) in heads.keys().enumerate() {
        let zeros = "0".repeat(40);
        let answer = loop {
            let response = deliver_push(&daemon, branch, &zeros, &format!("delete-{n}")).await;
            if response.status() == StatusCode::ACCEPTED {
                break response.json::<Value>().await.unwrap();
            }
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(answer, json!({"forgotten": branch}));
    }
    eventually("the plans' mirror to be removed", || async {
        (!plans_dir.exists()).then_some(())
    })
    .await;
    assert_eq!(forge.received.violations(), Vec::<String>::new());
    daemon.stop().await;
}
