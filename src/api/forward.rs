//! Terminal workspaces across replicas. A workspace's live side (its panes'
//! sessions and its socket) is on one replica, the one that first connected
//! it; a request for the workspace that reaches another replica is forwarded
//! to that one, the WebSocket spliced through byte for byte.
//!
//! Forwarded, not redirected: browsers do not follow a redirect of a
//! WebSocket handshake, and behind a load balancer the replicas' own
//! addresses are often not reachable from where the browser is. The holder
//! checks everything itself (token, role, origin: the `Host` is passed on);
//! the forwarding replica makes sure the caller is signed in before relaying,
//! and takes a workspace only for a caller the handler would let in (a
//! refused request moves nothing). The holder is one row of the store, so a
//! forwarded request reaches the replica that finds itself the holder.
//! With `[cluster] listen` it goes there, over mutual TLS (`replica::tls`).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::contract::WorkspaceView;
use crate::store::Member;

/// Marks a request one replica forwarded to another (its value: the
/// forwarder's member id): a list asked so shows only what the holder holds.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("x-linkops-forwarded-by");
/// The routes of one workspace; what follows `{id}` says which.
const WORKSPACE_ROUTE: &str = "/api/terminal/workspaces/{id}";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// For the holder's answer to begin: connecting every pane waits for SSH.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of a holder's workspace list read back.
const LIST_LIMIT: usize = 4 << 20;

/// Middleware: a request for a workspace held by another live replica goes
/// there; any other request goes on here.
pub async fn to_holder(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|path| path.as_str().strip_prefix(WORKSPACE_ROUTE))
        .map(str::to_owned);
    let Some(route) = route else {
        return next.run(request).await;
    };
    // No header decides this (a client could send any): the holder finds
    // itself the holder and serves the request, a forwarded one included.
    if !state.store.is_shared() {
        return next.run(request).await;
    }
    // Connecting panes and the socket make the workspace live: here, unless
    // it is live elsewhere. The rest only follows where it is live.
    let take = match route.as_str() {
        "/ws" => Take::Socket,
        "/connect-all" => Take::Panes,
        _ => Take::No,
    };
    let (mut parts, body) = request.into_parts();
    match holder(&state, &mut parts, take).await {
        Ok(None) => next.run(Request::from_parts(parts, body)).await,
        Ok(Some(holder)) => forward(&state, &holder, parts, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(error) => error.into_response(),
    }
}

/// Whether a request makes its workspace live here unless it is elsewhere.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    No,
    Panes,
    Socket,
}

/// The live replica other than this one that holds the workspace of `parts`.
async fn holder(
    state: &AppState,
    parts: &mut Parts,
    take: Take,
) -> Result<Option<Member>, ApiError> {
    // Nothing is relayed for a caller who is not signed in.
    let caller = Authenticated::from_request_parts(parts, state).await?;
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let workspace = params
        .iter()
        .find_map(|(name, value)| (name == "id").then(|| value.to_owned()))
        .ok_or_else(|| ApiError::BadRequest("no workspace id in the path".into()))?;
    // Authorized first, then taken: what the handler would refuse moves nothing.
    let socket = (take == Take::Socket).then_some(&parts.headers);
    let take =
        take != Take::No && super::terminal::admits(state, &caller, &workspace, socket).await?;
    Ok(state.terminals.holder(&workspace, take).await?)
}

fn replica(state: &AppState) -> String {
    state.membership.id().to_owned()
}

/// Sends the request on to `holder` and its answer back; a WebSocket
/// handshake the holder accepts is spliced until either side closes or this
/// daemon stops serving.
async fn forward(
    state: &AppState,
    holder: &Member,
    mut parts: Parts,
    body: Body,
) -> Result<Response, ApiError> {
    let client_side = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let upgrading = parts.headers.contains_key(header::UPGRADE);
    strip_hop_by_hop(&mut parts.headers, upgrading);
    let me = HeaderValue::from_str(&replica(state)).expect("a member id is a header value");
    parts.headers.insert(FORWARDED_BY, me);
    let mut request = hyper::Request::from_parts(parts, body);
    request.extensions_mut().clear();
    let mut answer = send(state, holder, request).await?;
    tracing::debug!(holder = %holder.replica, address = %holder.address, status = %answer.status(), "forwarded a terminal workspace's request to the replica holding it");
    if answer.status() == StatusCode::SWITCHING_PROTOCOLS {
        let client_side = client_side.ok_or_else(|| {
            ApiError::Internal(
                "a WebSocket handshake came on a connection that cannot upgrade".into(),
            )
        })?;
        let holder_side = hyper::upgrade::on(&mut answer);
        let draining = state.draining.clone();
        tokio::spawn(async move {
            let (Ok(client), Ok(holder)) = tokio::join!(client_side, holder_side) else {
                return;
            };
            let (mut client, mut holder) = (TokioIo::new(client), TokioIo::new(holder));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut holder) => {}
                // The client reconnects, through whichever replica, to the same sessions.
                () = draining.cancelled() => {}
            }
        });
    } else {
        strip_hop_by_hop(answer.headers_mut(), false);
    }
    Ok(answer.map(Body::new))
}

/// One request to `holder` on a connection of its own (over mutual TLS when
/// the replicas talk so); its answer's head.
async fn send(
    state: &AppState,
    holder: &Member,
    request: hyper::Request<Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
    let unreachable = |reason: String| ApiError::HolderUnreachable {
        replica: holder.replica.clone(),
        address: holder.address.clone(),
        reason,
    };
    let connected = async {
        let stream = tokio::net::TcpStream::connect(&holder.address).await?;
        match &state.replica_tls {
            None => Ok(Transport::Plain(stream)),
            Some(tls) => Ok(Transport::Tls(Box::new(
                tls.connect(&holder.address, stream).await?,
            ))),
        }
    };
    let transport = tokio::time::timeout(CONNECT_TIMEOUT, connected)
        .await
        .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|error: std::io::Error| unreachable(error.to_string()))?;
    let exchange = async {
        match transport {
            Transport::Plain(stream) => exchange(stream, request).await,
            Transport::Tls(stream) => exchange(stream, request).await,
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {ANSWER_TIMEOUT:?}")))?
        .map_err(|error| unreachable(error.to_string()))
}

/// How a request reaches the holder.
enum Transport {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// `request` over `stream`, with upgrades.
async fn exchange<S>(
    stream: S,
    request: hyper::Request<Body>,
) -> hyper::Result<hyper::Response<hyper::body::Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends with the exchange (or, upgraded, hands the connection over).
    tokio::spawn(connection.with_upgrades());
    sender.send_request(request).await
}

/// Headers that belong to one connection, not to the request or answer
/// (a handshake keeps `Connection` and `Upgrade`: they are what it asks).
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    for name in [header::TRANSFER_ENCODING, header::TE, header::TRAILER] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    if !upgrading {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// The caller's workspaces as the replicas holding them see them, by id (a
/// list answered here shows the panes live elsewhere as they are there).
/// A holder that does not answer is logged and left out.
pub async fn views_held_elsewhere(
    state: &AppState,
    headers: &HeaderMap,
    token: &str,
) -> Result<HashMap<String, WorkspaceView>, ApiError> {
    let replica = replica(state);
    let held = (state.store)
        .run(move |store| store.workspace_holders(&replica))
        .await?;
    let mut holders: HashMap<String, (Member, Vec<String>)> = HashMap::new();
    for (workspace, member) in held {
        holders
            .entry(member.replica.clone())
            .or_insert_with(|| (member, Vec::new()))
            .1
            .push(workspace);
    }
    let mut views = HashMap::new();
    for (holder, workspaces) in holders.into_values() {
        match list_of(state, &holder, headers, token).await {
            Ok(listed) => views.extend(
                listed
                    .into_iter()
                    .filter(|view| workspaces.contains(&view.id))
                    .map(|view| (view.id.clone(), view)),
            ),
            Err(error) => {
                tracing::warn!(holder = %holder.replica, address = %holder.address, error = ?error, "the replica holding terminal workspaces did not list them: their panes are shown as seen here");
            }
        }
    }
    Ok(views)
}

/// `GET /api/terminal/workspaces` of `holder`, as the caller (whose
/// `token` came however it came: a header, the query, a subprotocol).
async fn list_of(
    state: &AppState,
    holder: &Member,
    headers: &HeaderMap,
    token: &str,
) -> Result<Vec<WorkspaceView>, ApiError> {
    let mut request = hyper::Request::builder()
        .method(Method::GET)
        .uri("/api/terminal/workspaces")
        .header(FORWARDED_BY, replica(state))
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some(host) = headers.get(header::HOST) {
        request = request.header(header::HOST, host);
    }
    let request = request
        .body(Body::empty())
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let answer = send(state, holder, request).await?;
    let status = answer.status();
    let body = axum::body::to_bytes(Body::new(answer.into_body()), LIST_LIMIT)
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    if !status.is_success() {
        return Err(ApiError::Internal(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(|error| ApiError::Internal(error.to_string()))
}
