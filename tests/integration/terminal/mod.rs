//! Terminal workspaces against a real fleet, through a real WebSocket client.
//!
//! Here: the client and what the tests share; the tests in `sessions.rs` and `access.rs`.

mod access;
mod sessions;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use linkops::contract::{
    ConnectAnswer, PaneState, PaneStatus, RecordingView, ServerMessage, WorkspaceView,
};
use linkops_reconcilers::terminal::SessionEnd;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{self, ADMIN, FleetSetup, TestDaemon, answer};

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
pub(crate) async fn workspace(
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
    let id = answer::<WorkspaceView>(&created).id;
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

pub(crate) async fn connect_all(
    daemon: &TestDaemon,
    token: &str,
    id: &str,
    size: Value,
) -> Vec<PaneStatus> {
    let (status, connected) = daemon
        .request(
            reqwest::Method::POST,
            &format!("/api/terminal/workspaces/{id}/connect-all"),
            token,
            Some(size),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{connected}");
    answer::<ConnectAnswer>(&connected).panes
}

/// A terminal session's record.
pub async fn recording(daemon: &TestDaemon, token: &str, session: u64) -> RecordingView {
    let path = format!("/api/terminal/recordings/{session}");
    daemon.read(&path, token).await
}

/// How the session shown by `pane` ended.
fn ended(pane: &PaneStatus) -> &SessionEnd {
    pane.end
        .as_ref()
        .unwrap_or_else(|| panic!("pane {} has not ended: {pane:?}", pane.pane))
}

/// A WebSocket client of one workspace, keeping what each pane has shown.
pub(crate) struct Terminal {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Each pane's output as received (bytes: a frame may end mid-character).
    screens: Vec<Vec<u8>>,
    messages: Vec<ServerMessage>,
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
        (terminal.message(|m| matches!(m, ServerMessage::Hello { .. }))).await;
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

    /// Reads until a pane of `pane` (any pane when `None`) says it is `state`; returns what it said.
    async fn status(&mut self, pane: Option<usize>, state: PaneState) -> PaneStatus {
        let said = self
            .message(|m| match m {
                ServerMessage::Status(status) => {
                    status.state == state && pane.is_none_or(|pane| status.pane == pane)
                }
                _ => false,
            })
            .await;
        let ServerMessage::Status(status) = said else {
            unreachable!("matched a status")
        };
        status
    }

    /// Reads until a JSON message matches; returns it.
    pub(crate) async fn message(
        &mut self,
        matches: impl Fn(&ServerMessage) -> bool,
    ) -> ServerMessage {
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
