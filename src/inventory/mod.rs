//! Inventory sources: machines declared elsewhere, proposed to the config
//! repository as a commit on a branch — never straight into the applied
//! inventory — so the plan on the branch shows what would change and a
//! person merges it. Proxmox VE is the one source (`proxmox.rs`; the rules
//! and the block of `links.yaml` it owns are `reconcilers::inventory`'s).

mod proxmox;

use std::path::{Path, PathBuf};

use linkops_reconcilers::desired::{self, LINKS_FILE};
use linkops_reconcilers::inventory::{self, PROXMOX_RULES_FILE, ProxmoxRules, Skipped};

use crate::git::propose;

/// The most a rules file may hold.
const MAX_RULES_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Rules { path: PathBuf, reason: String },
    #[error("{0}")]
    RulesProblem(linkops_reconcilers::desired::Problem),
    #[error(
        "the checkout at {repo} is not a valid revision ({problems} problem(s), first: {first}): fix it before syncing"
    )]
    Invalid {
        repo: PathBuf,
        problems: usize,
        first: String,
    },
    #[error("{0}")]
    Proposal(String),
    #[error("Proxmox VE: {0}")]
    Proxmox(String),
    #[error("Proxmox VE: GET {path}: HTTP {status}: {said}")]
    ProxmoxStatus {
        path: String,
        status: reqwest::StatusCode,
        said: String,
    },
    #[error("the API token's secret: {0}")]
    Token(#[from] crate::secrets::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Propose(#[from] propose::Error),
}

/// What `linkops inventory sync` is given.
pub struct SyncArgs<'a> {
    /// The config repository's checkout.
    pub repo: &'a Path,
    /// The API token's secret (mode 0600).
    pub token_file: &'a Path,
    /// The cluster's CA certificate (`/etc/pve/pve-root-ca.pem`), when its
    /// API does not present a certificate the system trusts.
    pub ca_file: Option<&'a Path>,
    pub push: bool,
}

/// What a sync found and proposed.
pub struct Synced {
    pub branch: String,
    /// Entries the block gains, loses and changes (ids), against the checkout.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub skipped: Vec<Skipped>,
    /// Whether a commit was made (nothing changed: none).
    pub committed: bool,
}

/// Reads the rules, asks Proxmox VE for its guests and, when the source's
/// block of `links.yaml` would change, commits the new block on the rules'
/// branch (made again from the checkout's head) and pushes it when asked.
pub async fn sync(args: &SyncArgs<'_>) -> Result<Synced, Error> {
    let rules_path = args.repo.join(PROXMOX_RULES_FILE);
    let rules = read_rules(&rules_path)?;
    let secret = crate::secrets::read_private(args.token_file)?;
    let ca = match args.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?),
        None => None,
    };
    let files =
        crate::git::read_dir(args.repo).map_err(|error| Error::Proposal(error.to_string()))?;
    let current = desired::load("(checkout)", &files).map_err(|problems| Error::Invalid {
        repo: args.repo.to_owned(),
        problems: problems.len(),
        first: problems
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
    })?;
    let client = proxmox::Proxmox::new(&rules.url, &rules.token_id, secret.trim(), ca.as_deref())?;
    let guests = client
        .guests(|guest| inventory::takes(&rules.guests, guest))
        .await?;
    let (entries, skipped) =
        inventory::entries(&rules, &guests, &current.machines).map_err(|reason| Error::Rules {
            path: rules_path.clone(),
            reason,
        })?;
    let links_path = args.repo.join(LINKS_FILE);
    let links = std::fs::read_to_string(&links_path).map_err(|source| Error::Io {
        path: links_path.clone(),
        source,
    })?;
    let proposed = inventory::splice(&links, &entries).ok_or_else(|| {
        Error::Proposal(format!(
            "{LINKS_FILE} does not end with its machines: list and has no block of the Proxmox source: move `machines:` last, then sync again"
        ))
    })?;
    let mut checked = files;
    checked.insert(LINKS_FILE.to_owned(), proposed.clone().into_bytes());
    desired::load("(proposed)", &checked).map_err(|problems| {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Error::Proposal(format!(
            "the proposal would make the repository invalid:\n{}",
            problems.join("\n")
        ))
    })?;
    let inventory::Differences {
        added,
        removed,
        changed,
    } = inventory::compare(&current.machines, &entries);
    let committed = proposed != links;
    if committed {
        let message = format!(
            "Inventory from Proxmox VE: {} machine(s), +{} -{} ~{}",
            entries.len(),
            added.len(),
            removed.len(),
            changed.len()
        );
        let proposal = propose::Proposal {
            branch: &rules.branch,
            files: &[(LINKS_FILE, proposed)],
            message: &message,
            replaces: true,
        };
        propose::commit(args.repo, &proposal)?;
        if args.push {
            propose::push(args.repo, &rules.branch, true)?;
        }
    }
    Ok(Synced {
        branch: rules.branch,
        added,
        removed,
        changed,
        skipped,
        committed,
    })
}

fn read_rules(path: &Path) -> Result<ProxmoxRules, Error> {
    let rules_error = |reason: String| Error::Rules {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|error| {
        rules_error(format!(
            "{error}: the Proxmox source's rules live in {PROXMOX_RULES_FILE} of the config repository (see the README)"
        ))
    })?;
    if text.len() > MAX_RULES_BYTES {
        return Err(rules_error(format!(
            "{} bytes; at most {MAX_RULES_BYTES}",
            text.len()
        )));
    }
    ProxmoxRules::read(&text).map_err(Error::RulesProblem)
}
