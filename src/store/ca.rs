//! What the certificate authority recorded: the host certificates it
//! signed, by machine, and the certificates it revoked, by serial — each
//! change with its audit entry in one transaction.

use linkops_reconcilers::certificate::{IssuedHostCertificate, Revocation};

use super::audit::{self, Actor, AuditAction};
use super::engine::{Read, Write};
use super::records::Outcome;
use super::schema::{CA_REVOCATIONS, HOST_CERTIFICATES};
use super::{Result, Store};

/// How long a revocation is kept once its certificate has expired (shown by
/// `GET /api/ca`; its audit entry stays for ever).
const KEPT_AFTER_EXPIRY_MS: i64 = 30 * 24 * 3600 * 1000;

impl Store {
    /// Records a host certificate the host CA signed, audited as `actor`'s.
    pub fn record_host_certificate(
        &self,
        issued: &IssuedHostCertificate,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write()?;
        let key = (issued.machine.clone(), issued.serial);
        tx.insert(HOST_CERTIFICATES, key, issued)?;
        let detail = format!(
            "serial {} for {}, key {}",
            issued.serial,
            issued.principals.join(", "),
            issued.host_key
        );
        audit::append(
            &mut tx,
            actor,
            AuditAction::CaHostCertificate,
            &issued.machine,
            Outcome::Success,
            Some(detail),
        )?;
        tx.commit()
    }

    /// Every host certificate signed, by machine; at most `limit`.
    pub fn all_host_certificates(&self, limit: usize) -> Result<Vec<IssuedHostCertificate>> {
        let tx = self.read()?;
        tx.range(HOST_CERTIFICATES, (String::new(), 0u64)..)
            .take(limit)
            .map(|entry| entry.map(|(_, issued)| issued))
            .collect()
    }

    /// The host certificates signed for `machine`, oldest first.
    pub fn host_certificates(&self, machine: &str) -> Result<Vec<IssuedHostCertificate>> {
        let tx = self.read()?;
        let start = (machine.to_owned(), 0u64);
        let end = (machine.to_owned(), u64::MAX);
        tx.range(HOST_CERTIFICATES, start..=end)
            .map(|entry| entry.map(|(_, issued)| issued))
            .collect()
    }

    /// The host certificate recorded under `serial`, whichever machine's.
    pub fn host_certificate(&self, serial: u64) -> Result<Option<IssuedHostCertificate>> {
        let tx = self.read()?;
        for entry in tx.range(HOST_CERTIFICATES, (String::new(), 0u64)..) {
            let (_, issued) = entry?;
            if issued.serial == serial {
                return Ok(Some(issued));
            }
        }
        Ok(None)
    }

    /// Records `revocations`, each audited as `actor`'s, in one transaction.
    pub fn revoke_certificates(&self, revocations: &[Revocation], actor: &Actor) -> Result<()> {
        let mut tx = self.write()?;
        for revocation in revocations {
            tx.insert(CA_REVOCATIONS, revocation.serial, revocation)?;
            let target = revocation
                .machine
                .clone()
                .unwrap_or_else(|| format!("serial {}", revocation.serial));
            let detail = format!(
                "{:?} certificate serial {}: {}",
                revocation.kind, revocation.serial, revocation.reason
            );
            audit::append(
                &mut tx,
                actor,
                AuditAction::CaRevoke,
                &target,
                Outcome::Success,
                Some(detail),
            )?;
        }
        tx.commit()
    }

    /// Lets go of the revocations whose certificate expired more than
    /// [`KEPT_AFTER_EXPIRY_MS`] before `now_ms` (sshd refuses it anyway);
    /// how many.
    pub(super) fn prune_expired_revocations(&self, now_ms: i64) -> Result<u64> {
        let mut tx = self.write()?;
        let mut removed = 0;
        tx.retain(CA_REVOCATIONS, |_, revocation| {
            let keep = revocation
                .expires_at_ms
                .saturating_add(KEPT_AFTER_EXPIRY_MS)
                > now_ms;
            removed += u64::from(!keep);
            keep
        })?;
        tx.commit()?;
        Ok(removed)
    }

    /// Every revocation, by serial.
    pub fn revocations(&self) -> Result<Vec<Revocation>> {
        let tx = self.read()?;
        tx.range(CA_REVOCATIONS, 0u64..)
            .map(|entry| entry.map(|(_, revocation)| revocation))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use linkops_reconcilers::certificate::CertificateKind;

    use super::*;
    use crate::store::testing;

    #[test]
    fn host_certificates_and_revocations_are_kept_and_audited() {
        for backing in testing::backings() {
            let store = backing.open();
            let issued = |machine: &str, serial| IssuedHostCertificate {
                serial,
                machine: machine.into(),
                principals: vec!["10.0.0.5".into()],
                host_key: "SHA256:abc".into(),
                issued_by: "ada".into(),
                issued_at_ms: 1,
                valid_before_ms: 2,
            };
            let ada = Actor::user("ada");
            store
                .record_host_certificate(&issued("web1", 7), &ada)
                .unwrap();
            store
                .record_host_certificate(&issued("web1", 3), &ada)
                .unwrap();
            store
                .record_host_certificate(&issued("web10", 5), &ada)
                .unwrap();
            let serials: Vec<u64> = store
                .host_certificates("web1")
                .unwrap()
                .iter()
                .map(|c| c.serial)
                .collect();
            assert_eq!(serials, [3, 7], "web1's alone");
            let all = store.all_host_certificates(2).unwrap();
            assert_eq!(
                all.iter().map(|c| c.serial).collect::<Vec<_>>(),
                [3, 7],
                "at most 2"
            );

            let revocation = Revocation {
                serial: u64::MAX,
                kind: CertificateKind::User,
                machine: None,
                reason: "a replica's disk was stolen".into(),
                revoked_by: "ada".into(),
                revoked_at_ms: 1,
                expires_at_ms: 2,
            };
            store
                .revoke_certificates(std::slice::from_ref(&revocation), &ada)
                .unwrap();
            assert_eq!(
                store.revocations().unwrap(),
                std::slice::from_ref(&revocation)
            );
            // Kept a month after its certificate expired, then let go.
            let month = KEPT_AFTER_EXPIRY_MS;
            assert_eq!(store.prune_expired_revocations(2 + month - 1).unwrap(), 0);
            assert_eq!(store.revocations().unwrap(), [revocation]);
            assert_eq!(store.prune_expired_revocations(2 + month).unwrap(), 1);
            assert_eq!(store.revocations().unwrap(), []);
            let audited: Vec<String> = store
                .audit_entries(0, 100)
                .unwrap()
                .iter()
                .map(|entry| entry.action.clone())
                .collect();
            assert_eq!(
                audited,
                [
                    "ca.host_certificate",
                    "ca.host_certificate",
                    "ca.host_certificate",
                    "ca.revoke"
                ],
            );
        }
    }
}
