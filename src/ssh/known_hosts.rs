//! The daemon's known_hosts file, read once per change rather than once per
//! connect: at 10,000 machines the file is a megabyte, and scanning it for
//! every check was a third of the daemon's CPU in a sweep (ARCHITECTURE.md).
//!
//! Each lookup stats the file; when its size, modification time or inode
//! changed (an operator's edit, a key learned by trust on first use) it is
//! read again. Entries are indexed by host as written (`host` or
//! `[host]:port`); hashed entries (`|1|salt|hash`, `ssh-keygen -H`) are
//! matched by HMAC-SHA1 and what a lookup found is kept until the next
//! change. As before, lines with a marker (`@cert-authority`, `@revoked`)
//! and wildcard or negated patterns match no host.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use russh::keys::PublicKey;

use super::{Error, Result};

/// Keys recorded for one host, with their line numbers (1-based, every line counted).
pub type Recorded = Vec<(usize, PublicKey)>;

/// One daemon's known_hosts file; shared by every connect.
#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
    read: Mutex<Option<Read>>,
}

/// The file as last read.
#[derive(Debug)]
struct Read {
    version: Option<Version>,
    /// Host as written → (line, base64 key).
    plain: HashMap<String, Vec<(usize, String)>>,
    hashed: Vec<Hashed>,
    /// What each looked-up `host` / `[host]:port` found.
    found: HashMap<String, Recorded>,
}

/// What tells one content of the file from another without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

#[derive(Debug)]
struct Hashed {
    salt: Vec<u8>,
    hash: Vec<u8>,
    line: usize,
    key: String,
}

impl KnownHosts {
    pub fn new(path: PathBuf) -> KnownHosts {
        KnownHosts {
            path,
            read: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys recorded for `host` on `port`, in file order; none when the
    /// file does not exist. Blocking (stats and may read the file).
    pub fn keys(&self, host: &str, port: u16) -> Result<Recorded> {
        let version = self.version()?;
        let mut read = self.read.lock().expect("never poisoned");
        if read.as_ref().is_none_or(|r| r.version != version) {
            *read = Some(self.read_file(version)?);
        }
        let read = read.as_mut().expect("just read");
        let name = match port {
            22 => host.to_owned(),
            port => format!("[{host}]:{port}"),
        };
        if let Some(found) = read.found.get(&name) {
            return Ok(found.clone());
        }
        let found = read.resolve(&name).map_err(|reason| self.error(reason))?;
        read.found.insert(name, found.clone());
        Ok(found)
    }

    fn version(&self) -> Result<Option<Version>> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(Some(Version {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode: meta.ino(),
            })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.error(error.to_string())),
        }
    }

    fn read_file(&self, version: Option<Version>) -> Result<Read> {
        let text = match version {
            None => String::new(),
            Some(_) => {
                let bytes = std::fs::read(&self.path).map_err(|e| self.error(e.to_string()))?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        Ok(Read::parse(version, &text))
    }

    fn error(&self, reason: String) -> Error {
        Error::KnownHosts {
            path: self.path.clone(),
            reason,
        }
    }
}

impl Read {
    fn parse(version: Option<Version>, text: &str) -> Read {
        let mut read = Read {
            version,
            plain: HashMap::new(),
            hashed: Vec::new(),
            found: HashMap::new(),
        };
        for (index, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let (Some(hosts), Some(_kind), Some(key)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if hosts.starts_with('#') || hosts.starts_with('@') {
                continue;
            }
            for pattern in hosts.split(',') {
                if let Some(hashed) = pattern.strip_prefix("|1|") {
                    let Some((salt, hash)) = hashed.split_once('|') else {
                        continue;
                    };
                    if let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) {
                        read.hashed.push(Hashed {
                            salt,
                            hash,
                            line: index + 1,
                            key: key.to_owned(),
                        });
                    }
                } else if !pattern.contains(['*', '?', '!']) {
                    read.plain
                        .entry(pattern.to_owned())
                        .or_default()
                        .push((index + 1, key.to_owned()));
                }
            }
        }
        read
    }

    /// Every key recorded for `name`, parsed; a recorded key that does not
    /// parse is an error naming its line.
    fn resolve(&self, name: &str) -> std::result::Result<Recorded, String> {
        let mut matching: Vec<(usize, &str)> = self
            .plain
            .get(name)
            .into_iter()
            .flatten()
            .map(|(line, key)| (*line, key.as_str()))
            .collect();
        matching.extend(
            self.hashed
                .iter()
                .filter(|entry| entry.matches(name))
                .map(|entry| (entry.line, entry.key.as_str())),
        );
        matching.sort_unstable_by_key(|(line, _)| *line);
        matching.dedup_by_key(|(line, _)| *line);
        matching
            .into_iter()
            .map(|(line, key)| {
                russh::keys::parse_public_key_base64(key)
                    .map(|key| (line, key))
                    .map_err(|error| format!("line {line}: {error}"))
            })
            .collect()
    }
}

impl Hashed {
    fn matches(&self, name: &str) -> bool {
        hmac::Hmac::<sha1::Sha1>::new_from_slice(&self.salt)
            .is_ok_and(|mac| mac.chain_update(name).verify_slice(&self.hash).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn lines(found: &Recorded) -> Vec<usize> {
        found.iter().map(|(line, _)| *line).collect()
    }

    /// `ssh-keygen -H`'s form of `name`: HMAC-SHA1 keyed by the salt.
    fn hashed(name: &str, salt: &[u8]) -> String {
        let mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt)
            .unwrap()
            .chain_update(name)
            .finalize()
            .into_bytes();
        format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(mac))
    }

    #[test]
    fn hosts_are_found_by_name_and_port_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let text = format!(
            "# fleet\n\
             web1,10.0.0.1 ssh-ed25519 {KEY_A}\n\
             [web1]:2222 ssh-ed25519 {KEY_B} comment\n\
             \n\
             @revoked web1 ssh-ed25519 {KEY_B}\n\
             *.example ssh-ed25519 {KEY_B}\n\
             {} ssh-ed25519 {KEY_B}\n\
             web1\tssh-ed25519   {KEY_B}\n",
            hashed("db1", b"0123456789abcdefghij")
        );
        std::fs::write(&path, text).unwrap();
        let known = KnownHosts::new(path);
        assert_eq!(lines(&known.keys("web1", 22).unwrap()), [2, 8]);
        assert_eq!(lines(&known.keys("10.0.0.1", 22).unwrap()), [2]);
        assert_eq!(lines(&known.keys("web1", 2222).unwrap()), [3]);
        assert_eq!(lines(&known.keys("db1", 22).unwrap()), [7]);
        assert_eq!(
            lines(&known.keys("db1", 2222).unwrap()),
            Vec::<usize>::new()
        );
        assert_eq!(
            lines(&known.keys("a.example", 22).unwrap()),
            Vec::<usize>::new()
        );
        let found = known.keys("web1", 2222).unwrap();
        assert_eq!(
            found[0].1,
            russh::keys::parse_public_key_base64(KEY_B).unwrap()
        );
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let known = KnownHosts::new(path.clone());
        assert!(known.keys("web1", 22).unwrap().is_empty(), "no file yet");
        std::fs::write(&path, format!("web1 ssh-ed25519 {KEY_A}\n")).unwrap();
        assert_eq!(lines(&known.keys("web1", 22).unwrap()), [1]);
        // Replaced by a file of the same size: a new inode.
        let replacement = dir.path().join("known_hosts.new");
        std::fs::write(&replacement, format!("web2 ssh-ed25519 {KEY_A}\n")).unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        assert!(known.keys("web1", 22).unwrap().is_empty());
        assert_eq!(lines(&known.keys("web2", 22).unwrap()), [1]);
        std::fs::remove_file(&path).unwrap();
        assert!(known.keys("web2", 22).unwrap().is_empty());
    }

    #[test]
    fn a_recorded_key_that_does_not_parse_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(
            &path,
            format!("web1 ssh-ed25519 {KEY_A}\nweb2 ssh-ed25519 AAAA\n"),
        )
        .unwrap();
        let known = KnownHosts::new(path);
        assert_eq!(lines(&known.keys("web1", 22).unwrap()), [1]);
        let error = known.keys("web2", 22).unwrap_err().to_string();
        assert!(
            error.contains("known_hosts") && error.contains("line 2"),
            "{error}"
        );
    }
}
