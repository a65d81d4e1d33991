//! The daemon's mirror of the config repository: a bare Git repository in
//! the data dir, fetched with gix, read revision by revision.
//!
//! The desired state is read from commit objects, never from a worktree: a
//! revision is read whole and atomically, and the last good one can be read
//! again after a restart even when the branch has moved on to a bad one.
//! Everything here blocks (gix is synchronous): call it from `blocking::run`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::remote::Direction;
use linkops_reconcilers::desired::RepoFiles;

use super::files::MAX_REPO_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the Git mirror at {path}: {message}")]
    Init { path: PathBuf, message: String },
    #[error("fetching {url} failed: {message}{ssh}")]
    Fetch {
        url: String,
        message: String,
        /// What ssh itself said (host key refused, permission denied …).
        ssh: String,
    },
    #[error("{url} has no branch {branch:?}")]
    NoBranch { url: String, branch: String },
    #[error("reading revision {revision}: {message}")]
    Read { revision: String, message: String },
    #[error(
        "revision {revision} holds more than {limit} bytes of files; LinkOps reads config repositories whole"
    )]
    TooLarge { revision: String, limit: u64 },
    #[error("forgetting branch {branch:?} in the Git mirror at {path}: {message}")]
    Forget {
        path: PathBuf,
        branch: String,
        message: String,
    },
    #[error("deploy key: {0}")]
    DeployKey(#[from] crate::secrets::Error),
}

/// Where the config repository comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// `git@host:owner/repo.git`, `ssh://…`, a local path, `file://…` or `https://…`.
    pub url: crate::config::RepoUrl,
    pub branch: String,
    /// Private key for SSH remotes (mode 0600).
    pub deploy_key: Option<PathBuf>,
    /// The daemon's known_hosts; SSH remotes must be in it.
    pub known_hosts: PathBuf,
}

impl Source {
    /// A local-path or `file://` source (watched for changes rather than polled only).
    pub fn local_path(&self) -> Option<PathBuf> {
        let url = self.url.expose();
        if let Some(path) = url.strip_prefix("file://") {
            return Some(PathBuf::from(path));
        }
        let path = Path::new(url);
        path.is_absolute().then(|| path.to_owned())
    }
}

#[derive(Clone)]
pub struct Mirror {
    path: PathBuf,
}

impl Mirror {
    pub fn new(path: PathBuf) -> Mirror {
        Mirror { path }
    }

    /// Fetches `source.branch` and returns the commit it points at.
    pub fn fetch(&self, source: &Source) -> Result<ObjectId, Error> {
        if let Some(key) = &source.deploy_key {
            crate::secrets::check_private(key)?;
        }
        let ssh_log = self.path.with_extension("ssh.log");
        // ssh writes its own diagnostics here (-E); gix alone would only say
        // that the handshake failed.
        std::fs::remove_file(&ssh_log).ok();
        let repo = self.open(source, &ssh_log)?;
        // gix quotes the URL, credentials and all: every message is scrubbed.
        let fetch_error = |message: String| Error::Fetch {
            url: source.url.to_string(),
            message: source.url.scrub(&message),
            ssh: std::fs::read_to_string(&ssh_log)
                .ok()
                .map(|log| log.trim().to_owned())
                .filter(|log| !log.is_empty())
                .map(|log| format!(" (ssh: {log})"))
                .unwrap_or_default(),
        };
        let tracking = format!("refs/remotes/origin/{}", source.branch);
        let refspec = format!("+refs/heads/{}:{tracking}", source.branch);
        let remote = repo
            .remote_at(source.url.expose())
            .map_err(|e| fetch_error(e.to_string()))?
            .with_refspecs([refspec.as_str()], Direction::Fetch)
            .map_err(|e| fetch_error(e.to_string()))?;
        let interrupt = AtomicBool::new(false);
        let outcome = remote
            .connect(Direction::Fetch)
            .map_err(|e| fetch_error(e.to_string()))?
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| fetch_error(e.to_string()))?
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| fetch_error(e.to_string()))?;
        if outcome.ref_map.mappings.is_empty() {
            return Err(Error::NoBranch {
                url: source.url.to_string(),
                branch: source.branch.clone(),
            });
        }
        let reference = repo
            .find_reference(tracking.as_str())
            .map_err(|_| Error::NoBranch {
                url: source.url.to_string(),
                branch: source.branch.clone(),
            })?;
        Ok(reference.id().detach())
    }

    /// Forgets a branch that was deleted: its tracking ref goes, and once no
    /// branch is left the whole mirror (its objects with it) — it is made
    /// again by the next fetch.
    pub fn forget(&self, branch: &str) -> Result<(), Error> {
        if !self.path.join("HEAD").exists() {
            return Ok(());
        }
        let forget = |message: String| Error::Forget {
            path: self.path.clone(),
            branch: branch.to_owned(),
            message,
        };
        let repo = gix::open_opts(&self.path, gix::open::Options::isolated())
            .map_err(|e| forget(e.to_string()))?;
        let tracking = format!("refs/remotes/origin/{branch}");
        if let Ok(reference) = repo.find_reference(tracking.as_str()) {
            reference.delete().map_err(|e| forget(e.to_string()))?;
        }
        let left = repo
            .references()
            .map_err(|e| forget(e.to_string()))?
            .remote_branches()
            .map_err(|e| forget(e.to_string()))?
            .next()
            .is_some();
        drop(repo);
        if !left {
            std::fs::remove_dir_all(&self.path).map_err(|e| forget(e.to_string()))?;
        }
        Ok(())
    }

    /// Every file of `revision`, keyed by its path in the repository.
    pub fn files_at(&self, revision: ObjectId) -> Result<RepoFiles, Error> {
        let read = |message: String| Error::Read {
            revision: revision.to_string(),
            message,
        };
        let repo = gix::open_opts(&self.path, gix::open::Options::isolated())
            .map_err(|e| read(e.to_string()))?;
        let tree = repo
            .find_commit(revision)
            .map_err(|e| read(e.to_string()))?
            .tree()
            .map_err(|e| read(e.to_string()))?;
        let mut recorder = gix::traverse::tree::Recorder::default();
        tree.traverse()
            .breadthfirst(&mut recorder)
            .map_err(|e| read(e.to_string()))?;
        let mut files = RepoFiles::new();
        let mut total = 0u64;
        for entry in recorder.records.into_iter().filter(|e| e.mode.is_blob()) {
            let object = repo
                .find_object(entry.oid)
                .map_err(|e| read(e.to_string()))?;
            total += object.data.len() as u64;
            if total > MAX_REPO_BYTES {
                return Err(Error::TooLarge {
                    revision: revision.to_string(),
                    limit: MAX_REPO_BYTES,
                });
            }
            files.insert(entry.filepath.to_string(), object.data.clone());
        }
        Ok(files)
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors; `false` when
    /// `ancestor` is not in the mirror (it was force-pushed away).
    pub fn is_ancestor(&self, ancestor: ObjectId, descendant: ObjectId) -> Result<bool, Error> {
        let read = |message: String| Error::Read {
            revision: descendant.to_string(),
            message,
        };
        let repo = gix::open_opts(&self.path, gix::open::Options::isolated())
            .map_err(|e| read(e.to_string()))?;
        let walk = repo
            .find_commit(descendant)
            .map_err(|e| read(e.to_string()))?
            .ancestors()
            .all()
            .map_err(|e| read(e.to_string()))?;
        for info in walk {
            if info.map_err(|e| read(e.to_string()))?.id == ancestor {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Opens (creating on first use) the bare mirror with the settings for `source`.
    fn open(&self, source: &Source, ssh_log: &Path) -> Result<gix::Repository, Error> {
        if !self.path.join("HEAD").exists() {
            gix::init_bare(&self.path).map_err(|e| Error::Init {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        }
        let mut ssh = format!(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -E {}",
            shell_quote(&source.known_hosts),
            shell_quote(ssh_log)
        );
        if let Some(key) = &source.deploy_key {
            ssh.push_str(&format!(" -o IdentitiesOnly=yes -i {}", shell_quote(key)));
        }
        let overrides = [
            format!("core.sshCommand={ssh}"),
            // Ref updates write a reflog, which needs an identity.
            "committer.name=linkops".to_owned(),
            "committer.email=linkops@localhost".to_owned(),
        ];
        gix::open_opts(
            &self.path,
            gix::open::Options::isolated().config_overrides(overrides),
        )
        .map_err(|e| Error::Init {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

/// Quotes a path for the shell that runs `core.sshCommand`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
