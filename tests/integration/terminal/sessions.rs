//! Sessions in panes: a grid of machines, a socket that reconnects to its shell,
//! panes that end (lost, idle, abandoned) and record why, a reader that stalls.

use linkops::contract::Refusal;

use super::*;

#[tokio::test]
async fn a_grid_of_four_panes_shows_each_machine_in_its_own_pane() {
    let setup = setup(5, &[4]);
    let daemon = setup.start().await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let machines = [Some("host1"), Some("host2"), Some("host3"), Some("host4")];
    let id = workspace(&daemon, &token, "grid2x2", &machines).await;
    let mut terminal = Terminal::open(&daemon, &id, &token).await;

    let panes = connect_all(&daemon, &token, &id, json!({ "cols": 100, "rows": 30 })).await;
    assert_eq!(panes.len(), 4);
    for (index, pane) in panes.iter().enumerate() {
        assert_eq!(pane.state, PaneState::Connected, "{pane:?}");
        assert_eq!(pane.machine.as_deref(), machines[index]);
    }

    // Each pane reads its own machine's client id.
    for pane in 0..4 {
        let uuid = setup.fleet.host(pane).uuid();
        let shown = terminal
            .run(
                pane,
                "cat /etc/linkops/client_id",
                &format!("LINKOPS-{uuid}"),
            )
            .await;
        for other in (0..5).filter(|o| *o != pane) {
            assert!(!shown.contains(setup.fleet.host(other).uuid()), "{shown}");
        }
    }

    // A resize reaches the remote terminal.
    terminal
        .send(json!({ "type": "resize", "pane": 1, "cols": 120, "rows": 40 }))
        .await;
    terminal.run(1, "stty size", "40 120").await;

    // Broadcast: one keystroke stream, every pane.
    terminal
        .send(json!({ "type": "broadcast", "enabled": true }))
        .await;
    let ack = (terminal.message(|m| matches!(m, ServerMessage::Broadcast { .. }))).await;
    assert_eq!(ack, ServerMessage::Broadcast { enabled: true });
    let marks: Vec<usize> = terminal.screens.iter().map(Vec::len).collect();
    terminal.type_in(2, "echo bc-$((6*7))\r").await;
    for (pane, from) in marks.iter().enumerate() {
        terminal.shown_after(pane, *from, "bc-42").await;
    }
    terminal
        .send(json!({ "type": "broadcast", "enabled": false }))
        .await;
    terminal
        .message(|m| *m == ServerMessage::Broadcast { enabled: false })
        .await;

    // The shell in pane 0 exits: its status says so, with the exit code.
    terminal.type_in(0, "exit 3\r").await;
    let closed = terminal.status(Some(0), PaneState::Closed).await;
    let exited = SessionEnd::Exited {
        exit_code: Some(3),
        signal: None,
    };
    assert_eq!(ended(&closed), &exited, "{closed:?}");
    let session = closed.session.unwrap();

    // Its recording replays what the pane showed.
    let recording = recording(&daemon, &token, session).await.session;
    assert_eq!(recording.machine_id, "host1");
    assert_eq!(recording.user, OPERATOR.0);
    assert_eq!(recording.end, Some(exited));
    let cast = daemon
        .client()
        .get(format!(
            "{}/api/terminal/recordings/{session}/cast",
            daemon.url
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(cast.status(), StatusCode::OK);
    assert_eq!(cast.headers()["content-type"], "application/x-asciicast");
    let cast = cast.text().await.unwrap();
    let mut lines = cast
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap());
    let header = lines.next().unwrap();
    assert_eq!(
        (header["version"].clone(), header["width"].clone()),
        (json!(2), json!(100))
    );
    let mut replayed = String::new();
    let mut last_time = 0.0;
    for event in lines {
        let time = event[0].as_f64().unwrap();
        assert!(time >= last_time, "events out of order: {event}");
        last_time = time;
        if event[1] == "o" {
            replayed.push_str(event[2].as_str().unwrap());
        }
        // Keystrokes are not recorded by default.
        assert_ne!(event[1], "i");
    }
    assert!(
        replayed.contains(&format!("LINKOPS-{}", setup.fleet.host(0).uuid())),
        "{replayed}"
    );
    assert!(replayed.contains("bc-42"), "{replayed}");
    assert_eq!(replayed, terminal.screen(0, 0));

    // An unenrolled machine is refused, saying why.
    let (status, _) = daemon
        .request(
            reqwest::Method::PUT,
            &format!("/api/terminal/workspaces/{id}/panes"),
            &token,
            Some(json!({ "panes": ["host1", "host2", "host3", "host5"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let panes = connect_all(&daemon, &token, &id, json!({})).await;
    assert_eq!(
        panes[0].state,
        PaneState::Connected,
        "pane 0 reopens: {:?}",
        panes[0]
    );
    assert_eq!(panes[3].state, PaneState::Error);
    assert_eq!(panes[3].reason, Some(Refusal::Unenrolled), "{:?}", panes[3]);
    let message = panes[3].message.as_deref().unwrap_or_default();
    assert!(message.contains("not enrolled"), "{:?}", panes[3]);
    // The socket hears it too.
    let heard = terminal.status(Some(3), PaneState::Error).await;
    assert_eq!(heard.reason, Some(Refusal::Unenrolled), "{heard:?}");
    // A resize of the pane without a session is nothing to complain of (the
    // console fits every pane); input to it is, naming the pane as the console does.
    terminal
        .send(json!({ "type": "resize", "pane": 3, "cols": 90, "rows": 20 }))
        .await;
    terminal
        .send(json!({ "type": "input", "pane": 3, "data": "x" }))
        .await;
    let error = (terminal.message(|m| matches!(m, ServerMessage::Error { .. }))).await;
    let ServerMessage::Error { message, .. } = error else {
        unreachable!("matched an error")
    };
    assert_eq!(
        message,
        "Pane 4 (index 3) has no open session: the input was not sent"
    );

    // Deleting the workspace closes its socket, saying why.
    let (status, _) = daemon
        .request(
            reqwest::Method::DELETE,
            &format!("/api/terminal/workspaces/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    while terminal.read().await {}
    assert_eq!(terminal.closed.map(|(code, _)| code), Some(4002));
    daemon.stop().await;
}

#[tokio::test]
async fn a_dropped_socket_reconnects_to_the_same_shell_with_its_output_replayed() {
    let setup = setup(1, &[]);
    let daemon = setup.start().await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let id = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let mut terminal = Terminal::open(&daemon, &id, &token).await;
    let panes = connect_all(&daemon, &token, &id, json!({})).await;
    assert_eq!(panes[0].state, PaneState::Connected, "{:?}", panes[0]);
    let pid = terminal.shell_pid(0, "shell-").await;

    // Gone without a close, like a laptop closing its lid.
    drop(terminal);
    let mut terminal = Terminal::open(&daemon, &id, &token).await;
    let replay = (terminal.message(|m| matches!(m, ServerMessage::Replay { .. }))).await;
    let ServerMessage::Replay {
        pane,
        bytes: length,
    } = replay
    else {
        unreachable!("matched a replay")
    };
    assert_eq!(pane, 0);
    while terminal.screens[0].len() < length {
        assert!(terminal.read().await);
    }
    let replayed = terminal.screen(0, 0);
    assert!(replayed.contains(&format!("shell-{pid}-pid")), "{replayed}");

    // The same shell goes on.
    assert_eq!(terminal.shell_pid(0, "again-").await, pid);

    // A second socket (another browser window) takes over; the first is told so.
    let mut taken_over =
        std::mem::replace(&mut terminal, Terminal::open(&daemon, &id, &token).await);
    while taken_over.read().await {}
    assert_eq!(taken_over.closed.map(|(code, _)| code), Some(4001));

    // A stopping daemon tells the socket and records the session as interrupted.
    let session = connect_all(&daemon, &token, &id, json!({})).await[0]
        .session
        .unwrap();
    let stopping = tokio::spawn(daemon.stop());
    while terminal.read().await {}
    assert_eq!(terminal.closed.map(|(code, _)| code), Some(1001));
    stopping.await.unwrap();
    let store = support::open_store(&setup.config());
    let recorded = support::as_the_cli(|| store.terminal_session(session).unwrap().unwrap());
    assert_eq!(recorded.end, Some(SessionEnd::Interrupted));
}

/// Defect 16: a pane whose machine silently disappears ends (`lost`) once the
/// keepalives go unanswered, instead of hanging on the dead connection.
#[tokio::test]
async fn a_pane_whose_machine_goes_silent_ends_as_lost() {
    let setup = setup(1, &[]);
    let mut config = setup.config();
    config.ssh.keepalive_interval = Duration::from_secs(1);
    config.ssh.keepalive_max = 2;
    let daemon = setup.start_with(config).await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let id = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let mut terminal = Terminal::open(&daemon, &id, &token).await;
    let pane = connect_all(&daemon, &token, &id, json!({})).await.remove(0);
    assert_eq!(pane.state, PaneState::Connected, "{pane:?}");
    terminal.run(0, "echo up-$((6*7))", "up-42").await;
    let partition = testbed::Partition::cut(setup.fleet.hosts()[0].address());
    let closed = terminal.status(Some(0), PaneState::Closed).await;
    let lost = matches!(ended(&closed), SessionEnd::Lost { .. });
    assert!(lost, "{closed:?}");
    drop(partition);
    daemon.stop().await;
}

#[tokio::test]
async fn sessions_close_when_idle_or_abandoned_and_record_why() {
    let setup = setup(1, &[]);
    let mut config = setup.config();
    config.terminal.grace = Duration::from_millis(500);
    config.terminal.idle_timeout = Duration::from_secs(2);
    let daemon = setup.start_with(config).await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;

    // Attached but untouched: closed as idle, and the socket is told.
    let watched = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let mut terminal = Terminal::open(&daemon, &watched, &token).await;
    connect_all(&daemon, &token, &watched, json!({})).await;
    let closed = terminal.status(None, PaneState::Closed).await;
    assert_eq!(ended(&closed), &SessionEnd::Idle, "{closed:?}");

    // Left without a socket: closed as abandoned once the grace period is over.
    let left = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    connect_all(&daemon, &token, &left, json!({})).await;
    let path = format!("/api/terminal/workspaces/{left}");
    let pane = support::eventually("the abandoned session to close", || async {
        let view: WorkspaceView = daemon.read(&path, &token).await;
        let pane = view.panes[0].clone();
        (pane.state == PaneState::Closed).then_some(pane)
    })
    .await;
    assert_eq!(ended(&pane), &SessionEnd::Abandoned, "{pane:?}");

    let session = pane.session.unwrap();
    let recording = recording(&daemon, &token, session).await.session;
    assert_eq!(recording.end, Some(SessionEnd::Abandoned));
    daemon.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_stalls_the_remote_program_instead_of_filling_memory() {
    // 32 MiB of output, written 64 KiB at a time, counting as it goes.
    const CHUNKS: u64 = 512;
    let setup = setup(1, &[]);
    let daemon = setup.start().await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let id = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let mut terminal = Terminal::open(&daemon, &id, &token).await;
    connect_all(&daemon, &token, &id, json!({})).await;
    let progress = setup.marks.join("progress");
    let command = format!(
        "i=0; while [ $i -lt {CHUNKS} ]; do head -c 65536 /dev/zero | tr '\\0' a; i=$((i+1)); echo $i > {}; done; echo; echo flood-$((1+1))-done\r",
        progress.display()
    );
    terminal.type_in(0, &command).await;

    // The client reads nothing now. There is no event for "the writer is
    // blocked": watch the remote counter until it stops moving.
    let mut last = 0;
    let stalled = support::eventually("the remote writer to stall", || {
        let reading = std::fs::read_to_string(&progress)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let stalled = reading > 0 && reading == last;
        last = reading;
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stalled.then_some(reading)
        }
    })
    .await;
    // Socket, SSH and TCP buffers hold a few MiB; the rest waits on the machine.
    eprintln!("the writer stalled after {stalled} of {CHUNKS} chunks of 64 KiB");
    assert!(
        stalled < CHUNKS / 2,
        "{stalled} of {CHUNKS} chunks were written while nobody read"
    );

    // Reading again lets the program finish, and nothing was dropped.
    terminal.shown_after(0, 0, "flood-2-done").await;
    let received = terminal.screens[0].iter().filter(|b| **b == b'a').count() as u64;
    assert!(
        received >= CHUNKS * 65536,
        "{received} bytes of output arrived"
    );
    daemon.stop().await;
}
