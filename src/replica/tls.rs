//! Mutual TLS between replicas: what one replica forwards to another (a
//! terminal workspace's requests and socket: bearer tokens, keystrokes,
//! output) travels encrypted, to an address of its own (`[cluster] listen`)
//! where only a replica with a certificate from the replicas' authority
//! (`tls_ca`) is served, and a replica answers there only with a
//! certificate from that authority naming the address it is reached at.
//!
//! TLS 1.3 only, with the same cryptography provider as the rest of the
//! daemon (aws-lc-rs). The files are read once at start: a renewed
//! certificate takes effect at the replica's next restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("[cluster] {setting} = {path}: {source}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("[cluster] {setting} = {path} holds no PEM certificate")]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("[cluster] tls_key: {0}")]
    KeyFile(#[from] crate::secrets::Error),
    #[error("[cluster] tls_ca = {path}: {source}")]
    Authority {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("[cluster] tls_ca: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(
        "[cluster] tls_certificate and tls_key do not make a TLS identity (is the key the certificate's?): {0}"
    )]
    Identity(rustls::Error),
}

/// The TLS of one replica: serving the others, and reaching them.
#[derive(Clone)]
pub struct ReplicaTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for ReplicaTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ReplicaTls")
    }
}

impl ReplicaTls {
    /// From this replica's certificate chain, its key (mode 0600) and the
    /// replicas' authority, PEM files all.
    pub fn load(certificate: &Path, key: &Path, ca: &Path) -> Result<ReplicaTls, Error> {
        let chain = certificates("tls_certificate", certificate)?;
        crate::secrets::check_private(key)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| Error::Read {
            setting: "tls_key",
            path: key.to_owned(),
            source,
        })?;
        let mut authority = RootCertStore::empty();
        for certificate in certificates("tls_ca", ca)? {
            authority
                .add(certificate)
                .map_err(|source| Error::Authority {
                    path: ca.to_owned(),
                    source,
                })?;
        }
        let authority = Arc::new(authority);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let only_tls13 = [&rustls::version::TLS13];

        let verifier =
            WebPkiClientVerifier::builder_with_provider(authority.clone(), provider.clone())
                .build()?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&only_tls13)
            .map_err(Error::Identity)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(Error::Identity)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&only_tls13)
            .map_err(Error::Identity)?
            .with_root_certificates(authority)
            .with_client_auth_cert(chain, key)
            .map_err(Error::Identity)?;
        Ok(ReplicaTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The handshake of a replica that connected: refused without a
    /// certificate from the authority.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }

    /// The handshake with the replica reached at `address` (`HOST:PORT`, as
    /// it advertises itself): its certificate must be the authority's and
    /// name `HOST`.
    pub async fn connect(
        &self,
        address: &str,
        stream: TcpStream,
    ) -> io::Result<client::TlsStream<TcpStream>> {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is no name a certificate can hold"),
            )
        })?;
        self.connector.connect(name, stream).await
    }
}

/// Every certificate of the PEM file at `path`, at least one.
fn certificates(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let read = |source| Error::Read {
        setting,
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    match chain.is_empty() {
        true => Err(Error::NoCertificate {
            setting,
            path: path.to_owned(),
        }),
        false => Ok(chain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testbed::TestAuthority;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn load(authority: &TestAuthority, name: &str) -> ReplicaTls {
        let (certificate, key) = authority.issue(name, "IP:127.0.0.1").unwrap();
        ReplicaTls::load(&certificate, &key, &authority.certificate()).unwrap()
    }

    /// A server of `tls` on loopback that answers "ok" to what it accepts;
    /// whether `client` got that through.
    async fn handshake(server: ReplicaTls, client: &ReplicaTls, name: &str) -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let serving = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let mut stream = server.accept(stream).await?;
            stream.write_all(b"ok").await?;
            stream.shutdown().await
        });
        let stream = TcpStream::connect(address).await?;
        let connected = async {
            let address = format!("{name}:{}", address.port());
            let mut stream = client.connect(&address, stream).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            match answer == b"ok" {
                true => Ok(()),
                false => Err(io::Error::other("no answer")),
            }
        }
        .await;
        let served = serving.await.unwrap();
        connected.and(served)
    }

    #[tokio::test]
    async fn replicas_of_one_authority_reach_each_other_and_no_one_else() {
        let dir = tempfile::tempdir().unwrap();
        let ours = TestAuthority::new(dir.path(), "ours").unwrap();
        let theirs = TestAuthority::new(dir.path(), "theirs").unwrap();
        let (a, b) = (load(&ours, "a"), load(&ours, "b"));
        handshake(a.clone(), &b, "127.0.0.1").await.unwrap();

        // A client of another authority is refused, and a server of another
        // authority is not trusted.
        let stranger = load(&theirs, "stranger");
        assert!(handshake(a.clone(), &stranger, "127.0.0.1").await.is_err());
        assert!(handshake(stranger, &b, "127.0.0.1").await.is_err());
        // A certificate that does not name the address the replica is reached at.
        let refused = handshake(a, &b, "localhost").await.unwrap_err();
        assert!(refused.to_string().contains("certificate"), "{refused}");
    }

    #[test]
    fn files_that_make_no_identity_are_refused_naming_the_setting() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let authority = TestAuthority::new(dir.path(), "ours").unwrap();
        let (certificate, key) = authority.issue("a", "IP:127.0.0.1").unwrap();
        let (_, other_key) = authority.issue("b", "IP:127.0.0.1").unwrap();
        let ca = authority.certificate();

        let refused = ReplicaTls::load(&certificate, &other_key, &ca).unwrap_err();
        assert!(matches!(refused, Error::Identity(_)), "{refused}");
        let refused = ReplicaTls::load(&key, &key, &ca).unwrap_err().to_string();
        assert!(
            refused.contains("tls_certificate") && refused.contains("no PEM certificate"),
            "{refused}"
        );
        let refused = ReplicaTls::load(&certificate, &key, &dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("tls_ca"), "{refused}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = ReplicaTls::load(&certificate, &key, &ca)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
    }
}
