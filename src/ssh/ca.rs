//! The SSH certificate authority: the user CA and the host CA (ed25519),
//! created at first start in the data dir (`ca/user_ca`, `ca/host_ca`, 0600,
//! OpenSSH's format, so `ssh-keygen -s` can use them too; their public halves
//! beside them as `.pub`) or read where `[ssh] user_ca_key`/`host_ca_key`
//! point, and the short-lived user certificates they sign for the daemon's
//! own connections.
//!
//! The user CA rotates with an overlap: [`Authority::begin_rotation`] makes
//! the next key (`user_ca.next` beside the user CA's), trusted beside the
//! current one while the machines' trust state rolls it out;
//! [`Authority::finish_rotation`] makes it the one that signs, and the old
//! one is gone from the daemon's disk.
//!
//! What a certificate grants is decided in `linkops_reconcilers::certificate`;
//! this module holds the keys and signs. (It is SSH's: only `src/ssh` speaks
//! russh and its key formats.)

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
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
    #[error(
        "no rotation of the user CA is under way: begin one with `linkops ca rotate` (it makes {next})"
    )]
    NoRotation { next: PathBuf },
    #[error(
        "cannot make {next} the user CA: {source} (the user CA's directory must be writable to rotate)"
    )]
    Rotate {
        next: PathBuf,
        source: std::io::Error,
    },
}

/// Signs the daemon's logins: certificates for one in-memory key, each for
/// a login and a purpose, valid for minutes.
pub struct Certifier {
    authority: Arc<Authority>,
    key: Arc<PrivateKey>,
    replica: String,
    lifetime: Duration,
    /// `[ssh] certificate_source_address`.
    source_address: bool,
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
            source_address: false,
        }
    }

    /// Binds each certificate to the address its connection leaves from
    /// (`source-address`): good only when machines see that address, with
    /// no NAT between (`[ssh] certificate_source_address`).
    pub fn binding_source_address(self, bind: bool) -> Certifier {
        Certifier {
            source_address: bind,
            ..self
        }
    }

    /// The authority that signs.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// The host CA whose certificates prove machines' host keys.
    pub fn host_ca(&self) -> &PublicKey {
        self.authority.host_public()
    }

    /// A certificate to log in as `login` for `purpose` over a connection
    /// from the address `from`, signed now.
    pub fn certify(
        &self,
        login: &str,
        purpose: &Purpose,
        from: std::net::IpAddr,
    ) -> Result<Certified, Error> {
        let grant = UserGrant {
            source_address: self.source_address.then(|| from.to_string()),
            ..user_grant(&self.replica, login, purpose, self.lifetime)
        };
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
            .field("source_address", &self.source_address)
            .finish()
    }
}

/// The two signing keys, and the next user CA while one rotates in.
pub struct Authority {
    user_path: PathBuf,
    user: RwLock<Arc<UserCas>>,
    host: PrivateKey,
}

/// The user CA that signs (since when), and the one rotating in.
struct UserCas {
    signing: PrivateKey,
    since: Option<SystemTime>,
    next: Option<PrivateKey>,
    /// Both public halves as machines trust them, an OpenSSH line each: told
    /// to every script, so made once per change, not per command.
    trusted: String,
}

impl UserCas {
    fn new(signing: PrivateKey, since: Option<SystemTime>, next: Option<PrivateKey>) -> UserCas {
        let trusted = std::iter::once(&signing)
            .chain(&next)
            .map(|key| format!("{}\n", key.public_key().to_openssh().unwrap_or_default()))
            .collect();
        UserCas {
            signing,
            since,
            next,
            trusted,
        }
    }
}

impl Authority {
    /// The authority whose keys are in `dir` (the data dir's `ca/`), each
    /// created (0600, in a 0700 directory) when absent.
    pub fn open(dir: &Path) -> Result<Authority, Error> {
        Authority::open_keys(&dir.join("user_ca"), &dir.join("host_ca"))
    }

    /// The authority whose user CA key is `user_path` (and the next one beside
    /// it, `<user_path>.next`, while a rotation is under way) and whose host
    /// CA key is `host_path`, each created when absent.
    pub fn open_keys(user_path: &Path, host_path: &Path) -> Result<Authority, Error> {
        Ok(Authority {
            user: RwLock::new(Arc::new(read_user_cas(user_path)?)),
            user_path: user_path.to_owned(),
            host: load_or_create(host_path, "linkops host CA")?,
        })
    }

    fn user_cas(&self) -> Arc<UserCas> {
        self.user
            .read()
            .expect("never poisoned: no panic holds it")
            .clone()
    }

    /// The user CA that signs the daemon's logins.
    pub fn user_public(&self) -> PublicKey {
        self.user_cas().signing.public_key().clone()
    }

    /// The user CA rotating in, trusted beside the current one (not signing yet).
    pub fn next_user_public(&self) -> Option<PublicKey> {
        self.user_cas()
            .next
            .as_ref()
            .map(|key| key.public_key().clone())
    }

    /// What machines trust to accept the daemon's logins (`TrustedUserCAKeys`):
    /// the user CA, and the next one while a rotation is under way.
    #[cfg(test)]
    fn trusted_user_cas(&self) -> Vec<PublicKey> {
        let cas = self.user_cas();
        std::iter::once(&cas.signing)
            .chain(&cas.next)
            .map(|key| key.public_key().clone())
            .collect()
    }

    /// What machines trust to accept the daemon's logins, as their
    /// `TrustedUserCAKeys` file holds it: the user CA, and the next one while
    /// a rotation is under way, an OpenSSH line each.
    pub fn trusted_user_ca_lines(&self) -> String {
        self.user_cas().trusted.clone()
    }

    /// A fingerprint of the user CA, for replicas to check they share it: the
    /// first 64 bits of its SHA-256 fingerprint (of the public half).
    pub fn user_ca_check(&self) -> u64 {
        key_check(&self.user_public())
    }

    /// The same of the user CA rotating in; 0 when none is.
    pub fn next_user_ca_check(&self) -> u64 {
        self.next_user_public().as_ref().map_or(0, key_check)
    }

    /// When the signing user CA became the one that signs (its key file's
    /// modification time as read: made, or rotated in).
    pub fn user_ca_since(&self) -> Option<SystemTime> {
        self.user_cas().since
    }

    /// Begins a rotation of the user CA: the next key is read from
    /// `<user CA key>.next` (one the operator made there) or made there
    /// (blocking file I/O). Both are trusted from now on; the current one
    /// still signs. Under way already: the same next key.
    pub fn begin_rotation(&self) -> Result<PublicKey, Error> {
        let mut user = self
            .user
            .write()
            .expect("never poisoned: no panic holds it");
        if let Some(next) = &user.next {
            return Ok(next.public_key().clone());
        }
        let next = load_or_create(&self.next_user_path(), "linkops user CA")?;
        let public = next.public_key().clone();
        *user = Arc::new(UserCas::new(user.signing.clone(), user.since, Some(next)));
        Ok(public)
    }

    /// Finishes the rotation: the next user CA signs from now on and replaces
    /// the old one's key file (the old key is gone). The machines' trust
    /// state then stops trusting the old one.
    pub fn finish_rotation(&self) -> Result<PublicKey, Error> {
        let mut user = self
            .user
            .write()
            .expect("never poisoned: no panic holds it");
        let next_path = self.next_user_path();
        let Some(next) = user.next.clone() else {
            return Err(Error::NoRotation { next: next_path });
        };
        let failed = |source| Error::Rotate {
            next: next_path.clone(),
            source,
        };
        // Rotated in now: its age counts from here.
        let now = SystemTime::now();
        std::fs::File::options()
            .write(true)
            .open(&next_path)
            .and_then(|file| file.set_modified(now))
            .map_err(failed)?;
        // The private key's rename is the step (atomic): a crash before it
        // leaves the rotation under way, after it finished; the public half
        // beside it is for operators and follows.
        std::fs::rename(&next_path, &self.user_path).map_err(failed)?;
        std::fs::rename(public_path(&next_path), public_path(&self.user_path)).map_err(failed)?;
        let public = next.public_key().clone();
        *user = Arc::new(UserCas::new(next, Some(now), None));
        Ok(public)
    }

    /// Reads the user CA keys again: another replica began or finished a
    /// rotation (the operator put the next key beside this one's too).
    pub fn reload_user_cas(&self) -> Result<(), Error> {
        let read = read_user_cas(&self.user_path)?;
        *self
            .user
            .write()
            .expect("never poisoned: no panic holds it") = Arc::new(read);
        Ok(())
    }

    /// The user CA's key file.
    pub fn user_ca_path(&self) -> &Path {
        &self.user_path
    }

    /// Where the next user CA key is kept while it rotates in.
    pub fn next_user_path(&self) -> PathBuf {
        next_path(&self.user_path)
    }

    /// What the daemon trusts for machines' host certificates.
    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }

    /// A user certificate for `subject` as `grant` says, valid from `now`,
    /// signed by the current user CA.
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
            source_address: grant.source_address.as_deref(),
        };
        signing.sign(subject, now, &self.user_cas().signing)
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
            source_address: None,
        };
        signing.sign(subject, now, &self.host)
    }
}

/// The first 64 bits of a key's SHA-256 fingerprint.
fn key_check(key: &PublicKey) -> u64 {
    let fingerprint = key.fingerprint(Default::default());
    let digest = fingerprint.as_bytes();
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 8 bytes"),
    )
}

/// The user CA at `path` (made when absent) and the next one beside it, if any.
fn read_user_cas(path: &Path) -> Result<UserCas, Error> {
    let next = next_path(path);
    let signing = load_or_create(path, "linkops user CA")?;
    let since = std::fs::metadata(path)
        .and_then(|metadata| metadata.modified())
        .ok();
    let next = match next.exists() {
        true => Some(load_or_create(&next, "linkops user CA")?),
        false => None,
    };
    Ok(UserCas::new(signing, since, next))
}

/// Where the next user CA rotates in beside the current one: `<path>.next`.
fn next_path(user_path: &Path) -> PathBuf {
    with_suffix(user_path, ".next")
}

/// A key's public half beside it: `<path>.pub`.
fn public_path(path: &Path) -> PathBuf {
    with_suffix(path, ".pub")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut named = path.as_os_str().to_owned();
    named.push(suffix);
    PathBuf::from(named)
}

/// What goes in a certificate, user or host.
struct Signing<'a> {
    cert_type: CertType,
    key_id: &'a str,
    principals: &'a [String],
    valid_for: Duration,
    pty: bool,
    source_address: Option<&'a str>,
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
        if let Some(address) = self.source_address {
            builder
                .critical_option("source-address", address)
                .map_err(failed)?;
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
    std::fs::write(public_path(path), format!("{public}\n")).map_err(created)?;
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
        assert_ne!(&first.user_public(), first.host_public());
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

    /// Both CAs trusted while the next one rolls out, the old one signing;
    /// then the next one signs, in the old one's file, and the old key is
    /// gone. A daemon opening the directory midway sees the same rotation.
    #[test]
    fn the_user_ca_rotates_with_an_overlap_and_the_old_key_is_gone_after() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open(dir.path()).unwrap();
        let old = ca.user_public();
        assert!(matches!(
            ca.finish_rotation(),
            Err(Error::NoRotation { .. })
        ));
        assert_eq!(ca.next_user_ca_check(), 0);

        let next = ca.begin_rotation().unwrap();
        assert_ne!(next, old);
        assert_eq!(ca.begin_rotation().unwrap(), next, "under way: the same");
        assert_eq!(ca.trusted_user_cas(), [old.clone(), next.clone()]);
        assert_eq!(ca.user_public(), old, "the old one still signs");
        let mode = std::fs::metadata(dir.path().join("user_ca.next"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let reopened = Authority::open(dir.path()).unwrap();
        assert_eq!(reopened.trusted_user_cas(), ca.trusted_user_cas());
        assert_eq!(reopened.next_user_ca_check(), key_check(&next));

        assert_eq!(ca.finish_rotation().unwrap(), next);
        assert_eq!(ca.trusted_user_cas(), std::slice::from_ref(&next));
        let grant = user_grant("r1", "root", &Purpose::Health, Duration::from_secs(60));
        let subject = session_key();
        let now = SystemTime::now();
        let signed = ca.sign_user(subject.public_key(), &grant, now).unwrap();
        assert_eq!(signed.signature_key(), next.key_data());
        assert!(!dir.path().join("user_ca.next").exists());
        assert!(!dir.path().join("user_ca.next.pub").exists());
        let public = std::fs::read_to_string(dir.path().join("user_ca.pub")).unwrap();
        assert_eq!(public.trim(), next.to_openssh().unwrap());
        // The other daemon reads the finished rotation again.
        reopened.reload_user_cas().unwrap();
        assert_eq!(reopened.trusted_user_cas(), [next]);
        assert!(
            !std::fs::read_dir(dir.path())
                .unwrap()
                .map(|entry| super::super::load_private_key(&entry.unwrap().path()))
                .any(|key| key.is_ok_and(|key| key.public_key() == &old)),
            "the old user CA's key is on disk no more"
        );
    }

    /// Bound, a certificate names the address its connection leaves from;
    /// unbound (the default), none.
    #[test]
    fn a_certifier_binds_certificates_to_the_connection_s_address_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Arc::new(Authority::open(dir.path()).unwrap());
        let from: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let lifetime = Duration::from_secs(60);
        let unbound = Certifier::new(authority.clone(), "r1", lifetime);
        let signed = unbound.certify("root", &Purpose::Health, from).unwrap();
        assert!(signed.certificate.critical_options().is_empty());
        let bound = Certifier::new(authority, "r1", lifetime).binding_source_address(true);
        let signed = bound.certify("root", &Purpose::Health, from).unwrap();
        let options = signed.certificate.critical_options();
        assert_eq!(
            options.get("source-address").map(String::as_str),
            Some("192.0.2.7")
        );
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
