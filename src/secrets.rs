//! Files that hold secrets: private SSH keys and the JWT signing secret; and
//! the one place that takes the daemon's secrets out of text that came from
//! outside ([`Redactor`]).
//!
//! A secret file readable by anyone but its owner is refused — the error says
//! which file and the `chmod` that fixes it — rather than silently used.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} has mode {mode:04o}, but secret files must not be readable by group or others: run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write secret file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is empty")]
    Empty { path: PathBuf },
}

/// Refuses a secret file whose mode grants any access to group or others.
pub fn check_private(path: &Path) -> Result<(), Error> {
    let metadata = fs::metadata(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads a secret file after checking its mode.
pub fn read_private(path: &Path) -> Result<String, Error> {
    check_private(path)?;
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    Ok(secret)
}

/// Reads the secret at `path`, or creates it (mode 0600, 32 random bytes, hex) when absent.
pub fn load_or_generate(path: &Path) -> Result<String, Error> {
    if path.exists() {
        return read_private(path);
    }
    let secret = random_hex(32);
    let write_err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(write_err)?;
    }
    // create_new: two daemons starting at once must not both write a secret.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    file.write_all(secret.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(secret)
}

/// `bytes` random bytes from the OS generator, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// What stands for a secret in redacted text.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are not looked for: they would mangle ordinary
/// words, and a secret that short is no secret.
const SHORTEST_REDACTED: usize = 4;

/// Takes every secret the daemon holds out of text that came from outside —
/// a forge's or sink's answer, an HTTP client's error — before it is stored,
/// shown or logged: an endpoint (a proxy, a gateway, a debug page) that echoes
/// a request's `Authorization` header or URL must not hand the forge token to
/// a viewer. Each secret is looked for as sent, JSON-escaped and
/// percent-encoded; a URL that is secret (a Slack or ntfy URL) also by its
/// path, which is what servers echo.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Every form to look for, longest first (a secret containing another is
    /// replaced whole).
    forms: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} forms)", self.forms.len())
    }
}

impl Redactor {
    /// The secrets the configuration holds itself: the webhook's shared
    /// secret, the signing key when set there, the Git URL's credentials. The
    /// forge's and sinks' are added as they are read.
    pub fn of_config(config: &crate::config::Config) -> Redactor {
        use secrecy::ExposeSecret;
        let held = [&config.webhook.secret, &config.auth.jwt_secret];
        let mut redactor = Redactor::default();
        for secret in held.into_iter().flatten() {
            redactor = redactor.secret(secret.expose_secret());
        }
        let credentials = config.git.url.iter().flat_map(|url| url.credentials());
        credentials.fold(redactor, |redactor, secret| redactor.secret(&secret))
    }

    /// Adds a secret (a token, a shared secret, a password).
    pub fn secret(mut self, secret: &str) -> Redactor {
        let json = serde_json::to_string(secret).unwrap_or_default();
        let json = json.trim_matches('"').to_owned();
        let escaped_slashes = json.replace('/', "\\/");
        let percent = serde_urlencoded::to_string([("", secret)]).unwrap_or_default();
        let percent = percent.trim_start_matches('=').to_owned();
        for form in [secret.to_owned(), json, escaped_slashes, percent] {
            if form.len() >= SHORTEST_REDACTED && !self.forms.contains(&form) {
                self.forms.push(form);
            }
        }
        self.forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        self
    }

    /// Adds a URL that is a secret as a whole (a Slack webhook, an ntfy topic):
    /// the URL and its path and query.
    pub fn secret_url(self, url: &str) -> Redactor {
        let path = reqwest::Url::parse(url).ok().map(|url| {
            let mut path = url.path().to_owned();
            if let Some(query) = url.query() {
                path = format!("{path}?{query}");
            }
            path
        });
        let redactor = self.secret(url);
        match path.filter(|path| path.trim_matches('/').len() >= SHORTEST_REDACTED) {
            Some(path) => redactor.secret(&path),
            None => redactor,
        }
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for form in &self.forms {
            if text.contains(form.as_str()) {
                text = text.replace(form.as_str(), REDACTED);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_secret_is_redacted_and_nothing_else() {
        let redactor = Redactor::default()
            .secret("tok/en+secret 42")
            .secret("abc")
            .secret_url("https://hooks.slack.example/services/T0/B0/hunter2?x=1");
        let cases = [
            (
                "Authorization: token tok/en+secret 42",
                "Authorization: token [redacted]",
            ),
            (
                r#"{"auth":"token tok\/en+secret 42"}"#,
                r#"{"auth":"token [redacted]"}"#,
            ),
            ("?t=tok%2Fen%2Bsecret+42", "?t=[redacted]"),
            (
                "POST https://hooks.slack.example/services/T0/B0/hunter2?x=1: 404",
                "POST [redacted]: 404",
            ),
            (
                "no route /services/T0/B0/hunter2?x=1",
                "no route [redacted]",
            ),
            // Too short to look for: ordinary text stays whole.
            ("abc and abcdef", "abc and abcdef"),
        ];
        for (text, redacted) in cases {
            assert_eq!(redactor.redact(text), redacted, "{text}");
        }
    }

    #[test]
    fn generated_secret_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_secret");
        let first = load_or_generate(&path).unwrap();
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_generate(&path).unwrap(), first);
    }

    #[test]
    fn group_readable_secret_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        fs::write(&path, "key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_private(&path).unwrap_err().to_string();
        assert!(err.contains("0640"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_private(&path).unwrap(), "key");
    }
}
