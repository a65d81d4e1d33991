//! The operator's command-line client: `linkops login`, `machines`, `run`,
//! `ops`, `stop`, `sync`, `status`, `plan` talk to a running daemon through
//! its public HTTP API (the same one the console uses); `enroll` brings a
//! machine in over the operator's own SSH access, the daemon signing.

mod approvals;
pub mod ca;
mod commands;
pub mod enroll;
mod follow;
mod print;
mod session;
pub mod sso;

use std::path::PathBuf;

use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::contract::ErrorBody;

pub use approvals::{approvals, vote};
pub use commands::*;

/// A password: the first line of stdin (`--password-stdin`), else asked on
/// the terminal after `prompt`, unechoed.
pub fn read_password(prompt: &str, from_stdin: bool) -> Result<secrecy::SecretString> {
    let password = match from_stdin {
        true => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(Error::Password)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
        false => rpassword::prompt_password(prompt).map_err(Error::Password)?,
    };
    Ok(password.into())
}
pub use follow::logs;
pub use session::Session;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the daemon at {server}: {source}")]
    Unreachable {
        server: String,
        source: reqwest::Error,
    },
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("not logged in to {server}: run `linkops login --server {server}`")]
    NotLoggedIn { server: String },
    #[error("the session for {server} has expired: run `linkops login --server {server}`")]
    Expired { server: String },
    #[error(
        "your session for {server} is no longer valid (the daemon signs with another key, or your password or account changed): run `linkops login --server {server}`"
    )]
    SessionInvalid { server: String },
    #[error(
        "{server} refused the API token in LINKOPS_TOKEN: it was revoked, has expired or is mistyped"
    )]
    ApiTokenRefused { server: String },
    #[error("session file {path}: {reason}")]
    Session { path: PathBuf, reason: String },
    #[error(
        "reading the password: {0} (no terminal to prompt on? pipe it in with `--password-stdin`)"
    )]
    Password(std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Files(#[from] crate::git::FilesError),
    #[error("the stream of operation {operation} broke off and could not be resumed: {reason}")]
    Stream { operation: u64, reason: String },
    #[error(transparent)]
    Enroll(#[from] enroll::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection to one daemon, with the token of the logged-in user.
pub struct Client {
    server: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(server: &str, token: Option<String>) -> Client {
        Client {
            server: server.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// A client for the server of the saved session (or `server`), with its
    /// token when there is a session for it, without one otherwise (for what
    /// needs none: the daemon's health).
    pub fn from_session_if_any(server: Option<&str>) -> Result<Client> {
        match Client::from_session(server, None) {
            Err(Error::NotLoggedIn { server } | Error::Expired { server }) => {
                Ok(Client::new(&server, None))
            }
            other => other,
        }
    }

    /// Whether requests carry a session's token.
    pub fn has_session(&self) -> bool {
        self.token.is_some()
    }

    /// A client for the server of the saved session (or `server`), with its token.
    pub fn from_session(server: Option<&str>, token: Option<String>) -> Result<Client> {
        if let (Some(server), Some(token)) = (server, &token) {
            return Ok(Client::new(server, Some(token.clone())));
        }
        let session = Session::load()?;
        let server = server
            .map(str::to_owned)
            .or_else(|| session.as_ref().map(|s| s.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let token = match token {
            Some(token) => token,
            None => match session.filter(|s| s.server == server.trim_end_matches('/')) {
                Some(session) if session.expired() => return Err(Error::Expired { server }),
                Some(session) => session.token,
                None => return Err(Error::NotLoggedIn { server }),
            },
        };
        Ok(Client::new(&server, Some(token)))
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.server));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// A GET with `query` as its (encoded) query string.
    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T> {
        self.send(self.request(reqwest::Method::GET, path).query(query))
            .await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let response = request
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| self.unreachable(source))?;
        if !status.is_success() {
            return Err(self.refused(status.as_u16(), &body));
        }
        serde_json::from_slice(&body).map_err(|error| Error::Api {
            status: status.as_u16(),
            code: "unexpected_answer".into(),
            message: format!("the daemon's answer was not understood: {error}"),
        })
    }

    /// An operation's Server-Sent Events after `last_event_id`.
    pub async fn events(
        &self,
        operation: u64,
        last_event_id: u64,
    ) -> Result<impl futures::Stream<Item = Result<eventsource_stream::Event, String>> + use<>>
    {
        use eventsource_stream::Eventsource;
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/api/operations/{operation}/events"),
            )
            .header("last-event-id", last_event_id.to_string())
            .send()
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(self.refused(status.as_u16(), &body));
        }
        Ok(response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|error| error.to_string())))
    }

    /// A refusal; a 401 to a request with a token means the session is no
    /// longer good, which the operator is told how to mend.
    fn refused(&self, status: u16, body: &[u8]) -> Error {
        match (status, &self.token) {
            (401, Some(token)) if crate::auth::api_token::parse(token).is_some() => {
                Error::ApiTokenRefused {
                    server: self.server.clone(),
                }
            }
            (401, Some(_)) => Error::SessionInvalid {
                server: self.server.clone(),
            },
            _ => api_error(status, body),
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> Error {
        Error::Unreachable {
            server: self.server.clone(),
            source,
        }
    }
}

/// The daemon's address when neither `--server` nor a session names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8000";

/// The API's one error shape ([`ErrorBody`]), or what a proxy in between said.
fn api_error(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => Error::Api {
            status,
            code: error.code.to_string(),
            message: error.message,
        },
        Err(_) => Error::Api {
            status,
            code: "error".into(),
            message: "the daemon answered with an error".into(),
        },
    }
}
