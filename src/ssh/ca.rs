//! The SSH certificate authority: the user CA and the host CA (ed25519),
//! created at first start in the data dir (`ca/user_ca`, `ca/host_ca`, 0600,
//! OpenSSH's format, so `ssh-keygen -s` can use them too; their public halves
//! beside them as `.pub`), and the short-lived user certificates they sign
//! for the daemon's own connections.
//!
//! What a certificate grants is decided in `linkops_reconcilers::certificate`;
//! this module holds the keys and signs. (It is SSH's: only `src/ssh` speaks
//! russh and its key formats.)

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkops_reconcilers::certificate::{HostGrant, Purpose, UserGrant, user_grant, validity};
use linkops_reconcilers::trust::FoundCertificate;
use rand::Rng;
pub use russh::keys::PublicKey;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{self, LineEnding};
use russh::keys::{Certificate, PrivateKey};

use super::Certified;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the certificate authority's key {path} is no OpenSSH private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot create the certificate authority's key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing a certificate for {key_id}: {source}")]
    Sign {
        key_id: String,
        source: ssh_key::Error,
    },
}

/// Signs the daemon's logins: certificates for one in-memory key, each for
/// a login and a purpose, valid for minutes.
pub struct Certifier {
    authority: Arc<Authority>,
    key: Arc<PrivateKey>,
    replica: String,
    lifetime: Duration,
}

impl Certifier {
    /// Certificates of `authority` for a new [`session_key`], naming `replica`,
    /// valid for `lifetime` (`[ssh] certificate_lifetime`).
    pub fn new(authority: Arc<Authority>, replica: &str, lifetime: Duration) -> Certifier {
        Certifier {
            authority,
            key: Arc::new(session_key()),
            replica: replica.to_owned(),
            lifetime,
        }
    }

    /// The user CA whose certificates machines accept.
    pub fn user_ca(&self) -> &PublicKey {
        self.authority.user_public()
    }

    /// The host CA whose certificates prove machines' host keys.
    pub fn host_ca(&self) -> &PublicKey {
        self.authority.host_public()
    }

    /// A certificate to log in as `login` for `purpose`, signed now.
    pub fn certify(&self, login: &str, purpose: &Purpose) -> Result<Certified, Error> {
        let grant = user_grant(&self.replica, login, purpose, self.lifetime);
        let now = SystemTime::now();
        let certificate = self
            .authority
            .sign_user(self.key.public_key(), &grant, now)?;
        Ok(Certified {
            key: self.key.clone(),
            certificate,
        })
    }
}

impl std::fmt::Debug for Certifier {
    // Never the keys: the CA's fingerprint says which one signs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user_ca = self.authority.user_public().fingerprint(Default::default());
        f.debug_struct("Certifier")
            .field("user_ca", &user_ca.to_string())
            .field("replica", &self.replica)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The two signing keys.
pub struct Authority {
    user: PrivateKey,
    host: PrivateKey,
}

impl Authority {
    /// The authority whose keys are in `dir` (the data dir's `ca/`), each
    /// created (0600, in a 0700 directory) when absent.
    pub fn open(dir: &Path) -> Result<Authority, Error> {
        Ok(Authority {
            user: load_or_create(&dir.join("user_ca"), "linkops user CA")?,
            host: load_or_create(&dir.join("host_ca"), "linkops host CA")?,
        })
    }

    /// What machines trust to accept the daemon's logins (`TrustedUserCAKeys`).
    pub fn user_public(&self) -> &PublicKey {
        self.user.public_key()
    }

    /// A fingerprint of the user CA, for replicas to check they share it: the
    /// first 64 bits of its SHA-256 fingerprint (of the public half).
    pub fn user_ca_check(&self) -> u64 {
        let fingerprint = self.user_public().fingerprint(Default::default());
        let digest = fingerprint.as_bytes();
        u64::from_be_bytes(
            digest[..8]
                .try_into()
                .expect("a SHA-256 digest has 8 bytes"),
        )
    }

    /// What the daemon trusts for machines' host certificates.
    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }

    /// A user certificate for `subject` as `grant` says, valid from `now`.
    pub fn sign_user(
        &self,
        subject: &PublicKey,
        grant: &UserGrant,
        now: SystemTime,
    ) -> Result<Certificate, Error> {
        let signing = Signing {
            cert_type: CertType::User,
            key_id: &grant.key_id,
            principals: &grant.principals,
            valid_for: grant.valid_for,
            pty: grant.pty,
        };
        signing.sign(subject, now, &self.user)
    }

    /// A host certificate for a machine's host key `subject`, as `grant` says,
    /// valid from `now`.
    pub fn sign_host(
        &self,
        subject: &PublicKey,
        grant: &HostGrant,
        now: SystemTime,
    ) -> Result<Certificate, Error> {
        let signing = Signing {
            cert_type: CertType::Host,
            key_id: &grant.key_id,
            principals: &grant.principals,
            valid_for: grant.valid_for,
            pty: false,
        };
        signing.sign(subject, now, &self.host)
    }
}

/// What goes in a certificate, user or host.
struct Signing<'a> {
    cert_type: CertType,
    key_id: &'a str,
    principals: &'a [String],
    valid_for: Duration,
    pty: bool,
}

impl Signing<'_> {
    /// Signs with `ca`, valid from `now`, with a random serial (unique
    /// without coordination between replicas).
    fn sign(
        &self,
        subject: &PublicKey,
        now: SystemTime,
        ca: &PrivateKey,
    ) -> Result<Certificate, Error> {
        let failed = |source| Error::Sign {
            key_id: self.key_id.to_owned(),
            source,
        };
        let seconds = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let (after, before) = validity(seconds, self.valid_for);
        let mut rng = rand::rng();
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let mut builder =
            Builder::new(nonce, subject.key_data().clone(), after, before).map_err(failed)?;
        builder
            .serial(rng.next_u64().max(1))
            .and_then(|b| b.cert_type(self.cert_type))
            .and_then(|b| b.key_id(self.key_id))
            .map_err(failed)?;
        for principal in self.principals {
            builder
                .valid_principal(principal.as_str())
                .map_err(failed)?;
        }
        if self.pty {
            builder.extension("permit-pty", "").map_err(failed)?;
        }
        builder.sign(ca).map_err(failed)
    }
}

/// A machine's host certificate file (`text`, an OpenSSH line) as `host_ca`
/// judges it for `host_key`: `None` when it is no certificate at all.
pub fn examine_host_certificate(
    text: &str,
    host_ca: &PublicKey,
    host_key: &PublicKey,
) -> Option<FoundCertificate> {
    let certificate = Certificate::from_openssh(text.trim()).ok()?;
    let ours = certificate.cert_type() == CertType::Host
        && certificate.signature_key() == host_ca.key_data()
        && certificate.public_key() == host_key.key_data()
        && certificate.verify_signature().is_ok();
    Some(FoundCertificate {
        ours,
        principals: certificate.valid_principals().to_vec(),
        valid_before: certificate.valid_before(),
    })
}

/// A new ed25519 key that lives in memory only: what the daemon's
/// certificates are signed for, so no key that opens the fleet is on disk.
pub fn session_key() -> PrivateKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// The ed25519 key at `path`, or a new one written there (create-new: two
/// replicas starting at once on one data dir never both write it).
fn load_or_create(path: &Path, comment: &str) -> Result<PrivateKey, Error> {
    if path.exists() {
        return super::load_private_key(path).map_err(|error| Error::Key {
            path: path.to_owned(),
            reason: error.to_string(),
        });
    }
    let created = |source| Error::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(created)?;
    }
    let mut key = session_key();
    key.set_comment(comment);
    let text = key.to_openssh(LineEnding::LF).map_err(|error| Error::Key {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(created)?;
    file.write_all(text.as_bytes()).map_err(created)?;
    file.sync_all().map_err(created)?;
    // The public half beside it, for machines' `TrustedUserCAKeys` (readable by all).
    let public = key.public_key().to_openssh().map_err(|error| Error::Key {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    std::fs::write(path.with_extension("pub"), format!("{public}\n")).map_err(created)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keys_are_created_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let first = Authority::open(&ca).unwrap();
        for name in ["user_ca", "host_ca"] {
            let mode = std::fs::metadata(ca.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let mode = std::fs::metadata(&ca).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_ne!(first.user_public(), first.host_public());
        let public = std::fs::read_to_string(ca.join("user_ca.pub")).unwrap();
        assert_eq!(
            public.trim(),
            first.user_public().to_openssh().unwrap(),
            "the public half beside it"
        );
        let again = Authority::open(&ca).unwrap();
        assert_eq!(first.user_public(), again.user_public());
        assert_eq!(first.host_public(), again.host_public());
    }

    #[test]
    fn a_user_certificate_says_what_its_grant_says_and_checks_against_the_user_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open(dir.path()).unwrap();
        let subject = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
        let purpose = Purpose::Terminal {
            workspace: "w1".into(),
            user: "bob".into(),
        };
        let grant = user_grant("r1", "root", &purpose, Duration::from_secs(300));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let certificate = ca.sign_user(subject.public_key(), &grant, now).unwrap();
        assert_eq!(certificate.cert_type(), CertType::User);
        assert_eq!(certificate.key_id(), "linkops:r1:terminal:w1:bob");
        assert_eq!(certificate.valid_principals(), ["root"]);
        assert_eq!(
            (certificate.valid_after(), certificate.valid_before()),
            (1_999_999_940, 2_000_000_300)
        );
        assert!(certificate.extensions().contains_key("permit-pty"));
        assert_eq!(certificate.public_key(), subject.public_key().key_data());
        let user_ca = ca.user_public().fingerprint(Default::default());
        certificate.validate_at(2_000_000_000, [&user_ca]).unwrap();
        let host_ca = ca.host_public().fingerprint(Default::default());
        assert!(certificate.validate_at(2_000_000_000, [&host_ca]).is_err());
        assert!(certificate.validate_at(2_000_000_301, [&user_ca]).is_err());
        // Serials differ, so each login is told apart in the machine's log.
        let other = ca.sign_user(subject.public_key(), &grant, now).unwrap();
        assert_ne!(certificate.serial(), other.serial());
    }
}
