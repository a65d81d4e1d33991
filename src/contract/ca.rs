//! The SSH certificate authority as the API shows it: its public halves.

use serde::{Deserialize, Serialize};

/// `GET /api/ca`: what machines trust to accept the daemon's logins, and
/// what the daemon trusts for machines' host certificates.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaView {
    /// The user CA's public key, an OpenSSH line: a machine's `TrustedUserCAKeys`.
    pub user_ca: String,
    /// Its SHA-256 fingerprint (`SHA256:…`, as `ssh-keygen -l` prints it).
    pub user_ca_fingerprint: String,
    /// The host CA's public key, an OpenSSH line.
    pub host_ca: String,
    pub host_ca_fingerprint: String,
}
