//! Terminal workspaces against a real fleet, through a real WebSocket client.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{self, ADMIN, FleetSetup, TestDaemon};

/// How long a test waits for a terminal to show something.
const WAIT: Duration = Duration::from_secs(30);

const OPERATOR: (&str, &str) = ("oscar", "pw-oscar-1");
const OTHER_OPERATOR: (&str, &str) = ("olga", "pw-olga-1");

/// A script that keeps an operation (and its event stream) open.
const SCRIPTS: &str =
    "scripts:\n  - id: sleeper\n    name: Sleep\n    body: echo started; sleep 600\n";

fn setup(hosts: usize, wrong_uuid: &[usize]) -> FleetSetup {
    let setup = FleetSetup::new(hosts, wrong_uuid, SCRIPTS);
    support::add_users(
        setup.data.path(),
        &[
            (
                OPERATOR.0,
                linkops_reconcilers::role::Role::Operator,
                OPERATOR.1,
            ),
            (
                OTHER_OPERATOR.0,
                linkops_reconcilers::role::Role::Operator,
                OTHER_OPERATOR.1,
            ),
        ],
    );
    setup
}

/// Creates a workspace with `layout` showing `machines` (one per pane).
async fn workspace(
    daemon: &TestDaemon,
    token: &str,
    layout: &str,
    machines: &[Option<&str>],
) -> String {
    let (status, created) = daemon
        .request(
            reqwest::Method::POST,
            "/api/terminal/workspaces",
            token,
            Some(json!({ "name": "test", "layout": layout })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, assigned) = daemon
        .request(
            reqwest::Method::PUT,
            &format!("/api/terminal/workspaces/{id}/panes"),
            token,
            Some(json!({ "panes": machines })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{assigned}");
    id
}

async fn connect_all(daemon: &TestDaemon, token: &str, id: &str, size: Value) -> Vec<Value> {
    let (status, answer) = daemon
        .request(
            reqwest::Method::POST,
            &format!("/api/terminal/workspaces/{id}/connect-all"),
            token,
            Some(size),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["panes"].as_array().unwrap().clone()
}

/// A terminal session's record.
async fn recording(daemon: &TestDaemon, token: &str, session: u64) -> (StatusCode, Value) {
    let path = format!("/api/terminal/recordings/{session}");
    daemon
        .request(reqwest::Method::GET, &path, token, None)
        .await
}

/// A WebSocket client of one workspace, keeping what each pane has shown.
pub(crate) struct Terminal {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Each pane's output as received (bytes: a frame may end mid-character).
    screens: Vec<Vec<u8>>,
    messages: Vec<Value>,
    /// The close code and reason, once the daemon closed the socket.
    pub(crate) closed: Option<(u16, String)>,
}

fn socket_url(daemon: &TestDaemon, id: &str) -> String {
    socket_url_at(&daemon.url, id)
}

/// The socket of workspace `id` of the daemon at `url`.
fn socket_url_at(url: &str, id: &str) -> String {
    format!(
        "{}/api/terminal/workspaces/{id}/ws",
        url.replace("http://", "ws://")
    )
}

/// Opens the socket with these extra headers; the handshake's HTTP error if refused.
async fn open_socket(
    url: &str,
    headers: &[(&'static str, String)],
) -> Result<Terminal, tungstenite::http::Response<Option<Vec<u8>>>> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(Terminal {
            socket,
            screens: vec![Vec::new(); 4],
            messages: Vec::new(),
            closed: None,
        }),
        Err(tungstenite::Error::Http(response)) => Err(*response),
        Err(other) => panic!("WebSocket handshake failed: {other}"),
    }
}

impl Terminal {
    async fn open(daemon: &TestDaemon, id: &str, token: &str) -> Terminal {
        Terminal::open_at(&daemon.url, id, token).await
    }

    /// The socket of workspace `id` of the daemon at `url`, once it said hello.
    pub(crate) async fn open_at(url: &str, id: &str, token: &str) -> Terminal {
        let url = format!("{}?access_token={token}", socket_url_at(url, id));
        let mut terminal = open_socket(&url, &[]).await.expect("socket refused");
        terminal.message(|m| m["type"] == "hello").await;
        terminal
    }

    pub(crate) async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    async fn type_in(&mut self, pane: usize, keys: &str) {
        self.send(json!({ "type": "input", "pane": pane, "data": keys }))
            .await;
    }

    /// Reads one frame into the screens or the messages; false once the socket ended.
    pub(crate) async fn read(&mut self) -> bool {
        let frame = tokio::time::timeout(WAIT, self.socket.next())
            .await
            .expect("the terminal showed nothing new in time");
        match frame {
            Some(Ok(Message::Binary(frame))) => {
                let pane = usize::from(frame[0]);
                self.screens[pane].extend_from_slice(&frame[1..]);
            }
            Some(Ok(Message::Text(text))) => {
                self.messages.push(serde_json::from_str(&text).unwrap())
            }
            Some(Ok(Message::Close(frame))) => {
                self.closed = frame.map(|f| (f.code.into(), f.reason.to_string()));
                return false;
            }
            None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
        true
    }

    /// Reads until `pane` has shown `needle` after byte `from` of its screen; returns that part.
    async fn shown_after(&mut self, pane: usize, from: usize, needle: &str) -> String {
        let needle = needle.as_bytes();
        // Only the new part is searched each time: a flood of output stays linear.
        let mut searched = from;
        loop {
            let screen = &self.screens[pane];
            if screen[searched..]
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return self.screen(pane, from);
            }
            searched = screen.len().saturating_sub(needle.len() - 1).max(from);
            assert!(
                self.read().await,
                "socket closed before pane {pane} showed {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    /// What `pane` has shown since byte `from`, as text.
    fn screen(&self, pane: usize, from: usize) -> String {
        String::from_utf8_lossy(&self.screens[pane][from..]).into_owned()
    }

    /// Types a command and waits for a line it prints.
    pub(crate) async fn run(&mut self, pane: usize, command: &str, expect: &str) -> String {
        let from = self.screens[pane].len();
        self.type_in(pane, &format!("{command}\r")).await;
        self.shown_after(pane, from, expect).await
    }

    /// Has the shell print its pid as `<prefix><pid>-pid` and reads it (not the typed `$$`).
    pub(crate) async fn shell_pid(&mut self, pane: usize, prefix: &str) -> u32 {
        let from = self.screens[pane].len();
        self.type_in(pane, &format!("echo {prefix}$$-pid\r")).await;
        loop {
            let shown = &self.screen(pane, from);
            let printed = shown.match_indices(prefix).find_map(|(at, _)| {
                let rest = &shown[at + prefix.len()..];
                rest.split("-pid").next()?.parse().ok()
            });
            if let Some(pid) = printed {
                return pid;
            }
            assert!(
                self.read().await,
                "socket closed before pane {pane} printed its pid"
            );
        }
    }

    /// Reads until a JSON message matches; returns it.
    pub(crate) async fn message(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        loop {
            if let Some(found) = self.messages.iter().position(&matches) {
                return self.messages.remove(found);
            }
            assert!(
                self.read().await,
                "socket closed; messages: {:?}",
                self.messages
            );
        }
    }
}

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
        assert_eq!(pane["state"], "connected", "{pane}");
        assert_eq!(pane["machine"], machines[index].unwrap());
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
    let ack = terminal.message(|m| m["type"] == "broadcast").await;
    assert_eq!(ack["enabled"], true);
    let marks: Vec<usize> = terminal.screens.iter().map(Vec::len).collect();
    terminal.type_in(2, "echo bc-$((6*7))\r").await;
    for (pane, from) in marks.iter().enumerate() {
        terminal.shown_after(pane, *from, "bc-42").await;
    }
    terminal
        .send(json!({ "type": "broadcast", "enabled": false }))
        .await;
    terminal
        .message(|m| m["type"] == "broadcast" && m["enabled"] == false)
        .await;

    // The shell in pane 0 exits: its status says so, with the exit code.
    terminal.type_in(0, "exit 3\r").await;
    let closed = terminal
        .message(|m| m["type"] == "status" && m["pane"] == 0 && m["state"] == "closed")
        .await;
    assert_eq!(closed["end"]["reason"], "exited", "{closed}");
    assert_eq!(closed["end"]["exit_code"], 3, "{closed}");
    let session = closed["session"].as_u64().unwrap();

    // Its recording replays what the pane showed.
    let (status, recording) = recording(&daemon, &token, session).await;
    assert_eq!(status, StatusCode::OK, "{recording}");
    assert_eq!(recording["machine_id"], "host1");
    assert_eq!(recording["user"], OPERATOR.0);
    assert_eq!(recording["end"]["exit_code"], 3);
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
        panes[0]["state"], "connected",
        "pane 0 reopens: {:?}",
        panes[0]
    );
    assert_eq!(panes[3]["state"], "error");
    assert_eq!(panes[3]["reason"], "unenrolled", "{}", panes[3]);
    assert!(
        panes[3]["message"]
            .as_str()
            .unwrap()
            .contains("not enrolled"),
        "{}",
        panes[3]
    );
    // The socket hears it too.
    terminal
        .message(|m| m["type"] == "status" && m["pane"] == 3 && m["reason"] == "unenrolled")
        .await;
    // A resize of the pane without a session is nothing to complain of (the
    // console fits every pane); input to it is, naming the pane as the console does.
    terminal
        .send(json!({ "type": "resize", "pane": 3, "cols": 90, "rows": 20 }))
        .await;
    terminal
        .send(json!({ "type": "input", "pane": 3, "data": "x" }))
        .await;
    let error = terminal.message(|m| m["type"] == "error").await;
    assert_eq!(
        error["message"],
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
    assert_eq!(panes[0]["state"], "connected", "{:?}", panes[0]);
    let pid = terminal.shell_pid(0, "shell-").await;

    // Gone without a close, like a laptop closing its lid.
    drop(terminal);
    let mut terminal = Terminal::open(&daemon, &id, &token).await;
    let replay = terminal.message(|m| m["type"] == "replay").await;
    assert_eq!(replay["pane"], 0);
    let length = replay["bytes"].as_u64().unwrap() as usize;
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
    let session = connect_all(&daemon, &token, &id, json!({})).await[0]["session"]
        .as_u64()
        .unwrap();
    let stopping = tokio::spawn(daemon.stop());
    while terminal.read().await {}
    assert_eq!(terminal.closed.map(|(code, _)| code), Some(1001));
    stopping.await.unwrap();
    let store = support::open_store(&setup.config());
    let recorded = support::as_the_cli(|| store.terminal_session(session).unwrap().unwrap());
    assert_eq!(
        recorded.end,
        Some(linkops_reconcilers::terminal::SessionEnd::Interrupted)
    );
}

#[tokio::test]
async fn a_demoted_or_deleted_user_loses_their_open_terminals() {
    let setup = setup(1, &[]);
    let daemon = setup.start().await;
    let admin = daemon.token(ADMIN.0, ADMIN.1).await;
    let token = daemon.token(OPERATOR.0, OPERATOR.1).await;
    let id = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    let mut terminal = Terminal::open(&daemon, &id, &token).await;
    let pane = connect_all(&daemon, &token, &id, json!({})).await.remove(0);
    assert_eq!(pane["state"], "connected", "{pane}");
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
    assert_eq!(user["role"], "viewer");
    while terminal.read().await {}
    let (code, reason) = terminal.closed.clone().expect("a close frame");
    assert_eq!(code, 4003, "{reason}");
    let session = pane["session"].as_u64().unwrap();
    let recorded = support::eventually("the revoked session to be recorded", || async {
        let (_, recording) = recording(&daemon, &admin, session).await;
        (!recording["end"].is_null()).then_some(recording)
    })
    .await;
    assert_eq!(recorded["end"]["reason"], "revoked", "{recorded}");
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
    assert_eq!(recording(&daemon, &admin, session).await.0, StatusCode::OK);
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
        .token("root2", created["password"].as_str().unwrap())
        .await;

    // A second admin attached to olga's workspace is deleted: their socket ends, olga's shell lives.
    let olgas = workspace(&daemon, &olga, "single", &[Some("host1")]).await;
    let pane = connect_all(&daemon, &olga, &olgas, json!({}))
        .await
        .remove(0);
    assert_eq!(pane["state"], "connected", "{pane}");
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
    assert_eq!(pane["state"], "connected", "{pane}");
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
    let operation = run["id"].as_u64().unwrap();
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
    let message = refused["error"]["message"].as_str().unwrap();
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
    assert_eq!(pane["state"], "connected", "{pane}");
    terminal.run(0, "echo up-$((6*7))", "up-42").await;
    let partition = support::Partition::cut(setup.fleet.hosts()[0].address());
    let closed = terminal
        .message(|m| m["type"] == "status" && m["pane"] == 0 && m["state"] == "closed")
        .await;
    assert_eq!(closed["end"]["reason"], "lost", "{closed}");
    drop(partition);
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
    let closed = terminal
        .message(|m| m["type"] == "status" && m["state"] == "closed")
        .await;
    assert_eq!(closed["end"]["reason"], "idle", "{closed}");

    // Left without a socket: closed as abandoned once the grace period is over.
    let left = workspace(&daemon, &token, "single", &[Some("host1")]).await;
    connect_all(&daemon, &token, &left, json!({})).await;
    let path = format!("/api/terminal/workspaces/{left}");
    let pane = support::eventually("the abandoned session to close", || async {
        let (_, view) = daemon
            .request(reqwest::Method::GET, &path, &token, None)
            .await;
        let pane = view["panes"][0].clone();
        (pane["state"] == "closed").then_some(pane)
    })
    .await;
    assert_eq!(pane["end"]["reason"], "abandoned", "{pane}");

    let session = pane["session"].as_u64().unwrap();
    let (_, recording) = recording(&daemon, &token, session).await;
    assert_eq!(recording["end"]["reason"], "abandoned");
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
