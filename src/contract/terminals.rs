//! Terminal workspaces, their recordings, and the messages of a workspace's
//! WebSocket (defined beside the socket, in `terminal::protocol`).

use linkops_reconcilers::terminal::{Layout, TerminalSession};
use serde::{Deserialize, Serialize};

pub use crate::terminal::protocol::{
    ClientMessage, PaneState, PaneStatus, Refusal, ServerMessage, SocketCloseCode,
};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub layout: Layout,
    pub panes: Vec<PaneStatus>,
    pub broadcast: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    #[serde(default)]
    pub name: Option<String>,
    pub layout: Layout,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PanesBody {
    #[serde(default)]
    pub layout: Option<Layout>,
    /// A machine id (or null) per pane of the layout.
    #[serde(default)]
    pub panes: Option<Vec<Option<String>>>,
}

/// The terminal size sessions open at (the default when absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectBody {
    #[serde(default)]
    pub cols: Option<u16>,
    #[serde(default)]
    pub rows: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectAnswer {
    pub workspace: String,
    pub panes: Vec<PaneStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingView {
    #[serde(flatten)]
    pub session: TerminalSession,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecordingsQuery {
    pub machine: Option<String>,
    pub workspace: Option<String>,
    pub user: Option<String>,
    pub limit: Option<usize>,
}
