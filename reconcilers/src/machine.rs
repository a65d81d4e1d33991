//! Machines: an inventory entry (desired) and what was last seen of it (observed).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::enrollment::Enrollment;

/// A machine as the inventory (`links.yaml`) declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Stable identifier, unique in the inventory.
    pub id: String,
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Login user on the machine; the daemon's default when `None`.
    pub user: Option<String>,
    /// Name of the private key in the daemon's keys directory (never a key
    /// itself); the daemon's default when `None`.
    pub key: Option<String>,
    /// Enrollment id: the machine's `/etc/linkops/client_id` must read `LINKOPS-<uuid>`.
    pub uuid: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A pinned host key (an OpenSSH public key line); wins over known_hosts.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Overrides the default health-check interval.
    #[serde(default)]
    pub health_interval: Option<Duration>,
    /// Overrides the per-machine session limit.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

/// Reachability as the last health check saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Never checked since the machine entered the inventory.
    Unknown,
    Reachable {
        latency_ms: u64,
    },
    Unreachable {
        error: String,
    },
}

/// Everything LinkOps has observed about one machine. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineObservation {
    pub machine_id: String,
    pub health: Health,
    /// Last time the machine answered over SSH.
    pub last_seen_ms: Option<i64>,
    pub checked_at_ms: Option<i64>,
    pub enrollment: Enrollment,
}
