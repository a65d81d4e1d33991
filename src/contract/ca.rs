//! The SSH certificate authority as the API shows it: its public halves.

use linkops_reconcilers::certificate::{IssuedHostCertificate, Revocation};
use linkops_reconcilers::trust::RotationWait;
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
    /// Every certificate revoked, by serial.
    pub revocations: Vec<Revocation>,
    /// The host certificates signed, by machine (the first 1,000).
    pub host_certificates: Vec<IssuedHostCertificate>,
    /// Since when the user CA signs (made, or rotated in).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub user_ca_since: Option<jiff::Timestamp>,
    /// Days until it is due to be rotated (`[ssh] user_ca_rotate_after`);
    /// negative: overdue.
    pub user_ca_rotation_due_days: Option<i64>,
    /// The rotation under way, if one is.
    pub rotation: Option<RotationView>,
}

/// A rotation of the user CA under way: the next CA is trusted beside the
/// current one, which still signs, while the trust state rolls it out.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotationView {
    /// The next user CA's public key, an OpenSSH line.
    pub next_user_ca: String,
    pub next_user_ca_fingerprint: String,
    /// The machines logged in to with certificates that might not trust it
    /// yet: finishing waits for them (unless forced). Empty: it may finish.
    pub waiting_for: Vec<RotationWait>,
}

/// `POST /api/ca/rotation`: begin a rotation of the user CA, or finish it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Finish the rotation under way (false: begin one).
    #[serde(default)]
    pub finish: bool,
    /// Finish although machines are waited for (they refuse the daemon's
    /// logins until they trust the new CA).
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/ca/revocations`: a certificate by its serial, or every host
/// certificate of a machine.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Decimal, as sshd logs it and operations record it.
    pub serial: Option<String>,
    pub machine: Option<String>,
    /// Why (kept and audited; at most 1 KiB).
    pub reason: String,
}

/// `POST /api/ca/host-certificates`: a host certificate for a machine's host
/// key (what `linkops enroll` installs as sshd's `HostCertificate`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostCertificateRequest {
    /// The machine's id (as its inventory entry will say).
    pub machine: String,
    /// The names the daemon reaches it by (its `host`), at most 16.
    pub names: Vec<String>,
    /// The host key to certify, an OpenSSH public key line.
    pub host_key: String,
}

/// A host certificate signed by the host CA.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostCertificateView {
    /// The certificate, an OpenSSH line (`…-cert-v01@openssh.com …`).
    pub certificate: String,
    /// Decimal.
    pub serial: String,
    pub key_id: String,
    pub principals: Vec<String>,
    #[schema(value_type = String, format = DateTime)]
    pub valid_before: jiff::Timestamp,
}
