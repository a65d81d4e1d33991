//! The repository's secrets, opened at use: the daemon's age identity (a
//! [`Keyring`]), a value sealed to recipients ([`seal`]), opened for one
//! script's run ([`Keyring::open`]), and whether a revision's secrets can be
//! opened at all ([`unopenable`], which the sync and `linkops validate` ask).
//! A value in clear lives only in a [`Zeroizing`] buffer, for as long as a
//! script runs; [`mask`] keeps it out of what the script prints.

pub mod files;
pub mod mask;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use linkops_reconcilers::desired::{self, DesiredState, Problem, RepoFiles};
use linkops_reconcilers::secret::{MAX_SECRET_BYTES, Secret};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    File(#[from] crate::secrets::Error),
    #[error(
        "{origin}, line {line}: not an age identity (a line `AGE-SECRET-KEY-1…`, as `age-keygen` writes)"
    )]
    Identity { origin: String, line: usize },
    #[error("{origin} holds no age identity (a line `AGE-SECRET-KEY-1…`, as `age-keygen` writes)")]
    NoIdentity { origin: String },
    #[error("[secrets]: set identity or identity_command, not both")]
    BothIdentities,
    #[error("[secrets] identity_command {command:?} cannot run: {source}")]
    CommandStart {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "[secrets] identity_command {command:?} did not finish within {seconds} s: it was killed"
    )]
    CommandTimedOut { command: String, seconds: u64 },
    #[error("[secrets] identity_command {command:?} failed ({status}); its errors are in this log")]
    CommandFailed { command: String, status: String },
    #[error("[secrets] identity_command {command:?} printed over {MAX_IDENTITY_BYTES} bytes")]
    CommandTooLong { command: String },
    #[error("cannot create the age identity {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secret {name:?} ({file}) cannot be opened with the age identity {identity} (recipient {recipients}): \
         it must be sealed to that recipient too — add it to recipients.yaml and run `linkops secret rotate {name}`"
    )]
    NotARecipient {
        name: String,
        file: String,
        identity: String,
        recipients: String,
    },
    #[error("secret {name:?} ({file}) is not a readable age file: {reason}")]
    Unreadable {
        name: String,
        file: String,
        reason: String,
    },
    #[error(
        "secret {name:?}: its value is over {MAX_SECRET_BYTES} bytes, the most a secret may hold"
    )]
    TooLong { name: String },
    #[error("secret {name:?}: its value holds a NUL byte, which no environment variable can carry")]
    Nul { name: String },
    #[error("{0:?} is not an age recipient (`age1…`)")]
    Recipient(String),
    #[error("nothing to seal to: name at least one recipient (recipients.yaml `all`)")]
    NoRecipients,
    #[error("cannot seal the value: {0}")]
    Seal(String),
}

/// How long `[secrets] identity_command` may take.
const IDENTITY_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Most bytes an identity command may print: dozens of keys.
const MAX_IDENTITY_BYTES: usize = 64 << 10;

/// An age identity: the keys that open secrets. Each key is wiped when dropped.
pub struct Keyring {
    /// Where the keys came from: a file, or `[secrets] identity_command`.
    origin: String,
    identities: Vec<age::x25519::Identity>,
}

impl Keyring {
    /// The daemon's identity as `config` says: `[secrets] identity_command`'s
    /// output, the `identity` file, or the keys dir's — made there when
    /// `create` (the daemon's first start) and absent.
    pub fn of_config(config: &crate::config::Config, create: bool) -> Result<Keyring, Error> {
        let secrets = &config.secrets;
        match (&secrets.identity, &secrets.identity_command) {
            (Some(_), Some(_)) => Err(Error::BothIdentities),
            (None, Some(command)) => Keyring::from_command(command, IDENTITY_COMMAND_TIMEOUT),
            (None, None) if create => Keyring::load_or_create(&config.age_identity_path()),
            _ => Keyring::load(&config.age_identity_path()),
        }
    }

    /// Reads the identity file at `path` (mode 0600: a looser one is refused).
    pub fn load(path: &Path) -> Result<Keyring, Error> {
        let text = Zeroizing::new(crate::secrets::read_private(path)?);
        Keyring::parse(&text, path.display().to_string())
    }

    /// The identity `command` prints (`sh -c`; e.g. `systemd-creds decrypt
    /// …` or a password manager's), run once, killed after `timeout`; what it
    /// prints on stderr goes to the daemon's.
    pub fn from_command(command: &str, timeout: std::time::Duration) -> Result<Keyring, Error> {
        use std::process::{Command, Stdio};
        let start = |source| Error::CommandStart {
            command: command.to_owned(),
            source,
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(start)?;
        let mut stdout = child.stdout.take().expect("piped");
        let (sender, printed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = Zeroizing::new(Vec::new());
            let read = (&mut stdout)
                .take(MAX_IDENTITY_BYTES as u64 + 1)
                .read_to_end(&mut text);
            sender.send(read.map(|_| text)).ok();
        });
        let text = match printed.recv_timeout(timeout) {
            Ok(read) => read.map_err(start)?,
            Err(_) => {
                child.kill().ok();
                child.wait().ok();
                return Err(Error::CommandTimedOut {
                    command: command.to_owned(),
                    seconds: timeout.as_secs(),
                });
            }
        };
        let status = child.wait().map_err(start)?;
        if !status.success() {
            return Err(Error::CommandFailed {
                command: command.to_owned(),
                status: status.to_string(),
            });
        }
        if text.len() > MAX_IDENTITY_BYTES {
            return Err(Error::CommandTooLong {
                command: command.to_owned(),
            });
        }
        let text = Zeroizing::new(String::from_utf8_lossy(&text).into_owned());
        Keyring::parse(&text, format!("[secrets] identity_command {command:?}"))
    }

    /// One key per `AGE-SECRET-KEY-1…` line; blank lines and `#` comments skipped.
    fn parse(text: &str, origin: String) -> Result<Keyring, Error> {
        let mut identities = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The error names the line, never its content.
            let identity = age::x25519::Identity::from_str(line).map_err(|_| Error::Identity {
                origin: origin.clone(),
                line: number + 1,
            })?;
            identities.push(identity);
        }
        match identities.is_empty() {
            true => Err(Error::NoIdentity { origin }),
            false => Ok(Keyring { origin, identities }),
        }
    }

    /// Reads the identity at `path`, or makes one there (mode 0600, as
    /// `age-keygen` writes it) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Keyring, Error> {
        if !path.exists() {
            let identity = age::x25519::Identity::generate();
            let create = |source| Error::Create {
                path: path.to_owned(),
                source,
            };
            let text = Zeroizing::new(format!(
                "# created by linkops: the daemon's age identity; back it up, keep it 0600\n\
                 # public key: {}\n{}\n",
                identity.to_public(),
                identity.to_string().expose_secret()
            ));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(create)?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            // create_new: two daemons starting at once must not both write one.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut file) => {
                    file.write_all(text.as_bytes()).map_err(create)?;
                    file.sync_all().map_err(create)?;
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(create(error)),
            }
        }
        Keyring::load(path)
    }

    /// The identity's recipients (`age1…`), one per key: what recipients.yaml lists.
    pub fn recipients(&self) -> Vec<String> {
        (self.identities.iter())
            .map(|identity| identity.to_public().to_string())
            .collect()
    }

    /// Whether the keyring opens `secret`, without reading its value: the
    /// file key is unwrapped and the header's MAC checked, no more.
    pub fn can_open(&self, secret: &Secret) -> Result<(), Error> {
        self.decryptor(secret).map(drop)
    }

    /// The value of `secret`, in clear, wiped when dropped. Runs on the
    /// blocking pool's time, not the runtime's: it is a few X25519 operations.
    pub fn open(&self, secret: &Secret) -> Result<Zeroizing<Vec<u8>>, Error> {
        let reader = self.decryptor(secret)?;
        let mut value = Zeroizing::new(Vec::with_capacity(256));
        let read = (reader.take(MAX_SECRET_BYTES as u64 + 1)).read_to_end(&mut value);
        read.map_err(|error| self.unreadable(secret, error.to_string()))?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(Error::TooLong {
                name: secret.name.clone(),
            });
        }
        if value.contains(&0) {
            return Err(Error::Nul {
                name: secret.name.clone(),
            });
        }
        Ok(value)
    }

    fn decryptor<'a>(&self, secret: &'a Secret) -> Result<impl std::io::Read + 'a, Error> {
        let armored = age::armor::ArmoredReader::new(secret.sealed.as_bytes());
        let decryptor = age::Decryptor::new_buffered(armored)
            .map_err(|error| self.unreadable(secret, error.to_string()))?;
        let identities = self.identities.iter().map(|i| i as &dyn age::Identity);
        decryptor.decrypt(identities).map_err(|error| match error {
            age::DecryptError::NoMatchingKeys => Error::NotARecipient {
                name: secret.name.clone(),
                file: secret.file.clone(),
                identity: self.origin.clone(),
                recipients: self.recipients().join(", "),
            },
            error => self.unreadable(secret, error.to_string()),
        })
    }

    fn unreadable(&self, secret: &Secret, reason: String) -> Error {
        Error::Unreadable {
            name: secret.name.clone(),
            file: secret.file.clone(),
            reason,
        }
    }
}

/// `value` sealed to `recipients` (`age1…`), ASCII-armored: what a secret's
/// file holds, and what `age -d` opens.
pub fn seal(value: &[u8], recipients: &[&str]) -> Result<String, Error> {
    let parsed = (recipients.iter())
        .map(|r| age::x25519::Recipient::from_str(r).map_err(|_| Error::Recipient((*r).into())))
        .collect::<Result<Vec<_>, _>>()?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|_| Error::NoRecipients)?;
    let seal = |error: std::io::Error| Error::Seal(error.to_string());
    let mut sealed = Vec::new();
    let armored =
        age::armor::ArmoredWriter::wrap_output(&mut sealed, age::armor::Format::AsciiArmor)
            .map_err(seal)?;
    let mut writer = encryptor.wrap_output(armored).map_err(seal)?;
    writer.write_all(value).map_err(seal)?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(seal)?;
    String::from_utf8(sealed).map_err(|_| Error::Seal("the armor is not text".into()))
}

/// [`desired::load`], and then every secret must open with `keyring` and
/// every schedule's zone be in the tz database: what a sync applies, a plan
/// judges and `linkops validate --identity` checks.
pub fn load(
    revision: &str,
    files: &RepoFiles,
    keyring: &Keyring,
) -> Result<DesiredState, Vec<Problem>> {
    let desired = desired::load(revision, files)?;
    let mut problems = unopenable(&desired, keyring);
    problems.extend(crate::schedules::unknown_zones(&desired));
    match problems.is_empty() {
        true => Ok(desired),
        false => Err(problems),
    }
}

/// The secrets of `desired` that `keyring` cannot open, each as a problem at
/// its file: a revision whose secrets the daemon cannot open is refused, as a
/// broken file is, rather than failing at 3 a.m. when a script needs one.
pub fn unopenable(desired: &DesiredState, keyring: &Keyring) -> Vec<Problem> {
    (desired.secrets.values())
        .filter_map(|secret| keyring.can_open(secret).err().map(|error| (secret, error)))
        .map(|(secret, error)| Problem {
            file: secret.file.clone(),
            line: 1,
            column: 1,
            message: error.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    use linkops_reconcilers::script::Targets;

    use super::*;

    fn secret(name: &str, sealed: String) -> Secret {
        Secret {
            name: name.into(),
            description: String::new(),
            file: format!("secrets/{name}.yaml"),
            scripts: Vec::new(),
            targets: Targets::default(),
            sealed,
        }
    }

    /// `age` (Debian's CLI) with `args`, `input` on stdin; its stdout.
    fn age(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("age")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the age CLI (apt-get install age)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "age {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    #[test]
    fn values_sealed_here_open_with_the_age_cli_and_the_cli_s_open_here() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/age-identity.txt");
        let daemon = Keyring::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Made once: a second start reads the same key.
        assert_eq!(
            Keyring::load_or_create(&path).unwrap().recipients(),
            daemon.recipients()
        );
        let recipient = daemon.recipients().remove(0);
        // What we made is what age-keygen reads.
        let public = Command::new("age-keygen")
            .arg("-y")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(public.stdout).unwrap().trim(), recipient);

        let sealed = seal(b"hunter2\n", &[&recipient]).unwrap();
        assert!(sealed.starts_with(linkops_reconcilers::secret::ARMOR_BEGIN));
        let opened = age(&["-d", "-i", path.to_str().unwrap()], sealed.as_bytes());
        assert_eq!(opened, b"hunter2\n");

        let by_cli =
            String::from_utf8(age(&["-e", "-a", "-r", &recipient], b"from the cli")).unwrap();
        assert_eq!(
            &daemon.open(&secret("cli", by_cli)).unwrap()[..],
            b"from the cli"
        );
    }

    #[test]
    fn a_secret_that_does_not_open_names_itself_and_the_recipient_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Keyring::load_or_create(&dir.path().join("daemon.txt")).unwrap();
        let other = Keyring::load_or_create(&dir.path().join("other.txt")).unwrap();
        let sealed = seal(b"v", &[&other.recipients()[0]]).unwrap();
        let refused = daemon
            .open(&secret("db-password", sealed.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("secret \"db-password\" (secrets/db-password.yaml)"),
            "{refused}"
        );
        assert!(refused.contains(&daemon.recipients()[0]), "{refused}");
        assert!(!refused.contains(&other.recipients()[0]), "{refused}");
        let mut desired = DesiredState::default();
        desired.secrets = [("db-password".to_owned(), secret("db-password", sealed))].into();
        let problems = unopenable(&desired, &daemon);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, "secrets/db-password.yaml");
        assert!(unopenable(&desired, &other).is_empty());
        // Values a script cannot be given are refused when opened.
        let nul = seal(b"a\0b", &[&daemon.recipients()[0]]).unwrap();
        let refused = daemon.open(&secret("nul", nul)).unwrap_err().to_string();
        assert!(refused.contains("NUL"), "{refused}");
    }

    #[test]
    fn an_identity_can_come_from_a_command_bounded_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.txt");
        let file = Keyring::load_or_create(&path).unwrap();
        let second = std::time::Duration::from_secs(1);
        let command = format!("cat {}", path.display());
        let printed = Keyring::from_command(&command, second * 10).unwrap();
        assert_eq!(printed.recipients(), file.recipients());
        let refused = Keyring::from_command("exit 3", second * 10).err().unwrap();
        assert!(refused.to_string().contains("exit status: 3"), "{refused}");
        // A command that never ends is killed at its bound.
        let refused = Keyring::from_command("exec sleep 60", second)
            .err()
            .unwrap();
        assert!(
            matches!(refused, Error::CommandTimedOut { seconds: 1, .. }),
            "{refused}"
        );
    }

    #[test]
    fn an_identity_readable_by_others_or_not_an_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.txt");
        Keyring::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = Keyring::load(&path).err().unwrap().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        std::fs::write(&path, "# a comment\nAGE-SECRET-KEY-1NOPE\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let refused = Keyring::load(&path).err().unwrap().to_string();
        // The line, never its content.
        assert!(
            refused.contains("line 2") && !refused.contains("NOPE"),
            "{refused}"
        );
    }
}
