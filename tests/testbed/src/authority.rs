//! A certificate authority for replicas' mutual TLS, made with the `openssl`
//! CLI: the same commands `docs/security.md` gives operators.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Error, Result, run};

/// The authority's certificate and key, and the certificates it issued, in one directory.
pub struct TestAuthority {
    dir: PathBuf,
    name: String,
}

/// An elliptic-curve key (P-256), unencrypted, valid two days.
const NEW_KEY: [&str; 8] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-noenc",
    "-days",
    "2",
    "-x509",
];

impl TestAuthority {
    /// A new authority `name` in `dir`: `NAME-ca.crt` and `NAME-ca.key`.
    pub fn new(dir: &Path, name: &str) -> Result<TestAuthority> {
        let authority = TestAuthority {
            dir: dir.to_owned(),
            name: name.to_owned(),
        };
        run(new_key(
            &authority.key(),
            &authority.certificate(),
            &format!("/CN={name} replicas"),
        )?
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]))?;
        Ok(authority)
    }

    /// The authority's certificate (what `[cluster] tls_ca` names).
    pub fn certificate(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.crt", self.name))
    }

    fn key(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.key", self.name))
    }

    /// A certificate for replica `name` reached at `names` (`IP:127.0.0.1`,
    /// `DNS:linkops-1.example`), good for serving and connecting: the paths
    /// of `NAME.crt` and `NAME.key` (mode 0600).
    pub fn issue(&self, name: &str, names: &str) -> Result<(PathBuf, PathBuf)> {
        let certificate = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        run(new_key(&key, &certificate, &format!("/CN={name}"))?
            .arg("-CA")
            .arg(self.certificate())
            .arg("-CAkey")
            .arg(self.key())
            .args(["-addext", &format!("subjectAltName={names}")])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth,clientAuth"]))?;
        Ok((certificate, key))
    }
}

/// `openssl req` making a key at `key` and a certificate of `subject` at `certificate`.
fn new_key(key: &Path, certificate: &Path, subject: &str) -> Result<Command> {
    let mut command = Command::new(openssl()?);
    command
        .arg("req")
        .args(NEW_KEY)
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(certificate)
        .args(["-subj", subject]);
    Ok(command)
}

fn openssl() -> Result<&'static str> {
    const OPENSSL: &str = "/usr/bin/openssl";
    match Path::new(OPENSSL).exists() {
        true => Ok(OPENSSL),
        false => Err(Error::Missing {
            program: OPENSSL,
            fix: "apt-get install -y openssl",
        }),
    }
}
