//! The saved login: server and token in the user's config dir, mode 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub server: String,
    pub user: String,
    pub token: String,
    pub expires_at: jiff::Timestamp,
}

impl Session {
    /// `$XDG_CONFIG_HOME/linkops/session.json`, else `~/.config/linkops/session.json`.
    pub fn path() -> Result<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
            .ok_or_else(|| Error::Session {
                path: PathBuf::from("~/.config/linkops/session.json"),
                reason: "neither XDG_CONFIG_HOME nor HOME is set".into(),
            })?;
        Ok(base.join("linkops").join("session.json"))
    }

    /// The saved session, if there is one (refused if others could read it).
    pub fn load() -> Result<Option<Session>> {
        let path = Session::path()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(Error::Session {
                    path,
                    reason: error.to_string(),
                });
            }
        };
        crate::secrets::check_private(&path).map_err(|e| Error::Session {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Session {
                path,
                reason: format!("unreadable ({e}); log in again"),
            })
    }

    /// Writes the session, readable by its owner only.
    pub fn save(&self) -> Result<PathBuf> {
        let path = Session::path()?;
        let failed = |error: std::io::Error| Error::Session {
            path: path.clone(),
            reason: error.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(failed)?;
        }
        // Written aside and renamed: a reader never sees half a file, and the
        // mode is 0600 from the first byte.
        let partial = path.with_extension("json.partial");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(failed)?;
        file.write_all(
            serde_json::to_string_pretty(self)
                .expect("serialises")
                .as_bytes(),
        )
        .map_err(failed)?;
        std::fs::rename(&partial, &path).map_err(failed)?;
        Ok(path)
    }

    pub fn expired(&self) -> bool {
        self.expires_at <= jiff::Timestamp::now()
    }
}
