//! The certificate authority as the daemon serves it: host certificates
//! signed on an admin's request (what `linkops enroll` installs), each
//! bounded, checked, recorded and audited before it is handed out;
//! revocations — recorded, audited, refused by this daemon's connections at
//! once and told to every script, so the machines' trust state refuses
//! them too; and the user CA's rotation, which finishes only once every
//! machine logged in to with certificates trusts the next CA.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use linkops_reconcilers::certificate::{
    CertificateKind, IssuedHostCertificate, Revocation, host_grant, revoked_host_serials,
    revoked_user_serials,
};
use linkops_reconcilers::desired::{DesiredState, is_id};
use linkops_reconcilers::state::reads_trust_facts;
use linkops_reconcilers::trust::{RotationWait, TrustKeeper, rotation_waits};

use crate::contract::{HostCertificateRequest, HostCertificateView};
use crate::metrics::Metrics;
use crate::operations::TrustFacts;
use crate::ssh::RevokedHosts;
use crate::ssh::ca::{self, Authority, PublicKey};
use crate::store::{self, Actor, Store, now_ms};

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
    #[error(
        "the rotation waits for {} machine(s) logged in to with certificates, which might not trust the next user CA yet: {}; finish once their trust state holds (or force it)",
        .0.len(),
        .0.iter().take(10).map(|w| format!("{} ({})", w.machine, w.reason)).collect::<Vec<_>>().join(", ")
    )]
    RotationWaits(Vec<RotationWait>),
    #[error(transparent)]
    Sign(#[from] ca::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Signs a host certificate for `request`'s key and names, audits it as
/// `user`'s, and counts it.
pub async fn issue_host_certificate(
    authority: &Authority,
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
    let valid_before = i64::try_from(certificate.valid_before())
        .ok()
        .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    let issued = IssuedHostCertificate {
        serial: certificate.serial(),
        machine: request.machine.clone(),
        principals: grant.principals.clone(),
        host_key: host_key.fingerprint(Default::default()).to_string(),
        issued_by: user.to_owned(),
        issued_at_ms: now_ms(),
        valid_before_ms: valid_before.as_millisecond(),
    };
    let actor = Actor::user(user);
    store
        .run(move |store| store.record_host_certificate(&issued, &actor))
        .await?;
    metrics.certificate_issued("host");
    Ok(HostCertificateView {
        certificate: line,
        serial: certificate.serial().to_string(),
        key_id: grant.key_id,
        principals: grant.principals,
        valid_before,
    })
}

/// The longest reason a revocation keeps.
pub const MAX_REASON_BYTES: usize = 1024;
/// User-certificate serials in force at once: every script is told them on
/// its command line, which Linux caps at 128 KiB an argument (they expire
/// within `[ssh] certificate_lifetime`).
pub const MAX_REVOKED_USER_SERIALS: usize = 1_000;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// A certificate by its serial: a host certificate recorded under it, else
    /// a user certificate (one of the daemon's logins).
    Serial(u64),
    /// Every host certificate signed for a machine.
    Machine(String),
}

/// The revocations in force, shared: the daemon's connections refuse the
/// host certificates among them, and scripts are told the user certificates'.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    all: Arc<RwLock<Arc<Vec<Revocation>>>>,
    hosts: RevokedHosts,
}

impl Revocations {
    /// The revocations `store` holds.
    pub fn load(store: &Store) -> Result<Revocations, store::Error> {
        let revocations = Revocations::default();
        revocations.replace(store.revocations()?);
        Ok(revocations)
    }

    /// What connections consult for host certificates.
    pub fn hosts(&self) -> RevokedHosts {
        self.hosts.clone()
    }

    /// Every revocation recorded.
    pub fn all(&self) -> Arc<Vec<Revocation>> {
        self.all.read().expect("never poisoned").clone()
    }

    /// The user-certificate serials machines must refuse now.
    pub fn user_serials(&self) -> Vec<u64> {
        revoked_user_serials(&self.all(), now_ms())
    }

    fn replace(&self, all: Vec<Revocation>) {
        self.hosts.replace(revoked_host_serials(&all));
        *self.all.write().expect("never poisoned") = Arc::new(all);
    }

    /// Reads the store's revocations again (another replica's are seen so).
    pub async fn refresh(&self, store: &Store) -> Result<(), Error> {
        let all = store.run(|store| store.revocations()).await?;
        self.replace(all);
        Ok(())
    }
}

/// Revokes what `what` names for `reason`, as `user`: recorded and audited
/// in one transaction, then in force for this daemon at once. A user
/// certificate is told to the machines until it has expired anyway
/// (`certificate_lifetime` after now at the latest).
pub async fn revoke(
    revocations: &Revocations,
    store: &Store,
    user: &str,
    what: Revoke,
    reason: &str,
    certificate_lifetime: Duration,
) -> Result<Vec<Revocation>, Error> {
    if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(Error::Invalid {
            field: "reason",
            message: format!("say why, in at most {MAX_REASON_BYTES} bytes"),
        });
    }
    let now = now_ms();
    let revocation = |serial, kind, machine: Option<String>, expires_at_ms| Revocation {
        serial,
        kind,
        machine,
        reason: reason.trim().to_owned(),
        revoked_by: user.to_owned(),
        revoked_at_ms: now,
        expires_at_ms,
    };
    let lifetime = i64::try_from(certificate_lifetime.as_millis()).unwrap_or(i64::MAX);
    let revoked = match what {
        Revoke::Machine(machine) => {
            if !is_id(&machine) {
                return Err(Error::Invalid {
                    field: "machine",
                    message: "no machine id (lowercase letters, digits, '.', '_', '-')".into(),
                });
            }
            let lookup = machine.clone();
            let issued = store
                .run(move |store| store.host_certificates(&lookup))
                .await?;
            if issued.is_empty() {
                return Err(Error::Invalid {
                    field: "machine",
                    message: format!("no host certificate was signed for {machine:?}"),
                });
            }
            issued
                .into_iter()
                .map(|c| {
                    revocation(
                        c.serial,
                        CertificateKind::Host,
                        Some(c.machine),
                        c.valid_before_ms,
                    )
                })
                .collect()
        }
        Revoke::Serial(serial) => {
            let recorded = store
                .run(move |store| store.host_certificate(serial))
                .await?;
            vec![match recorded {
                Some(c) => revocation(
                    serial,
                    CertificateKind::Host,
                    Some(c.machine),
                    c.valid_before_ms,
                ),
                None => revocation(
                    serial,
                    CertificateKind::User,
                    None,
                    now.saturating_add(lifetime),
                ),
            }]
        }
    };
    let (recorded, actor) = (revoked.clone(), Actor::user(user));
    store
        .run(move |store| store.revoke_certificates(&recorded, &actor))
        .await?;
    revocations.refresh(store).await?;
    Ok(revoked)
}

/// What every script is told of the trust machines hold in the daemon: the
/// user CAs (two while one rotates in) and the user certificates revoked.
pub fn trust_facts(authority: &Authority, revocations: &Revocations) -> TrustFacts {
    let serials: Vec<String> = revocations
        .user_serials()
        .iter()
        .map(u64::to_string)
        .collect();
    TrustFacts {
        user_cas: authority.trusted_user_ca_lines(),
        revoked_serials: serials.join(" "),
    }
}

/// A step of the user CA's rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// The next CA is made and trusted beside the current one.
    Begin,
    /// The next CA signs; the old one is gone. Unless `force`d, only once no
    /// machine logged in to with certificates is waited for.
    Finish { force: bool },
}

/// Takes `step` of the user CA's rotation as `user`: recorded (for the other
/// replicas) and audited. The machines' trust state then rolls the change
/// out (the caller tells the controller the trust changed).
pub async fn rotate(
    authority: &Arc<Authority>,
    store: &Store,
    user: &str,
    step: RotationStep,
    waits: Vec<RotationWait>,
) -> Result<(), Error> {
    if let RotationStep::Finish { force: false } = step
        && !waits.is_empty()
    {
        return Err(Error::RotationWaits(waits));
    }
    let old = authority.user_public();
    // Key files are written and renamed: off the async runtime.
    let stepping = authority.clone();
    let taken = crate::blocking::run(move || match step {
        RotationStep::Begin => stepping.begin_rotation(),
        RotationStep::Finish { .. } => stepping.finish_rotation(),
    });
    let key = taken.await.map_err(|_| store::Error::ShuttingDown)??;
    let detail = match step {
        RotationStep::Begin => format!(
            "began: {} trusted beside {}, which still signs",
            fingerprint(&key),
            fingerprint(&old)
        ),
        RotationStep::Finish { .. } => {
            let forced = match waits.len() {
                0 => String::new(),
                n => format!(" (forced past {n} machine(s) waited for)"),
            };
            format!(
                "finished: {} signs, {} retired{forced}",
                fingerprint(&key),
                fingerprint(&old)
            )
        }
    };
    let (current, next, actor) = (
        authority.user_ca_check(),
        authority.next_user_ca_check(),
        Actor::user(user),
    );
    store
        .run(move |store| store.record_user_ca_rotation(current, next, &actor, detail))
        .await?;
    Ok(())
}

/// Days from now until a user CA signing since `since` is due to be
/// rotated, `rotate_after` after it; negative: overdue.
pub fn rotation_due_days(since: SystemTime, rotate_after: Duration) -> i64 {
    const DAY: i64 = 24 * 3600;
    let age = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    let left = i64::try_from(rotate_after.as_secs()).unwrap_or(i64::MAX)
        - i64::try_from(age).unwrap_or(i64::MAX);
    left.div_euclid(DAY)
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(Default::default()).to_string()
}

/// The machines a rotation of the user CA waits for under `desired`, as the
/// store records its trust-keeping states now (`facts`: what scripts are told).
pub async fn rotation_waits_now(
    desired: Option<Arc<DesiredState>>,
    store: &Store,
    facts: &TrustFacts,
) -> Result<Vec<RotationWait>, store::Error> {
    let Some(desired) = desired else {
        return Ok(Vec::new());
    };
    let facts = facts.as_text();
    let keeping: Vec<(String, String)> = desired
        .states
        .values()
        .filter_map(|state| {
            let script = desired.scripts.get(&state.script)?;
            let digest = || desired.state_digest(state, script, &facts);
            reads_trust_facts(script).then(|| (state.id.clone(), digest()))
        })
        .collect();
    let ids: Vec<String> = keeping.iter().map(|(id, _)| id.clone()).collect();
    let targets = store
        .run(move |store| {
            ids.iter()
                .map(|id| store.state_targets(id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let keepers: Vec<TrustKeeper> = keeping
        .iter()
        .zip(&targets)
        .map(|((id, digest), targets)| TrustKeeper {
            state: &desired.states[id],
            digest,
            targets,
        })
        .collect();
    Ok(rotation_waits(&desired.machines, &keepers))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    /// Finishing while machines are waited for changes nothing unless forced;
    /// each step is recorded for the other replicas and audited.
    #[tokio::test]
    async fn a_rotation_waited_for_finishes_only_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Arc::new(Authority::open(dir.path()).unwrap());
        let store = testing::redb().open();
        rotate(&authority, &store, "ada", RotationStep::Begin, Vec::new())
            .await
            .unwrap();
        let next = authority.next_user_public().expect("under way");
        let waits = vec![RotationWait {
            machine: "web-1".into(),
            reason: "state linkops-trust: applying".into(),
        }];
        let finish = |force| RotationStep::Finish { force };
        let refused = rotate(&authority, &store, "ada", finish(false), waits.clone()).await;
        match refused {
            Err(error @ Error::RotationWaits(_)) => {
                assert!(
                    error
                        .to_string()
                        .contains("web-1 (state linkops-trust: applying)")
                );
            }
            other => panic!("finished while waited for: {other:?}"),
        }
        assert_eq!(
            authority.next_user_public(),
            Some(next.clone()),
            "still under way"
        );
        rotate(&authority, &store, "ada", finish(true), waits)
            .await
            .unwrap();
        assert_eq!(authority.user_public(), next);
        let recorded = store
            .run(|store| {
                Ok((
                    store.key_check(store::SharedKey::UserCa)?,
                    store.key_check(store::SharedKey::UserCaNext)?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(recorded, (Some(authority.user_ca_check()), Some(0)));
    }
}
