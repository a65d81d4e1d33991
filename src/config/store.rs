//! `[store]` and `[cluster]`: where observed state lives, and how replicas sharing it reach each other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Which engine holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One file in the data dir (`linkops.redb`): one daemon.
    #[default]
    Redb,
    /// A PostgreSQL database, which several daemons can share.
    Postgres,
}

/// Where observed state and history live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// `postgres://USER@HOST:PORT/DATABASE`, without a password (backend `postgres`).
    pub url: Option<String>,
    /// The database user's password: a file in the keys directory, mode 0600.
    /// Absent file: no password (peer or certificate authentication).
    pub password_file: String,
    /// Connections to the database kept at most.
    pub pool_size: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Redb,
            url: None,
            password_file: "postgres_password".into(),
            pool_size: 16,
        }
    }
}

/// Several daemons on one PostgreSQL store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How long a replica's lease lasts (3 s to 10 min): it is renewed every
    /// third of it, its holder stops acting a third before it ends, and a dead
    /// replica's work moves once it has passed. Longer rides out longer
    /// database restarts; shorter moves work sooner.
    #[serde(with = "jiff::fmt::serde::unsigned_duration::friendly::compact::required")]
    pub lease: Duration,
    /// `HOST:PORT` the other replicas reach this one at (they forward a
    /// terminal workspace's requests to the replica that holds its
    /// sessions). Unset: `[cluster] listen`, else `listen`, unless that is
    /// every address (`0.0.0.0`).
    pub advertise: Option<String>,
    /// An address of its own for what replicas send each other, over mutual
    /// TLS (`tls_certificate`, `tls_key`, `tls_ca`): only a replica with a
    /// certificate from `tls_ca` is served there. Unset: replicas reach each
    /// other at `listen`, in plain HTTP.
    pub listen: Option<SocketAddr>,
    /// This replica's certificate (PEM, the chain after it), a file in the keys dir.
    pub tls_certificate: Option<String>,
    /// Its private key (PEM), a file in the keys dir, mode 0600.
    pub tls_key: Option<String>,
    /// The authority whose certificates replicas accept of each other (PEM), in the keys dir.
    pub tls_ca: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease: Duration::from_secs(6),
            advertise: None,
            listen: None,
            tls_certificate: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

/// How replicas reach each other: their own mutual-TLS listener, or the API's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaTransport {
    Plain,
    MutualTls {
        listen: SocketAddr,
        certificate: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}
