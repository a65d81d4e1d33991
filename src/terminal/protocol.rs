#![doc = include_str!("protocol.md")]

use bytes::Bytes;
use linkops_reconcilers::terminal::{Layout, SessionEnd};
use serde::{Deserialize, Serialize};

/// The subprotocol a client offers (and the server selects).
pub const SUBPROTOCOL: &str = "linkops.v1";
/// A client that cannot set headers offers `linkops.token.<JWT>` beside [`SUBPROTOCOL`].
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "linkops.token.";

/// JSON messages from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Keystrokes for a pane (or, in broadcast mode, for every connected pane).
    Input { pane: usize, data: String },
    /// The pane's terminal size changed.
    Resize { pane: usize, cols: u16, rows: u16 },
    /// Open (or reopen) the session of an assigned pane.
    Open {
        pane: usize,
        #[serde(default)]
        cols: Option<u16>,
        #[serde(default)]
        rows: Option<u16>,
    },
    /// Close the pane's session (the pane keeps its machine).
    Close { pane: usize },
    /// Turn broadcast input on or off.
    Broadcast { enabled: bool },
}

/// The state of a pane, as the API and the socket report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaneState {
    /// No machine assigned.
    Empty,
    /// A machine is assigned, no session is open.
    Idle,
    Connecting,
    Connected,
    /// The session ended (`end` says how).
    Closed,
    /// Opening the session failed (`reason` and `message` say why).
    Error,
}

/// Why a pane could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The machine is not in the applied inventory.
    UnknownMachine,
    /// The machine does not hold the client id the inventory gives it.
    Unenrolled,
    Unreachable,
    HostKeyMismatch,
    AuthenticationFailed,
    /// The workspace has no such pane, or no machine in it.
    NoMachine,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaneStatus {
    pub pane: usize,
    pub machine: Option<String>,
    pub state: PaneState,
    /// The terminal session (and recording) id while connected or once closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<SessionEnd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Refusal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PaneStatus {
    pub fn new(pane: usize, machine: Option<String>, state: PaneState) -> PaneStatus {
        PaneStatus {
            pane,
            machine,
            state,
            session: None,
            end: None,
            reason: None,
            message: None,
        }
    }

    pub fn refused(
        pane: usize,
        machine: Option<String>,
        reason: Refusal,
        message: String,
    ) -> PaneStatus {
        PaneStatus {
            reason: Some(reason),
            message: Some(message),
            ..PaneStatus::new(pane, machine, PaneState::Error)
        }
    }
}

/// JSON messages from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on every socket: the workspace and each pane's state.
    Hello {
        workspace: String,
        layout: Layout,
        broadcast: bool,
        panes: Vec<PaneStatus>,
    },
    /// A pane changed state.
    Status(PaneStatus),
    /// The next `bytes` of the pane's output are its recent output, replayed
    /// to redraw the screen (reset the terminal before writing them).
    Replay { pane: usize, bytes: usize },
    /// Broadcast input is now on or off.
    Broadcast { enabled: bool },
    /// A message the server could not act on.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        pane: Option<usize>,
        message: String,
    },
}

/// Why the daemon closed a socket, carried as its close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketEnd {
    /// Another socket took the workspace over.
    TakenOver,
    /// The workspace was deleted.
    WorkspaceDeleted,
    /// Its owner was deleted or no longer has the operator role.
    AccessRevoked,
    /// The daemon is stopping.
    DaemonStopping,
}

impl SocketEnd {
    pub const ALL: [SocketEnd; 4] = [
        SocketEnd::TakenOver,
        SocketEnd::WorkspaceDeleted,
        SocketEnd::AccessRevoked,
        SocketEnd::DaemonStopping,
    ];

    /// The WebSocket close code (4000–4999 are the application's) and reason.
    pub fn close_frame(self) -> (u16, &'static str) {
        match self {
            SocketEnd::TakenOver => (4001, "another connection took this workspace over"),
            SocketEnd::WorkspaceDeleted => (4002, "the workspace was deleted"),
            SocketEnd::AccessRevoked => (
                4003,
                "access revoked: the user was deleted, their password changed, or their grants no longer allow it",
            ),
            SocketEnd::DaemonStopping => (1001, "the daemon is stopping"),
        }
    }
}

/// The close codes of [`SocketEnd`], as the API description lists them: the
/// 4000s are final (reconnecting cannot help), 1001 is a daemon restarting.
pub struct SocketCloseCode;

impl utoipa::PartialSchema for SocketCloseCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let said: Vec<String> = SocketEnd::ALL
            .iter()
            .map(|end| {
                let (code, reason) = end.close_frame();
                format!("{code}: {reason}")
            })
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .enum_values(Some(SocketEnd::ALL.map(|end| end.close_frame().0)))
            .description(Some(format!(
                "Why the daemon closed a workspace socket. {}. The 4000s are final: reconnecting cannot help.",
                said.join("; ")
            )))
            .into()
    }
}

impl utoipa::ToSchema for SocketCloseCode {}

/// What the daemon sends down a socket.
#[derive(Debug, Clone)]
pub enum Frame {
    Output { pane: u8, data: Bytes },
    Message(ServerMessage),
}

impl Frame {
    /// Binary output frames carry the pane index first.
    pub fn output_bytes(pane: u8, data: &[u8]) -> Bytes {
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(pane);
        frame.extend_from_slice(data);
        frame.into()
    }
}

/// A binary input frame: `[pane][bytes…]`.
pub fn parse_binary_input(frame: &[u8]) -> Option<(usize, &[u8])> {
    let (&pane, data) = frame.split_first()?;
    Some((pane.into(), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_and_unknown_fields_are_refused() {
        let input: ClientMessage =
            serde_json::from_str(r#"{"type":"input","pane":2,"data":"ls\r"}"#).unwrap();
        assert_eq!(
            input,
            ClientMessage::Input {
                pane: 2,
                data: "ls\r".into()
            }
        );
        let open: ClientMessage = serde_json::from_str(r#"{"type":"open","pane":0}"#).unwrap();
        assert_eq!(
            open,
            ClientMessage::Open {
                pane: 0,
                cols: None,
                rows: None
            }
        );
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"resize","pane":0,"cols":80}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"close","pane":0,"x":1}"#).is_err()
        );
    }

    #[test]
    fn server_messages_carry_their_type_beside_their_fields() {
        let status = ServerMessage::Status(PaneStatus::refused(
            1,
            Some("web2".into()),
            Refusal::Unenrolled,
            "client id mismatch".into(),
        ));
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            serde_json::json!({
                "type": "status", "pane": 1, "machine": "web2", "state": "error",
                "reason": "unenrolled", "message": "client id mismatch"
            })
        );
    }

    #[test]
    fn binary_frames_put_the_pane_first() {
        assert_eq!(&Frame::output_bytes(3, b"hi")[..], b"\x03hi");
        assert_eq!(parse_binary_input(b"\x01ls"), Some((1, &b"ls"[..])));
        assert_eq!(parse_binary_input(b""), None);
    }
}
