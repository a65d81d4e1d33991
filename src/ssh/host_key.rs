//! Host-key trust: a key pinned in the inventory wins; otherwise a host
//! certificate of the daemon's host CA for the name dialled, or the daemon's
//! known_hosts, decides. An unknown plain key is refused unless
//! trust-on-first-use is on; a certificate that does not prove the host is
//! refused unless its key is known.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use russh::keys::ssh_key::certificate::CertType;
use russh::keys::{Certificate, HashAlg, PublicKey};

/// What LinkOps knows about the key a machine should present.
#[derive(Debug, Clone, Default)]
pub struct ExpectedKeys {
    /// From `host_key` in the inventory.
    pub pinned: Option<PublicKey>,
    /// known_hosts entries for this host and port, with their line numbers.
    pub known: Vec<(usize, PublicKey)>,
    /// The host CA whose certificates prove a host key (the daemon's own).
    pub host_ca: Option<PublicKey>,
    /// Host-certificate serials revoked: such a certificate proves nothing.
    pub revoked: Arc<BTreeSet<u64>>,
}

/// The host-certificate serials the daemon refuses, shared by every
/// connection and replaced whole when a revocation is recorded.
#[derive(Debug, Clone, Default)]
pub struct RevokedHosts(Arc<RwLock<Arc<BTreeSet<u64>>>>);

impl RevokedHosts {
    /// The serials revoked now.
    pub fn current(&self) -> Arc<BTreeSet<u64>> {
        self.0.read().expect("never poisoned").clone()
    }

    pub fn replace(&self, serials: BTreeSet<u64>) {
        *self.0.write().expect("never poisoned") = Arc::new(serials);
    }
}

/// The judgement on a presented host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Trusted,
    /// Nothing is recorded for the host.
    Unknown,
    /// Something is recorded and the presented key is not it.
    Changed {
        recorded: String,
    },
    /// A certificate that does not prove the host, for a key that is not known.
    Uncertified {
        reason: String,
    },
}

impl ExpectedKeys {
    /// Judges `presented`. Deliberately strict: when known_hosts holds any key
    /// for the host, a key of another algorithm counts as changed rather than
    /// unknown, so that trust-on-first-use cannot be used to swap keys.
    pub fn judge(&self, presented: &PublicKey) -> Verdict {
        if let Some(pinned) = &self.pinned {
            return if same_key(pinned, presented) {
                Verdict::Trusted
            } else {
                Verdict::Changed {
                    recorded: format!("pinned host_key {}", fingerprint(pinned)),
                }
            };
        }
        if self
            .known
            .iter()
            .any(|(_, known)| same_key(known, presented))
        {
            return Verdict::Trusted;
        }
        match self.known.first() {
            None => Verdict::Unknown,
            Some((line, known)) => Verdict::Changed {
                recorded: format!("known_hosts line {line}: {}", fingerprint(known)),
            },
        }
    }

    /// Judges a host certificate presented when dialling `host`, at `now`
    /// (Unix seconds). A pinned key still wins (the certificate must be for
    /// it); otherwise a certificate of the host CA naming `host` is trusted,
    /// and one that is not — another CA's, expired, for other names — is
    /// judged as its bare key is, an unknown one refused with the reason
    /// (never learned on first use: whoever presents a bad certificate is not
    /// given the benefit of the doubt).
    pub fn judge_certificate(&self, certificate: &Certificate, host: &str, now: u64) -> Verdict {
        let key = PublicKey::from(certificate.public_key().clone());
        if self.pinned.is_some() {
            return self.judge(&key);
        }
        let reason = match &self.host_ca {
            Some(_) if self.revoked.contains(&certificate.serial()) => {
                format!("its serial {} is revoked", certificate.serial())
            }
            Some(host_ca) => match proves(certificate, host_ca, host, now) {
                Ok(()) => return Verdict::Trusted,
                Err(reason) => reason,
            },
            None => "the daemon trusts no host CA".to_owned(),
        };
        match self.judge(&key) {
            Verdict::Unknown => Verdict::Uncertified { reason },
            known => known,
        }
    }
}

/// Whether `certificate` proves `host`'s key: a host certificate the host CA
/// signed, valid at `now`, naming `host`; else why not.
fn proves(
    certificate: &Certificate,
    host_ca: &PublicKey,
    host: &str,
    now: u64,
) -> Result<(), String> {
    if certificate.cert_type() != CertType::Host {
        return Err("it is a user certificate, not a host certificate".into());
    }
    let signer = PublicKey::from(certificate.signature_key().clone());
    if !same_key(&signer, host_ca) {
        return Err(format!(
            "it is signed by {}, not the host CA {}",
            fingerprint(&signer),
            fingerprint(host_ca)
        ));
    }
    if certificate.verify_signature().is_err() {
        return Err("its signature does not verify".into());
    }
    let at = |seconds: u64| {
        i64::try_from(seconds)
            .ok()
            .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
            .map_or_else(|| seconds.to_string(), |at| at.to_string())
    };
    if now < certificate.valid_after() {
        return Err(format!(
            "it is not valid before {}",
            at(certificate.valid_after())
        ));
    }
    if now >= certificate.valid_before() {
        return Err(format!("it expired at {}", at(certificate.valid_before())));
    }
    if !certificate
        .valid_principals()
        .iter()
        .any(|name| name == host)
    {
        return Err(format!(
            "it names {:?}, not {host}",
            certificate.valid_principals()
        ));
    }
    Ok(())
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    // Comments differ between known_hosts and the wire; compare key material.
    a.key_data() == b.key_data()
}

/// The SHA256 fingerprint OpenSSH shows (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two distinct ed25519 keys, OpenSSH format.
    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJLRD9goelOI6ECRycLZktBm08vwIzJJXhSmuzIPFjHi a";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBL2+7ZUt/pXFbF4mqp0FcwlMtwUcIZ/v3vCXdoBOHFc b";

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    #[test]
    fn nothing_recorded_is_unknown() {
        assert_eq!(ExpectedKeys::default().judge(&key(ED_A)), Verdict::Unknown);
    }

    #[test]
    fn known_key_is_trusted_whatever_its_comment() {
        let expected = ExpectedKeys {
            pinned: None,
            known: vec![(3, key(&ED_A.replace(" a", " other")))],
            ..ExpectedKeys::default()
        };
        assert_eq!(expected.judge(&key(ED_A)), Verdict::Trusted);
    }

    #[test]
    fn other_key_for_a_known_host_is_changed_and_names_the_line() {
        let expected = ExpectedKeys {
            pinned: None,
            known: vec![(7, key(ED_A))],
            ..ExpectedKeys::default()
        };
        match expected.judge(&key(ED_B)) {
            Verdict::Changed { recorded } => assert!(recorded.contains("line 7"), "{recorded}"),
            other => panic!("expected Changed, got {other:?}"),
        }
    }

    #[test]
    fn pinned_key_wins_over_known_hosts() {
        let expected = ExpectedKeys {
            pinned: Some(key(ED_B)),
            known: vec![(1, key(ED_A))],
            ..ExpectedKeys::default()
        };
        assert!(matches!(
            expected.judge(&key(ED_A)),
            Verdict::Changed { .. }
        ));
        assert_eq!(expected.judge(&key(ED_B)), Verdict::Trusted);
    }

    mod certificates {
        use russh::keys::PrivateKey;
        use russh::keys::ssh_key::certificate::Builder;
        use russh::keys::ssh_key::private::Ed25519Keypair;

        use super::*;

        const NOW: u64 = 2_000_000_000;

        fn private(seed: u8) -> PrivateKey {
            PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
        }

        /// A certificate of `ca` for host key `ED_A`, valid around NOW, naming `names`.
        fn certificate(
            ca: &PrivateKey,
            cert_type: CertType,
            names: &[&str],
            until: u64,
        ) -> Certificate {
            let subject = key(ED_A);
            let mut builder =
                Builder::new([1; 32], subject.key_data().clone(), NOW - 60, until).unwrap();
            builder
                .cert_type(cert_type)
                .unwrap()
                .key_id("linkops:host:a")
                .unwrap();
            for name in names {
                builder.valid_principal(*name).unwrap();
            }
            if names.is_empty() {
                // OpenSSH's "valid for any name": not enough for LinkOps.
                builder.all_principals_valid().unwrap();
            }
            builder.sign(ca).unwrap()
        }

        fn trusting(ca: &PrivateKey) -> ExpectedKeys {
            ExpectedKeys {
                host_ca: Some(ca.public_key().clone()),
                ..ExpectedKeys::default()
            }
        }

        fn refused(verdict: Verdict) -> String {
            match verdict {
                Verdict::Uncertified { reason } => reason,
                other => panic!("expected Uncertified, got {other:?}"),
            }
        }

        #[test]
        fn a_certificate_of_the_host_ca_for_the_name_dialled_is_trusted() {
            let ca = private(1);
            let cert = certificate(&ca, CertType::Host, &["10.0.0.5", "web1"], NOW + 60);
            let expected = trusting(&ca);
            assert_eq!(
                expected.judge_certificate(&cert, "10.0.0.5", NOW),
                Verdict::Trusted
            );
            assert_eq!(
                expected.judge_certificate(&cert, "web1", NOW),
                Verdict::Trusted
            );
        }

        #[test]
        fn a_certificate_that_does_not_prove_the_host_is_refused_saying_why() {
            let (ca, other) = (private(1), private(2));
            let expected = trusting(&ca);
            let cases = [
                (
                    certificate(&other, CertType::Host, &["web1"], NOW + 60),
                    NOW,
                    "not the host CA",
                ),
                (
                    certificate(&ca, CertType::User, &["web1"], NOW + 60),
                    NOW,
                    "user certificate",
                ),
                (
                    certificate(&ca, CertType::Host, &["web2"], NOW + 60),
                    NOW,
                    "not web1",
                ),
                (
                    certificate(&ca, CertType::Host, &[], NOW + 60),
                    NOW,
                    "not web1",
                ),
                (
                    certificate(&ca, CertType::Host, &["web1"], NOW + 60),
                    NOW + 60,
                    "expired at 2033-05-18T03:34:20Z",
                ),
                (
                    certificate(&ca, CertType::Host, &["web1"], NOW + 60),
                    NOW - 61,
                    "not valid before",
                ),
            ];
            for (cert, at, why) in cases {
                let reason = refused(expected.judge_certificate(&cert, "web1", at));
                assert!(reason.contains(why), "{why}: {reason}");
            }
            // No host CA at all: said so.
            let cert = certificate(&ca, CertType::Host, &["web1"], NOW + 60);
            let reason = refused(ExpectedKeys::default().judge_certificate(&cert, "web1", NOW));
            assert!(reason.contains("no host CA"), "{reason}");
        }

        #[test]
        fn a_revoked_certificate_proves_nothing() {
            let ca = private(1);
            let cert = certificate(&ca, CertType::Host, &["web1"], NOW + 60);
            let expected = ExpectedKeys {
                revoked: Arc::new(BTreeSet::from([cert.serial()])),
                ..trusting(&ca)
            };
            let reason = refused(expected.judge_certificate(&cert, "web1", NOW));
            assert!(reason.contains("is revoked"), "{reason}");
        }

        #[test]
        fn a_bad_certificate_for_a_known_or_pinned_key_is_judged_by_the_key() {
            let (ca, other) = (private(1), private(2));
            let cert = certificate(&other, CertType::Host, &["web1"], NOW + 60);
            let known = ExpectedKeys {
                known: vec![(4, key(ED_A))],
                ..trusting(&ca)
            };
            assert_eq!(
                known.judge_certificate(&cert, "web1", NOW),
                Verdict::Trusted
            );
            let changed = ExpectedKeys {
                known: vec![(4, key(ED_B))],
                ..trusting(&ca)
            };
            assert!(matches!(
                changed.judge_certificate(&cert, "web1", NOW),
                Verdict::Changed { .. }
            ));
            // A pinned key wins even over a good certificate for another key.
            let good = certificate(&ca, CertType::Host, &["web1"], NOW + 60);
            let pinned = ExpectedKeys {
                pinned: Some(key(ED_B)),
                ..trusting(&ca)
            };
            assert!(matches!(
                pinned.judge_certificate(&good, "web1", NOW),
                Verdict::Changed { .. }
            ));
        }
    }
}
