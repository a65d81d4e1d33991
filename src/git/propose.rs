//! Proposing a change to the config repository as a commit on a branch of
//! an operator's checkout (the git CLI, their credentials): what `linkops
//! enroll --commit` and `linkops inventory sync` write, for a person to merge
//! after the daemon's plan on the branch showed what it changes.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{repo} has uncommitted changes: commit or stash them first")]
    Uncommitted { repo: PathBuf },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`git {command}` in {repo}: {output}")]
    Git {
        command: String,
        repo: PathBuf,
        output: String,
    },
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
}

/// A change: files (repository-relative path → content) committed with `message` on `branch`.
pub struct Proposal<'a> {
    pub branch: &'a str,
    pub files: &'a [(&'a str, String)],
    pub message: &'a str,
    /// The branch is the proposer's own (`inventory/proxmox`): made again from
    /// the current head, replacing an earlier proposal, rather than refused
    /// when it exists.
    pub replaces: bool,
}

/// Commits `proposal` on its branch, made from the checkout's current head,
/// and checks out the branch the checkout was on again — also when the commit
/// failed.
pub fn commit(repo: &Path, proposal: &Proposal) -> Result<(), Error> {
    if !git(repo, &["status", "--porcelain"])?.trim().is_empty() {
        return Err(Error::Uncommitted {
            repo: repo.to_owned(),
        });
    }
    let original = git(repo, &["rev-parse", "--abbrev-ref", "HEAD"])?;
    let create = if proposal.replaces { "-C" } else { "-c" };
    git(repo, &["switch", "--quiet", create, proposal.branch])?;
    let committed = (|| {
        for (path, content) in proposal.files {
            let full = repo.join(path);
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent).map_err(|source| Error::Write {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            std::fs::write(&full, content).map_err(|source| Error::Write { path: full, source })?;
            git(repo, &["add", path])?;
        }
        git(repo, &["commit", "--quiet", "-m", proposal.message])
    })();
    let back = git(repo, &["switch", "--quiet", original.trim()]);
    committed?;
    back.map(drop)
}

/// Pushes `branch` to `origin`; `replaces`: over an earlier proposal there.
pub fn push(repo: &Path, branch: &str, replaces: bool) -> Result<(), Error> {
    let mut args = vec!["push", "--quiet", "-u"];
    if replaces {
        args.push("--force");
    }
    args.extend(["origin", branch]);
    git(repo, &args).map(drop)
}

/// `git ARGS` in `repo`; its standard output.
fn git(repo: &Path, args: &[&str]) -> Result<String, Error> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(Error::Spawn)?;
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(Error::Git {
            command: args.join(" "),
            repo: repo.to_owned(),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }),
    }
}
