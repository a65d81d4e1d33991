//! `/api/terminal`: workspaces of panes, their WebSocket, and session recordings.
//!
//! The REST calls and the socket protocol are documented in `src/terminal/protocol.md`.

use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};

use super::extract::{Json, Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use linkops_reconcilers::terminal::{TerminalSession, Workspace};

use super::auth::Authenticated;
use super::{ApiError, AppState, at};
use crate::auth::{Auth, Session};
use crate::contract::{
    ConnectAnswer, ConnectBody, CreateBody, PanesBody, RecordingView, RecordingsQuery,
    WorkspaceView,
};
use crate::metrics::Open;
use crate::store::{Actor, Store, User};
use crate::terminal::protocol::{
    self, ClientMessage, Frame, ServerMessage, SocketEnd, parse_binary_input,
};
use crate::terminal::{AssignFailed, DEFAULT_SIZE, Terminals};
use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::grant::{Held, Need, Place};
use std::sync::Arc;
use tokio::sync::watch;

fn view(terminals: &Terminals, workspace: &Workspace) -> WorkspaceView {
    WorkspaceView {
        id: workspace.id.clone(),
        name: workspace.name.clone(),
        owner: workspace.owner.clone(),
        layout: workspace.layout,
        panes: terminals.statuses(workspace),
        broadcast: terminals.broadcast(&workspace.id),
        created_at: at(workspace.created_at_ms),
        updated_at: at(workspace.updated_at_ms),
    }
}

/// The workspace, if the caller may use it: their own, or any for an admin.
async fn usable_workspace(
    state: &AppState,
    caller: &Authenticated,
    id: &str,
) -> Result<Workspace, ApiError> {
    let admin = caller.is_admin(state);
    let asked = id.to_owned();
    state
        .store
        .run(move |store| store.workspace(&asked))
        .await?
        .filter(|workspace| workspace.usable_by(&caller.user.name, admin))
        // Someone else's workspace is as absent as a missing one.
        .ok_or_else(|| ApiError::NotFound(format!("no terminal workspace {id}")))
}

/// Refuses with 403 unless the caller may open a terminal on every machine
/// of `machines`.
fn may_open(
    state: &AppState,
    caller: &Authenticated,
    machines: &[Option<String>],
) -> Result<(), ApiError> {
    let reach = caller.reach(state);
    for id in machines.iter().flatten() {
        caller.may(state, Need::Terminal(reach.place(id)))?;
    }
    Ok(())
}

/// Whether the handlers would let `caller` use workspace `id` through this
/// request (role, ownership, and for the `socket` a browser's origin): only
/// then may a replica take the workspace for it.
pub(super) async fn admits(
    state: &AppState,
    caller: &Authenticated,
    id: &str,
    socket: Option<&HeaderMap>,
) -> Result<bool, ApiError> {
    if caller.may(state, Need::Workspaces).is_err() {
        return Ok(false);
    }
    let origin = |headers| check_origin(headers, &state.config.terminal.allowed_origins);
    if socket.is_some_and(|headers| origin(headers).is_err()) {
        return Ok(false);
    }
    match usable_workspace(state, caller, id).await {
        Ok(_) => Ok(true),
        Err(ApiError::NotFound(_)) => Ok(false),
        Err(error) => Err(error),
    }
}

/// `POST /api/terminal/workspaces`
#[utoipa::path(post, path = "/api/terminal/workspaces", tag = "terminals", request_body = CreateBody, responses((status = 201, description = "A workspace of 1 to 4 panes (operator)", body = WorkspaceView)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<CreateBody>,
) -> Result<(StatusCode, Json<WorkspaceView>), ApiError> {
    let user = caller.may(&state, Need::Workspaces)?;
    let workspace = (state.terminals)
        .create(&user.name, body.layout, body.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(view(&state.terminals, &workspace)),
    ))
}

/// `GET /api/terminal/workspaces`: the caller's own (every one, for admins).
#[utoipa::path(get, path = "/api/terminal/workspaces", tag = "terminals", responses((status = 200, description = "Your workspaces (admins: all)", body = Vec<WorkspaceView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Vec<WorkspaceView>>, ApiError> {
    let user = caller.may(&state, Need::Workspaces)?;
    let admin = caller.is_admin(&state);
    let workspaces = state.store.run(|store| store.workspaces()).await?;
    let mut elsewhere = match headers.contains_key(super::forward::FORWARDED_BY) {
        // Asked by a replica for what this one holds.
        true => Default::default(),
        false => {
            let token = super::auth::presented_token(&headers, &uri).unwrap_or_default();
            super::forward::views_held_elsewhere(&state, &headers, &token).await?
        }
    };
    Ok(Json(
        workspaces
            .iter()
            .filter(|w| w.usable_by(&user.name, admin))
            .map(|w| {
                elsewhere
                    .remove(&w.id)
                    .unwrap_or_else(|| view(&state.terminals, w))
            })
            .collect(),
    ))
}

/// `GET /api/terminal/workspaces/{id}`
#[utoipa::path(get, path = "/api/terminal/workspaces/{id}", tag = "terminals", params(("id" = String, Path, description = "Workspace id")), responses((status = 200, description = "A workspace and each pane's state", body = WorkspaceView)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    caller.may(&state, Need::Workspaces)?;
    let workspace = usable_workspace(&state, &caller, &id).await?;
    Ok(Json(view(&state.terminals, &workspace)))
}

/// `DELETE /api/terminal/workspaces/{id}`: closes its sessions; recordings stay.
#[utoipa::path(delete, path = "/api/terminal/workspaces/{id}", tag = "terminals", params(("id" = String, Path, description = "Workspace id")), responses((status = 204, description = "Deleted; its sessions closed, recordings kept")))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.may(&state, Need::Workspaces)?;
    usable_workspace(&state, &caller, &id).await?;
    state.terminals.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/terminal/workspaces/{id}/panes`: assigns machines to panes
/// (and optionally changes the layout); panes that lose their machine close.
#[utoipa::path(put, path = "/api/terminal/workspaces/{id}/panes", tag = "terminals", params(("id" = String, Path, description = "Workspace id")), request_body = PanesBody, responses((status = 200, description = "Assigned; panes that lost their machine closed", body = WorkspaceView), (status = 422, description = "The pane list does not fit the layout", body = crate::contract::ErrorBody)))]
pub async fn set_panes(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    Json(body): Json<PanesBody>,
) -> Result<Json<WorkspaceView>, ApiError> {
    caller.may(&state, Need::Workspaces)?;
    let workspace = usable_workspace(&state, &caller, &id).await?;
    may_open(&state, &caller, body.panes.as_deref().unwrap_or_default())?;
    let updated = (state.terminals)
        .assign(&workspace, body.layout, body.panes)
        .await
        .map_err(|error| match error {
            AssignFailed::Panes(error) => ApiError::Unprocessable {
                field: "panes".into(),
                message: error.to_string(),
            },
            AssignFailed::Store(error) => error.into(),
        })?;
    Ok(Json(view(&state.terminals, &updated)))
}

/// `POST /api/terminal/workspaces/{id}/connect-all`: a session for every
/// assigned pane; per pane, connected or why not.
#[utoipa::path(post, path = "/api/terminal/workspaces/{id}/connect-all", tag = "terminals", params(("id" = String, Path, description = "Workspace id")), request_body(content = Option<ConnectBody>), responses((status = 200, description = "Per pane: connected, or error with reason (unenrolled, unreachable, host_key_mismatch, ...)", body = ConnectAnswer)))]
pub async fn connect_all(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ConnectAnswer>, ApiError> {
    let user = caller.may(&state, Need::Workspaces)?;
    let workspace = usable_workspace(&state, &caller, &id).await?;
    may_open(&state, &caller, &workspace.panes)?;
    // The body is optional: no body means the default terminal size.
    let body: ConnectBody = if body.is_empty() {
        ConnectBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| ApiError::Unprocessable {
            field: "body".into(),
            message: error.to_string(),
        })?
    };
    let size = terminal_size(body.cols, body.rows)?;
    let panes = state
        .terminals
        .connect_all(&workspace, &user.name, size)
        .await;
    Ok(Json(ConnectAnswer {
        workspace: workspace.id,
        panes,
    }))
}

fn terminal_size(cols: Option<u16>, rows: Option<u16>) -> Result<(u16, u16), ApiError> {
    let size = (
        cols.unwrap_or(DEFAULT_SIZE.0),
        rows.unwrap_or(DEFAULT_SIZE.1),
    );
    if size.0 == 0 || size.1 == 0 {
        return Err(ApiError::Unprocessable {
            field: "cols".into(),
            message: format!("terminal size {}x{} is empty", size.0, size.1),
        });
    }
    Ok(size)
}

/// `GET /api/terminal/workspaces/{id}/ws`: the workspace's WebSocket.
///
/// Browsers cannot set headers on a WebSocket: the token may come as
/// `?access_token=` or as a `linkops.token.<JWT>` subprotocol. The `Origin`
/// must be the daemon's own or one of `[terminal] allowed_origins`.
#[utoipa::path(get, path = "/api/terminal/workspaces/{id}/ws", tag = "terminals", params(("id" = String, Path, description = "Workspace id")), responses((status = 101, description = "WebSocket, subprotocol linkops.v1: binary [pane][bytes] frames both ways, JSON control messages (input, resize, open, close, broadcast / hello, status, replay, broadcast, error). The full protocol: src/terminal/protocol.md. Token as ?access_token= or subprotocol linkops.token.<JWT>"), (status = 403, description = "A viewer, or a foreign Origin", body = crate::contract::ErrorBody)))]
pub async fn socket(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    check_origin(&headers, &state.config.terminal.allowed_origins)?;
    caller.may(&state, Need::Workspaces)?;
    let workspace = usable_workspace(&state, &caller, &id).await?;
    may_open(&state, &caller, &workspace.panes)?;
    // The socket ends when the holder may no longer keep terminals, or open
    // one on a machine its panes showed when it opened.
    let machines = workspace.panes.clone();
    let desired = state.git.desired();
    let kept = move |held: &Held| {
        let desired = desired.borrow().clone();
        let place = |id| Place::find(desired.as_deref(), id);
        held.permits(Need::Workspaces).is_ok()
            && (machines.iter().flatten()).all(|id| held.permits(Need::Terminal(place(id))).is_ok())
    };
    let revoked = caller.lost(&state, kept);
    let holder = Holder {
        user: caller.user,
        session: caller.session,
        auth: state.auth.clone(),
        desired: state.git.desired(),
    };
    let (terminals, store) = (state.terminals.clone(), state.store.clone());
    let open = Open::new(&state.metrics.websocket_clients);
    Ok(upgrade
        .protocols([protocol::SUBPROTOCOL])
        .on_upgrade(move |socket| async move {
            let _open = open;
            serve_socket(socket, terminals, store, workspace, holder, revoked).await;
        })
        .into_response())
}

/// Refuses a browser page from a foreign origin (cross-site WebSocket hijacking).
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    // Clients that are not browsers send no Origin; their token is their proof.
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let own = [format!("http://{host}"), format!("https://{host}")];
    if own.iter().any(|o| o == origin) || allowed.iter().any(|a| a.trim_end_matches('/') == origin)
    {
        Ok(())
    } else {
        Err(ApiError::ForbiddenOrigin(origin.to_owned()))
    }
}

/// Who holds a socket: the user as authenticated, and their session, whose
/// grants are checked before every `open`.
struct Holder {
    user: User,
    session: Session,
    auth: Auth,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
}

impl Holder {
    /// Whether the holder may open a terminal on `machine` now; else why not.
    async fn may_open(&self, machine: &str) -> Result<(), String> {
        let revoked = "access revoked: the user was deleted, disabled or their password changed, or the API token revoked";
        let signed = match self.auth.current(&self.session).await {
            Ok(Some(signed)) => signed,
            _ => return Err(revoked.into()),
        };
        let desired = self.desired.borrow().clone();
        let held = signed.held(desired.as_deref());
        let place = Place::find(desired.as_deref(), machine);
        (held.permits(Need::Terminal(place))).map_err(|refusal| refusal.to_string())
    }
}

/// Runs one socket: frames from the panes out, client messages in, until
/// either side closes, another socket takes over, the holder's access is
/// `revoked` (deleted, demoted, password changed, `access.yaml` changed:
/// then the owner's sessions end too), or the daemon stops.
async fn serve_socket(
    socket: WebSocket,
    terminals: Terminals,
    store: Store,
    workspace: Workspace,
    holder: Holder,
    revoked: impl Future<Output = ()>,
) {
    let attached = terminals.attach(&workspace).await;
    let (mut outgoing, mut incoming) = socket.split();
    let mut frames = attached.frames;
    let client = Client {
        terminals: &terminals,
        store: &store,
        workspace: &workspace,
        holder: &holder,
        sink: &attached.sink,
    };
    let send = async {
        while let Some(frame) = frames.recv().await {
            let message = match frame {
                Frame::Output { pane, data } => Message::Binary(Frame::output_bytes(pane, &data)),
                Frame::Message(message) => Message::Text(
                    serde_json::to_string(&message)
                        .expect("server messages serialise")
                        .into(),
                ),
            };
            if outgoing.send(message).await.is_err() {
                return;
            }
        }
    };
    let receive = async {
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Text(text) => client.message(text.as_str()).await,
                Message::Binary(frame) => match parse_binary_input(&frame) {
                    Some((pane, data)) => {
                        client.input(pane, Bytes::copy_from_slice(data)).await;
                    }
                    None => client.error(None, "an empty binary frame".into()).await,
                },
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };
    let close = tokio::select! {
        _ = send => None,
        _ = receive => None,
        // A dropped sender (no reason given) is no reason to close.
        Ok(end) = attached.ended => Some(end),
        () = revoked => {
            // The owner's sessions end with their access; an admin watching
            // someone else's workspace only leaves it.
            if workspace.owner == holder.user.name {
                terminals.end_workspaces(std::slice::from_ref(&workspace.id)).await;
            }
            Some(SocketEnd::AccessRevoked)
        }
        _ = terminals.shutdown().cancelled() => Some(SocketEnd::DaemonStopping),
    };
    terminals.detach(&workspace.id, &attached.sink).await;
    if let Some((code, reason)) = close.map(SocketEnd::close_frame) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        outgoing.send(Message::Close(Some(frame))).await.ok();
    }
}

/// What a client's messages act on.
struct Client<'a> {
    terminals: &'a Terminals,
    store: &'a Store,
    workspace: &'a Workspace,
    holder: &'a Holder,
    sink: &'a tokio::sync::mpsc::Sender<Frame>,
}

impl Client<'_> {
    async fn message(&self, text: &str) {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(error) => {
                return self
                    .error(None, format!("unreadable message: {error}"))
                    .await;
            }
        };
        let id = &self.workspace.id;
        match message {
            ClientMessage::Input { pane, data } => self.input(pane, data.into()).await,
            ClientMessage::Resize { pane, cols, rows } => {
                if let Err(error) = self.terminals.resize(id, pane, cols, rows).await {
                    self.error(Some(pane), error.to_string()).await;
                }
            }
            ClientMessage::Open { pane, cols, rows } => {
                let size = (
                    cols.unwrap_or(DEFAULT_SIZE.0).max(1),
                    rows.unwrap_or(DEFAULT_SIZE.1).max(1),
                );
                // Connecting takes a while: the status arrives on this socket when done.
                let (terminals, user) = (self.terminals.clone(), self.holder.user.name.clone());
                // The panes may have been reassigned since this socket opened.
                let asked = id.clone();
                let workspace = match self.store.run(move |store| store.workspace(&asked)).await {
                    Ok(Some(workspace)) => workspace,
                    _ => return self.error(Some(pane), "the workspace is gone".into()).await,
                };
                // Re-checked at every open: a session starts only for who may have one now.
                if let Some(Some(machine)) = workspace.panes.get(pane)
                    && let Err(refused) = self.holder.may_open(machine).await
                {
                    return self.error(Some(pane), refused).await;
                }
                tokio::spawn(async move {
                    terminals.open(&workspace, pane, &user, size).await;
                });
            }
            ClientMessage::Close { pane } => self.terminals.close(id, &[pane]).await,
            ClientMessage::Broadcast { enabled } => {
                self.terminals.set_broadcast(id, enabled);
                self.sink
                    .send(Frame::Message(ServerMessage::Broadcast { enabled }))
                    .await
                    .ok();
            }
        }
    }

    async fn input(&self, pane: usize, data: Bytes) {
        if let Err(error) = self.terminals.input(&self.workspace.id, pane, data).await {
            self.error(Some(pane), error.to_string()).await;
        }
    }

    async fn error(&self, pane: Option<usize>, message: String) {
        self.sink
            .send(Frame::Message(ServerMessage::Error { pane, message }))
            .await
            .ok();
    }
}

fn recording_view(session: TerminalSession) -> RecordingView {
    RecordingView {
        started_at: at(session.started_at_ms),
        ended_at: session.ended_at_ms.and_then(at),
        session,
    }
}

/// `GET /api/terminal/recordings`: newest first; the caller's own (every one, for admins).
#[utoipa::path(get, path = "/api/terminal/recordings", tag = "terminals", params(RecordingsQuery), responses((status = 200, description = "Terminal sessions, newest first: yours (admins: all)", body = Vec<RecordingView>)))]
pub async fn recordings(
    State(state): State<AppState>,
    caller: Authenticated,
    Query(query): Query<RecordingsQuery>,
) -> Result<Json<Vec<RecordingView>>, ApiError> {
    let user = caller.may(&state, Need::Workspaces)?;
    let admin = caller.is_admin(&state);
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let name = user.name.clone();
    let sessions = state
        .store
        .run(move |store| {
            store.terminal_sessions(limit, |session| {
                (admin || session.user == name)
                    && query
                        .machine
                        .as_ref()
                        .is_none_or(|m| *m == session.machine_id)
                    && query
                        .workspace
                        .as_ref()
                        .is_none_or(|w| *w == session.workspace_id)
                    && query.user.as_ref().is_none_or(|u| *u == session.user)
            })
        })
        .await?;
    Ok(Json(sessions.into_iter().map(recording_view).collect()))
}

/// A recording, if the caller may read it: their own, or any for an admin.
async fn readable_recording(
    state: &AppState,
    caller: &Authenticated,
    id: u64,
) -> Result<TerminalSession, ApiError> {
    let admin = caller.is_admin(state);
    state
        .store
        .run(move |store| store.terminal_session(id))
        .await?
        .filter(|session| admin || session.user == caller.user.name)
        .ok_or_else(|| ApiError::NotFound(format!("no terminal recording {id}")))
}

/// `GET /api/terminal/recordings/{id}`
#[utoipa::path(get, path = "/api/terminal/recordings/{id}", tag = "terminals", params(("id" = u64, Path, description = "Session id")), responses((status = 200, description = "One session: who, where, when, how it ended", body = RecordingView)))]
pub async fn recording(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<Json<RecordingView>, ApiError> {
    caller.may(&state, Need::Workspaces)?;
    Ok(Json(recording_view(
        readable_recording(&state, &caller, id).await?,
    )))
}

/// `GET /api/terminal/recordings/{id}/cast`: the asciicast v2 file, streamed from the store.
#[utoipa::path(get, path = "/api/terminal/recordings/{id}/cast", tag = "terminals", params(("id" = u64, Path, description = "Session id")), responses((status = 200, description = "The asciicast v2 recording", content_type = "application/x-asciicast", body = String)))]
pub async fn cast(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let user = caller.may(&state, Need::Workspaces)?;
    let session = readable_recording(&state, &caller, id).await?;
    let pages = (state.terminals)
        .cast(&session, &Actor::user(&user.name))
        .await?
        .map(|page| page.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-asciicast".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"linkops-session-{id}.cast\""),
            ),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}
