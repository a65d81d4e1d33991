//! The replicas sharing one store, and what each owns.

use serde::{Deserialize, Serialize};

/// `GET /api/cluster`: the replicas as the answering one sees them.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The replica that answered (`local` for the only daemon of a redb store).
    pub replica: String,
    /// Whether other replicas may share the store (PostgreSQL).
    pub shared: bool,
    /// The live members, by replica id.
    pub members: Vec<MemberView>,
}

/// One live replica.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    pub replica: String,
    /// Where the others reach its API (`host:port`); unknown for a redb store's daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Whether it leads: fetches Git, applies revisions, keeps retention, delivers the outbox.
    pub leader: bool,
    /// The machines, run-requests and states of the revision in force it reconciles.
    pub machines: Vec<String>,
    pub runs: Vec<String>,
    pub states: Vec<String>,
}
