//! The secrets' files in an operator's checkout of the config repository:
//! `linkops secret set` (seal a value and write `secrets/<name>.yaml`),
//! `edit` (open it with the operator's identity, change it in `$EDITOR`,
//! seal it again) and `rotate` (seal every secret again to the recipients
//! `recipients.yaml` names now). Nothing here talks to the daemon.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use linkops_reconcilers::desired::{self, Problem, RECIPIENTS_FILE, SECRETS_DIR};
use linkops_reconcilers::script::Targets;
use linkops_reconcilers::secret::{MAX_SECRET_BYTES, Recipients, Secret};
use zeroize::Zeroizing;

use super::{Keyring, seal};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sealed(#[from] super::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
    #[error(
        "{checkout} has no recipients.yaml: list who can read secrets there first (`all:` with the daemon's recipient — `linkops secret recipient` on its host prints it — and yours)"
    )]
    NoRecipients { checkout: PathBuf },
    #[error("no secret {name:?}: there is no {path}")]
    NoSecret { name: String, path: PathBuf },
    #[error("invalid secret name {0:?}: use lower-case letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    #[error("the value is empty: nothing to seal")]
    Empty,
    #[error("the value is over {MAX_SECRET_BYTES} bytes, the most a secret may hold")]
    TooLong,
    #[error("the value holds a NUL byte, which no environment variable can carry")]
    Nul,
    #[error("the two values typed differ: nothing was written")]
    Mismatch,
    #[error("reading the value: {0}")]
    Input(std::io::Error),
    #[error("the editor {editor:?} failed ({status}): nothing was written")]
    Editor { editor: String, status: String },
}

/// How a secret may be used, as `linkops secret set` is told (each `None`:
/// kept as the file says, or none for a new secret).
#[derive(Debug, Default)]
pub struct Limits {
    pub description: Option<String>,
    pub scripts: Option<Vec<String>>,
    pub targets: Option<Targets>,
}

/// A checkout of the config repository.
pub struct Checkout {
    root: PathBuf,
}

impl Checkout {
    pub fn new(root: &Path) -> Checkout {
        Checkout {
            root: root.to_owned(),
        }
    }

    /// Seals `value` as secret `name` to the recipients its limits give, and
    /// writes its file (created, or its value and the limits given replaced).
    /// Returns the file written and how many recipients can read it.
    pub fn set(&self, name: &str, value: &[u8], limits: Limits) -> Result<(PathBuf, usize), Error> {
        if !desired::is_id(name) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        check_value(value)?;
        let mut secret = match self.secret(name) {
            Ok(secret) => secret,
            Err(Error::NoSecret { .. }) => Secret {
                name: name.to_owned(),
                description: String::new(),
                file: format!("{SECRETS_DIR}/{name}.yaml"),
                scripts: Vec::new(),
                targets: Targets::default(),
                sealed: String::new(),
            },
            Err(error) => return Err(error),
        };
        secret.description = limits.description.unwrap_or(secret.description);
        secret.scripts = limits.scripts.unwrap_or(secret.scripts);
        secret.targets = limits.targets.unwrap_or(secret.targets);
        self.write(secret, value)
    }

    /// Opens secret `name` with `keyring`, hands its value to `change` and,
    /// when it returns a different one, seals and writes that. Whether it changed.
    pub fn edit(
        &self,
        name: &str,
        keyring: &Keyring,
        change: impl FnOnce(&[u8]) -> Result<Zeroizing<Vec<u8>>, Error>,
    ) -> Result<bool, Error> {
        let secret = self.secret(name)?;
        let value = keyring.open(&secret)?;
        let changed = change(&value)?;
        if changed[..] == value[..] {
            return Ok(false);
        }
        check_value(&changed)?;
        self.write(secret, &changed)?;
        Ok(true)
    }

    /// Seals the secrets `names` (every one when empty) again, each to the
    /// recipients `recipients.yaml` gives it now, opened with `keyring`.
    /// Returns each secret rotated with its number of recipients.
    pub fn rotate(
        &self,
        names: &[String],
        keyring: &Keyring,
    ) -> Result<Vec<(String, usize)>, Error> {
        let names = match names.is_empty() {
            false => names.to_vec(),
            true => self.secret_names()?,
        };
        let mut rotated = Vec::new();
        for name in names {
            let secret = self.secret(&name)?;
            let value = keyring.open(&secret)?;
            let (_, recipients) = self.write(secret, &value)?;
            rotated.push((name, recipients));
        }
        Ok(rotated)
    }

    /// Seals `value` for `secret` and writes its file.
    fn write(&self, mut secret: Secret, value: &[u8]) -> Result<(PathBuf, usize), Error> {
        let recipients = self.recipients()?;
        let to = recipients.of(&secret);
        secret.sealed = seal(value, &to)?;
        let path = self.root.join(&secret.file);
        let write = |source| Error::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(self.root.join(SECRETS_DIR)).map_err(write)?;
        std::fs::write(&path, render(&secret)).map_err(write)?;
        Ok((path, to.len()))
    }

    fn recipients(&self) -> Result<Recipients, Error> {
        let path = self.root.join(RECIPIENTS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoRecipients {
                    checkout: self.root.clone(),
                });
            }
            Err(source) => return Err(Error::Read { path, source }),
        };
        desired::read_recipients(&bytes).map_err(|problems| Error::Invalid { problems })
    }

    fn secret(&self, name: &str) -> Result<Secret, Error> {
        if !desired::is_id(name) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        let file = format!("{SECRETS_DIR}/{name}.yaml");
        let path = self.root.join(&file);
        match std::fs::read(&path) {
            Ok(bytes) => {
                desired::read_secret(&file, &bytes).map_err(|problems| Error::Invalid { problems })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(Error::NoSecret {
                name: name.to_owned(),
                path,
            }),
            Err(source) => Err(Error::Read { path, source }),
        }
    }

    fn secret_names(&self) -> Result<Vec<String>, Error> {
        let dir = self.root.join(SECRETS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Read { path: dir, source }),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| Error::Read {
                path: dir.clone(),
                source,
            })?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".yaml") {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    match value {
        [] => Err(Error::Empty),
        value if value.len() > MAX_SECRET_BYTES => Err(Error::TooLong),
        value if value.contains(&0) => Err(Error::Nul),
        _ => Ok(()),
    }
}

/// A secret's file: names and limits readable, the value sealed.
fn render(secret: &Secret) -> String {
    let list = |items: &[String]| format!("[{}]", items.join(", "));
    let mut text = format!(
        "# Sealed with age by `linkops secret set`: `linkops secret edit {name}` changes the value,\n\
         # `linkops secret rotate` seals it again after recipients.yaml changed.\n\
         name: {name}\n",
        name = secret.name
    );
    if !secret.description.is_empty() {
        let quoted = serde_json::to_string(&secret.description).expect("a string serialises");
        text.push_str(&format!("description: {quoted}\n"));
    }
    if !secret.scripts.is_empty() {
        text.push_str(&format!("scripts: {}\n", list(&secret.scripts)));
    }
    if !secret.targets.is_empty() {
        text.push_str("targets:\n");
        if !secret.targets.tags.is_empty() {
            text.push_str(&format!("  tags: {}\n", list(&secret.targets.tags)));
        }
        if !secret.targets.machines.is_empty() {
            text.push_str(&format!("  machines: {}\n", list(&secret.targets.machines)));
        }
    }
    text.push_str("value: |\n");
    for line in secret.sealed.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// A secret's value from stdin (one trailing newline dropped: `echo` adds
/// it) when it is not a terminal, else typed twice at a prompt.
pub fn read_value() -> Result<Zeroizing<Vec<u8>>, Error> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        let mut value = Zeroizing::new(Vec::with_capacity(1024));
        let limit = MAX_SECRET_BYTES as u64 + 2;
        (std::io::stdin().take(limit))
            .read_to_end(&mut value)
            .map_err(Error::Input)?;
        let newline = match &value[..] {
            [.., b'\r', b'\n'] => 2,
            [.., b'\n'] => 1,
            _ => 0,
        };
        let kept = value.len() - newline;
        value.truncate(kept);
        return Ok(value);
    }
    let first = Zeroizing::new(rpassword::prompt_password("value: ").map_err(Error::Input)?);
    let again = Zeroizing::new(rpassword::prompt_password("again: ").map_err(Error::Input)?);
    match first == again {
        true => Ok(Zeroizing::new(first.as_bytes().to_vec())),
        false => Err(Error::Mismatch),
    }
}

/// `value` changed in `$VISUAL` or `$EDITOR` (else `vi`): written to a file
/// only its owner reads, in memory when `/dev/shm` is there, overwritten and
/// removed after.
pub fn in_editor(value: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let editor = (std::env::var("VISUAL").ok())
        .or_else(|| std::env::var("EDITOR").ok())
        .filter(|editor| !editor.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let base = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix("linkops-secret-");
    let file = match base.is_dir() {
        true => builder.tempfile_in(base),
        false => builder.tempfile(),
    };
    let temp = std::env::temp_dir();
    let mut file = file.map_err(|source| Error::Write { path: temp, source })?;
    let path = file.path().to_owned();
    let io = |source| Error::Write {
        path: path.clone(),
        source,
    };
    // tempfile makes it 0600.
    file.write_all(value).map_err(io)?;
    file.flush().map_err(io)?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(io)?;
    let changed = match status.success() {
        true => std::fs::read(&path)
            .map(Zeroizing::new)
            .map_err(|source| Error::Read {
                path: path.clone(),
                source,
            }),
        false => Err(Error::Editor {
            editor,
            status: status.to_string(),
        }),
    };
    // Overwritten before removal: /dev/shm or not, nothing of it stays.
    let length = std::fs::metadata(&path)
        .map(|m| m.len() as usize)
        .unwrap_or(value.len());
    std::fs::write(&path, vec![0u8; length]).ok();
    drop(file);
    let mut changed = changed?;
    // Editors end the last line with a newline the value never had.
    if changed.ends_with(b"\n") && !value.ends_with(b"\n") {
        let kept = changed.len() - 1;
        changed.truncate(kept);
    }
    Ok(changed)
}
