//! The certificate authority as the daemon serves it: host certificates
//! signed on an admin's request (what `linkops enroll` installs), each
//! bounded, checked and audited before it is handed out.

use std::sync::Arc;
use std::time::SystemTime;

use linkops_reconcilers::certificate::host_grant;
use linkops_reconcilers::desired::is_id;

use crate::contract::{HostCertificateRequest, HostCertificateView};
use crate::metrics::Metrics;
use crate::ssh::ca::{self, Authority, PublicKey};
use crate::store::{self, Actor, AuditAction, Outcome, Store};

/// Names one host certificate may carry.
pub const MAX_NAMES: usize = 16;
/// A DNS name's longest.
pub const MAX_NAME_BYTES: usize = 253;
/// The longest host key line taken (an RSA-16384 key is ~2.8 KiB).
pub const MAX_HOST_KEY_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Sign(#[from] ca::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Signs a host certificate for `request`'s key and names, audits it as
/// `user`'s, and counts it.
pub async fn issue_host_certificate(
    authority: Arc<Authority>,
    store: &Store,
    metrics: &Metrics,
    user: &str,
    request: HostCertificateRequest,
) -> Result<HostCertificateView, Error> {
    let host_key = checked(&request)?;
    let grant = host_grant(&request.machine, &request.names);
    let certificate = authority.sign_host(&host_key, &grant, SystemTime::now())?;
    let line = certificate.to_openssh().map_err(|error| Error::Invalid {
        field: "host_key",
        message: error.to_string(),
    })?;
    let detail = format!(
        "serial {} for {} ({}), key {}",
        certificate.serial(),
        grant.principals.join(", "),
        grant.key_id,
        host_key.fingerprint(Default::default())
    );
    let (actor, machine) = (Actor::user(user), request.machine.clone());
    store
        .run(move |store| {
            let action = AuditAction::CaHostCertificate;
            store.audit(&actor, action, &machine, Outcome::Success, Some(detail))
        })
        .await?;
    metrics.certificate_issued("host");
    let valid_before = i64::try_from(certificate.valid_before())
        .ok()
        .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    Ok(HostCertificateView {
        certificate: line,
        serial: certificate.serial().to_string(),
        key_id: grant.key_id,
        principals: grant.principals,
        valid_before,
    })
}

/// The request's host key, once every field is within its bounds.
fn checked(request: &HostCertificateRequest) -> Result<PublicKey, Error> {
    let invalid = |field, message: String| Error::Invalid { field, message };
    if !is_id(&request.machine) {
        return Err(invalid(
            "machine",
            format!(
                "{:?} is no machine id (lowercase letters, digits, '.', '_', '-'; at most 128)",
                request.machine
            ),
        ));
    }
    if request.names.is_empty() || request.names.len() > MAX_NAMES {
        return Err(invalid(
            "names",
            format!("give 1 to {MAX_NAMES} names the machine is reached by"),
        ));
    }
    for name in &request.names {
        let fits = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !fits {
            return Err(invalid(
                "names",
                format!(
                    "{name:?} is no host name or address (letters, digits, '.', '-', '_', ':'; at most {MAX_NAME_BYTES} bytes)"
                ),
            ));
        }
    }
    if request.host_key.len() > MAX_HOST_KEY_BYTES {
        return Err(invalid(
            "host_key",
            format!("longer than {MAX_HOST_KEY_BYTES} bytes"),
        ));
    }
    PublicKey::from_openssh(request.host_key.trim())
        .map_err(|error| invalid("host_key", format!("not an OpenSSH public key: {error}")))
}
