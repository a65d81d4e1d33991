//! Files that hold secrets: private SSH keys and the JWT signing secret.
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

#[cfg(test)]
mod tests {
    use super::*;

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
