//! A real, certified OpenID provider: npm's `oidc-provider`, run by node
//! from `tests/oidc-provider/provider.mjs` on a loopback port, with the
//! clients and accounts a test chooses. The accounts are a file the provider
//! reads at every lookup, so a test changes someone's groups by setting them
//! again. What it logs goes to `provider.log` beside them. The provider stops
//! when this is dropped (its standard input closes, and it is killed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the OpenID provider's packages are not installed: run `npm --prefix {0} ci` (cargo xtask test does)"
    )]
    NotInstalled(PathBuf),
    #[error("cannot start the OpenID provider (node {script}): {source}")]
    Start {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("the OpenID provider did not say where it serves: {0}")]
    NoIssuer(String),
    #[error("cannot write the OpenID provider's settings {path}: {source}")]
    Settings {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A client registered at the provider.
#[derive(Debug, Clone)]
pub struct OidcClient {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
}

/// A person the provider signs in: the id they type at its form, the user
/// name it vouches for and their groups.
#[derive(Debug, Clone)]
pub struct OidcAccount {
    pub id: String,
    pub username: String,
    pub groups: Vec<String>,
}

/// The running provider.
pub struct OidcProvider {
    /// `http://127.0.0.1:<port>`
    pub issuer: String,
    settings: PathBuf,
    clients: Vec<OidcClient>,
    child: Child,
    /// Held open: the provider exits when it closes.
    _stdin: ChildStdin,
    /// Held open too: a write to a closed pipe would end the provider.
    _stdout: BufReader<std::process::ChildStdout>,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    pub fn start(clients: &[OidcClient], accounts: &[OidcAccount]) -> Result<OidcProvider, Error> {
        let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../oidc-provider");
        if !package.join("node_modules/oidc-provider").is_dir() {
            return Err(Error::NotInstalled(package));
        }
        let dir = tempfile::tempdir().map_err(|source| Error::Settings {
            path: std::env::temp_dir(),
            source,
        })?;
        let settings = dir.path().join("settings.json");
        write_settings(&settings, clients, accounts)?;
        let script = package.join("provider.mjs");
        // What it says of itself (warnings, refusals) goes to a log beside its settings.
        let log = dir.path().join("provider.log");
        let log =
            std::fs::File::create(&log).map_err(|source| Error::Settings { path: log, source })?;
        let mut child = Command::new("node")
            .arg(&script)
            .arg(&settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|source| Error::Start {
                script: script.clone(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .map_err(|source| Error::Start { script, source })?;
        let issuer = serde_json::from_str::<serde_json::Value>(&first)
            .ok()
            .and_then(|said| said["issuer"].as_str().map(str::to_owned))
            .ok_or_else(|| Error::NoIssuer(first.clone()))?;
        Ok(OidcProvider {
            issuer,
            settings,
            clients: clients.to_vec(),
            child,
            _stdin: stdin,
            _stdout: stdout,
            _dir: dir,
        })
    }

    /// The people it signs in from now on (their groups as of their next sign-in).
    pub fn set_accounts(&self, accounts: &[OidcAccount]) -> Result<(), Error> {
        write_settings(&self.settings, &self.clients, accounts)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Written whole, then renamed: the provider never reads half a file.
fn write_settings(
    path: &Path,
    clients: &[OidcClient],
    accounts: &[OidcAccount],
) -> Result<(), Error> {
    let clients: Vec<_> = clients
        .iter()
        .map(|client| {
            json!({
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "redirect_uris": [client.redirect_uri],
            })
        })
        .collect();
    let accounts: serde_json::Map<String, serde_json::Value> = accounts
        .iter()
        .map(|account| {
            let entry = json!({"username": account.username, "groups": account.groups});
            (account.id.clone(), entry)
        })
        .collect();
    let text = json!({"clients": clients, "accounts": accounts}).to_string();
    let written = path.with_extension("new");
    std::fs::write(&written, text)
        .and_then(|()| std::fs::rename(&written, path))
        .map_err(|source| Error::Settings {
            path: path.to_owned(),
            source,
        })
}
